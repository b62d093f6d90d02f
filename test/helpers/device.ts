import mqtt from "mqtt";

export type Device = mqtt.MqttClient;

export function connectDevice(
  port: number,
  clientId: string,
  options: mqtt.IClientOptions = {},
): Promise<Device> {
  return mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId,
    protocolVersion: 4,
    reconnectPeriod: 0,
    ...options,
  });
}

/** Publishes with QoS 1 and resolves on its PUBACK. */
export async function publishAcked(
  device: Device,
  topic: string,
  payload: string | Buffer,
): Promise<void> {
  await device.publishAsync(topic, payload, { qos: 1 });
}

export function reading(device: string, n: number, ts = Date.now()): string {
  return JSON.stringify({ event_id: `${device}-${n}`, ts, temperature: 20 + (n % 7) });
}

export function nextMessage(device: Device): Promise<{ topic: string; payload: Buffer }> {
  return new Promise((resolve) =>
    device.once("message", (topic, payload) => resolve({ topic, payload })),
  );
}

export function closed(device: Device): Promise<void> {
  return new Promise((resolve) => device.once("close", () => resolve()));
}
