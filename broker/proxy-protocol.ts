import net from "node:net";

/** One end of the connection a proxy accepted, as its PROXY protocol header tells it. */
export interface ProxyAddress {
  address: string;
  port: number;
  family: "IPv4" | "IPv6";
}

export interface ProxyHeader {
  version: 1 | 2;
  /**
   * The client the proxy accepted a connection from; undefined for a
   * connection the proxy opened itself (v2 LOCAL, such as a health check) or
   * for one it cannot describe (v1 UNKNOWN, v2 UNSPEC or UNIX): the peer
   * address of the socket stands then.
   */
  source?: ProxyAddress;
  /** The address and port the client connected to on the proxy. */
  destination?: ProxyAddress;
}

export type ParseResult =
  | { kind: "header"; header: ProxyHeader /** Bytes the header takes. */; length: number }
  | { kind: "incomplete" }
  | { kind: "invalid"; reason: string };

/** The longest v1 line, "\r\n" included (the specification's own bound). */
export const V1_MAX_BYTES = 107;
/**
 * The most a v2 header may declare after its 16 fixed bytes: the largest
 * address block (two UNIX paths, 216 bytes) and room for the TLVs a proxy
 * adds (unique id, TLS details, AWS or Azure ids).
 */
export const V2_MAX_PAYLOAD_BYTES = 2048;

const V1_PREFIX = Buffer.from("PROXY ", "latin1");
const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
const V2_FIXED_BYTES = 16;
const PORT = /^(0|[1-9][0-9]{0,4})$/;
const ADDRESS_CHARACTERS = /^[0-9A-Fa-f:.]+$/;

/**
 * Reads a PROXY protocol header (v1 text or v2 binary) from the start of
 * `data`: the header and how many bytes it takes, "incomplete" while more
 * bytes could still make a valid one, or why it cannot be one. Never looks
 * past V1_MAX_BYTES of a v1 line or a v2 length over V2_MAX_PAYLOAD_BYTES.
 */
export function parseProxyHeader(data: Buffer): ParseResult {
  if (startsLike(data, V2_SIGNATURE)) {
    return data.length < V2_SIGNATURE.length ? { kind: "incomplete" } : parseV2(data);
  }
  if (startsLike(data, V1_PREFIX)) {
    return data.length < V1_PREFIX.length ? { kind: "incomplete" } : parseV1(data);
  }
  return { kind: "invalid", reason: "the connection does not start with a PROXY protocol header" };
}

/** True when `data` and `prefix` agree on as many bytes as both have. */
function startsLike(data: Buffer, prefix: Buffer): boolean {
  const length = Math.min(data.length, prefix.length);
  return data.subarray(0, length).equals(prefix.subarray(0, length));
}

function parseV1(data: Buffer): ParseResult {
  const end = data.subarray(0, V1_MAX_BYTES).indexOf("\r\n", 0, "latin1");
  if (end === -1) {
    if (data.length >= V1_MAX_BYTES) {
      return invalid(`v1 header without "\\r\\n" in its first ${V1_MAX_BYTES} bytes`);
    }
    // A "\r" may be the last byte read; anything else before the end must be printable.
    const bad = data.subarray(0, data.at(-1) === 0x0d ? -1 : undefined).findIndex(notPrintable);
    return bad === -1 ? { kind: "incomplete" } : invalid("v1 header with a control character");
  }
  const line = data.subarray(0, end);
  if (line.findIndex(notPrintable) !== -1) return invalid("v1 header with a control character");
  const fields = line.toString("latin1").split(" ");
  const length = end + 2;
  if (fields[1] === "UNKNOWN") return { kind: "header", header: { version: 1 }, length };
  if (fields.length !== 6) return invalid(`v1 header "${line}" is not 6 fields`);
  const [, protocol, sourceAddress, destinationAddress, sourcePort, destinationPort] = fields as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const family = protocol === "TCP4" ? "IPv4" : protocol === "TCP6" ? "IPv6" : undefined;
  if (!family) return invalid(`v1 protocol "${protocol}" is not TCP4, TCP6 or UNKNOWN`);
  const source = textAddress(sourceAddress, sourcePort, family);
  const destination = textAddress(destinationAddress, destinationPort, family);
  if (!source || !destination) return invalid(`v1 header "${line}" has a malformed address`);
  return { kind: "header", header: { version: 1, source, destination }, length };
}

function notPrintable(byte: number): boolean {
  return byte < 0x20 || byte > 0x7e;
}

function textAddress(
  address: string,
  port: string,
  family: ProxyAddress["family"],
): ProxyAddress | undefined {
  if (!PORT.test(port) || Number(port) > 65535 || !ADDRESS_CHARACTERS.test(address)) {
    return undefined;
  }
  if (family === "IPv4" ? !net.isIPv4(address) : !net.isIPv6(address)) return undefined;
  return { address: canonical(address, family), port: Number(port), family };
}

/** As Node writes the address of a socket, so that one client is one key in the connection gate. */
function canonical(address: string, family: ProxyAddress["family"]): string {
  return new net.SocketAddress({ address, family: family === "IPv4" ? "ipv4" : "ipv6" }).address;
}

const COMMAND_LOCAL = 0x0;
const COMMAND_PROXY = 0x1;
const FAMILY_UNSPEC = 0x0;
const FAMILY_INET = 0x1;
const FAMILY_INET6 = 0x2;
const FAMILY_UNIX = 0x3;
const TRANSPORT_UNSPEC = 0x0;
const TRANSPORT_STREAM = 0x1;
/** Bytes of the address block for each address family. */
const ADDRESS_BLOCK_BYTES: Record<number, number> = {
  [FAMILY_UNSPEC]: 0,
  [FAMILY_INET]: 12,
  [FAMILY_INET6]: 36,
  [FAMILY_UNIX]: 216,
};

function parseV2(data: Buffer): ParseResult {
  if (data.length < V2_FIXED_BYTES) return { kind: "incomplete" };
  const versionCommand = data[12] as number;
  const familyTransport = data[13] as number;
  const payload = data.readUInt16BE(14);
  if (versionCommand >> 4 !== 2) return invalid(`v2 header of version ${versionCommand >> 4}`);
  const command = versionCommand & 0x0f;
  if (command !== COMMAND_LOCAL && command !== COMMAND_PROXY) {
    return invalid(`v2 command ${command} is neither LOCAL nor PROXY`);
  }
  const family = familyTransport >> 4;
  const transport = familyTransport & 0x0f;
  const addressBytes = ADDRESS_BLOCK_BYTES[family];
  if (addressBytes === undefined) return invalid(`v2 address family ${family} is unknown`);
  if (transport !== TRANSPORT_UNSPEC && transport !== TRANSPORT_STREAM) {
    return invalid(`v2 transport ${transport} is not a stream`);
  }
  if (payload > V2_MAX_PAYLOAD_BYTES) {
    return invalid(`v2 header of ${payload} bytes is over ${V2_MAX_PAYLOAD_BYTES}`);
  }
  if (payload < addressBytes) {
    return invalid(`v2 header of ${payload} bytes is too short for its addresses`);
  }
  const length = V2_FIXED_BYTES + payload;
  if (data.length < length) return { kind: "incomplete" };
  // LOCAL: the proxy speaks for itself, whatever the address block holds.
  if (command === COMMAND_LOCAL || (family !== FAMILY_INET && family !== FAMILY_INET6)) {
    return { kind: "header", header: { version: 2 }, length };
  }
  if (transport !== TRANSPORT_STREAM) return invalid("v2 PROXY header of no transport");
  const block = data.subarray(V2_FIXED_BYTES, V2_FIXED_BYTES + addressBytes);
  const size = family === FAMILY_INET ? 4 : 16;
  const source = binaryAddress(block.subarray(0, size), block.readUInt16BE(2 * size));
  const destination = binaryAddress(
    block.subarray(size, 2 * size),
    block.readUInt16BE(2 * size + 2),
  );
  return { kind: "header", header: { version: 2, source, destination }, length };
}

function binaryAddress(bytes: Buffer, port: number): ProxyAddress {
  if (bytes.length === 4) return { address: bytes.join("."), port, family: "IPv4" };
  const groups: string[] = [];
  for (let offset = 0; offset < 16; offset += 2) {
    groups.push(bytes.readUInt16BE(offset).toString(16));
  }
  return { address: canonical(groups.join(":"), "IPv6"), port, family: "IPv6" };
}

function invalid(reason: string): ParseResult {
  return { kind: "invalid", reason };
}

export class ProxyHeaderError extends Error {
  override name = "ProxyHeaderError";
}

/**
 * Reads the PROXY protocol header a connection starts with, and leaves
 * whatever follows it to be read from `socket` (paused). Resolves undefined
 * when the socket closes first; rejects with a ProxyHeaderError when the
 * header is malformed or not complete within `timeoutMs`.
 */
export function readProxyHeader(
  socket: net.Socket,
  timeoutMs: number,
): Promise<ProxyHeader | undefined> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const stop = () => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("close", onClose);
      socket.off("error", onClose);
    };
    const onData = (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const result = parseProxyHeader(buffered);
      if (result.kind === "incomplete") return;
      stop();
      if (result.kind === "invalid") {
        reject(new ProxyHeaderError(result.reason));
        return;
      }
      socket.pause();
      if (buffered.length > result.length) socket.unshift(buffered.subarray(result.length));
      resolve(result.header);
    };
    const onClose = () => {
      stop();
      resolve(undefined);
    };
    const timer = setTimeout(() => {
      stop();
      reject(
        new ProxyHeaderError(
          `no complete PROXY protocol header within ${timeoutMs} ms (${buffered.length} bytes read)`,
        ),
      );
    }, timeoutMs);
    socket.on("data", onData);
    socket.on("close", onClose);
    socket.on("error", onClose);
  });
}
