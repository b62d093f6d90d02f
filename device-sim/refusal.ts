import type { SimOptions } from "./options.ts";

/** CONNACK return codes of MQTT 3.1.1 (§3.2.2.3). */
const CONNACK_CODES: Record<number, string> = {
  1: "unacceptable protocol version",
  2: "identifier rejected",
  3: "server unavailable",
  4: "bad user name or password",
  5: "not authorized",
};

/** The broker is busy or cannot check credentials right now: worth retrying, unlike the others. */
export const SERVER_UNAVAILABLE = 3;

/** The return code of a CONNECT the broker refused, from mqtt.js's error; undefined for any other error. */
export function refusalCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown }).code;
  return typeof code === "number" && code in CONNACK_CODES ? code : undefined;
}

/** A device's CONNECT refused by the broker: which device, which code, and what to check. */
export class ConnectionRefused extends Error {
  override name = "ConnectionRefused";

  constructor(deviceId: string, code: number, options: SimOptions) {
    super(
      `the broker refused device ${deviceId}: CONNACK ${code}, ${CONNACK_CODES[code]}${hint(code, options)}`,
    );
  }
}

function hint(code: number, options: SimOptions): string {
  const anonymous = !options.credentials && !options.login;
  switch (code) {
    case 2:
      return options.login && options.devices > 1
        ? "; a device identity connects only as itself, on one connection: use --devices 1, or an admin identity for several devices"
        : "";
    case 4:
      return options.credentials
        ? "; its secret in --credentials is not the identity's (rotated, or another database's?)"
        : options.login
          ? "; check --username and --password"
          : "";
    case 5:
      return anonymous
        ? "; the broker requires credentials: --credentials FILE, or --username and --password"
        : "; the identity may be disabled";
    default:
      return "";
  }
}
