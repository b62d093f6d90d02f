/**
 * Sparkplug B (namespace spBv1.0, specification 3.0): the payload's protobuf
 * encoding, the topic namespace, and the per-edge-node alias table that turns
 * BIRTH, DATA and command messages into the JSON document we store.
 *
 * Every uint64 on the wire (timestamps, seq, aliases, long values) is a
 * `number` while it is a safe integer and its decimal string past
 * Number.MAX_SAFE_INTEGER (2^53 - 1): nothing is rounded, and the value
 * stays plain JSON, which jsonb compares as text or casts to numeric.
 */

export class SparkplugError extends Error {
  override name = "SparkplugError";
}

export const SPARKPLUG_B_NAMESPACE = "spBv1.0";

/**
 * Messages nested inside a payload (a metric in a template in a metric...).
 * Real payloads nest a handful of levels; the bound keeps recursion and the
 * stored JSON (well under the 64 levels the bridge accepts) shallow.
 */
export const MAX_SPARKPLUG_NESTING = 32;
/** Edge nodes whose aliases are remembered; the least recently heard from is forgotten first. */
export const MAX_SPARKPLUG_EDGE_NODES = 10_000;
/** Metrics one edge node's BIRTHs (NBIRTH and all its DBIRTHs) may declare. */
export const MAX_SPARKPLUG_METRICS_PER_EDGE_NODE = 50_000;
/**
 * Metric declarations kept in all, some 200 bytes each with their names (50 MB at
 * the limit); past it, the least recently heard from edge nodes are forgotten.
 */
export const MAX_SPARKPLUG_TRACKED_METRICS = 250_000;

/** The datatype codes of sparkplug_b.proto's DataType enum. */
export const DataType = {
  Unknown: 0,
  Int8: 1,
  Int16: 2,
  Int32: 3,
  Int64: 4,
  UInt8: 5,
  UInt16: 6,
  UInt32: 7,
  UInt64: 8,
  Float: 9,
  Double: 10,
  Boolean: 11,
  String: 12,
  DateTime: 13,
  Text: 14,
  UUID: 15,
  DataSet: 16,
  Bytes: 17,
  File: 18,
  Template: 19,
  PropertySet: 20,
  PropertySetList: 21,
  Int8Array: 22,
  Int16Array: 23,
  Int32Array: 24,
  Int64Array: 25,
  UInt8Array: 26,
  UInt16Array: 27,
  UInt32Array: 28,
  UInt64Array: 29,
  FloatArray: 30,
  DoubleArray: 31,
  BooleanArray: 32,
  StringArray: 33,
  DateTimeArray: 34,
} as const;

const DATA_TYPE_NAMES = new Map<number, string>(
  Object.entries(DataType).map(([name, code]) => [code, name]),
);

/** The enum name of a datatype code ("Int32"), or the code in decimal when the spec has none. */
export function dataTypeName(code: number): string {
  return DATA_TYPE_NAMES.get(code) ?? String(code);
}

/** A uint64: a number up to Number.MAX_SAFE_INTEGER, its decimal string beyond. */
export type UInt64 = number | string;

export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

/* ------------------------------------------------------------------------ */
/* The payload, field for field as sparkplug_b.proto (proto2) declares it.  */
/* ------------------------------------------------------------------------ */

/** The members of the proto's `oneof value`s, as on the wire: uint32 and uint64 are unsigned. */
export type ScalarValue =
  | { kind: "int"; value: number }
  | { kind: "long"; value: UInt64 }
  | { kind: "float"; value: number }
  | { kind: "double"; value: number }
  | { kind: "boolean"; value: boolean }
  | { kind: "string"; value: string };
/** A `*ValueExtension` message, kept as its raw bytes. */
export type ExtensionValue = { kind: "extension"; value: Uint8Array };
export type MetricValue =
  | ScalarValue
  | { kind: "bytes"; value: Uint8Array }
  | { kind: "dataset"; value: SparkplugDataSet }
  | { kind: "template"; value: SparkplugTemplate }
  | ExtensionValue;
export type DataSetValue = ScalarValue | ExtensionValue;
export type ParameterValue = ScalarValue | ExtensionValue;
export type PropertyValueValue =
  | ScalarValue
  | { kind: "propertyset"; value: SparkplugPropertySet }
  | { kind: "propertysets"; value: SparkplugPropertySet[] }
  | ExtensionValue;
/** Any `oneof value` member: what `toJsonValue` reads. */
export type SparkplugValue = MetricValue | PropertyValueValue;
type ValueKind = SparkplugValue["kind"];

export interface SparkplugPayload {
  timestamp?: UInt64;
  metrics: SparkplugMetric[];
  seq?: UInt64;
  uuid?: string;
  body?: Uint8Array;
}

export interface SparkplugMetric {
  name?: string;
  alias?: UInt64;
  timestamp?: UInt64;
  datatype?: number;
  isHistorical?: boolean;
  isTransient?: boolean;
  isNull?: boolean;
  metadata?: SparkplugMetaData;
  properties?: SparkplugPropertySet;
  value?: MetricValue;
}

export interface SparkplugMetaData {
  isMultiPart?: boolean;
  contentType?: string;
  size?: UInt64;
  seq?: UInt64;
  fileName?: string;
  fileType?: string;
  md5?: string;
  description?: string;
}

export interface SparkplugPropertySet {
  keys: string[];
  values: SparkplugPropertyValue[];
}

export interface SparkplugPropertyValue {
  type?: number;
  isNull?: boolean;
  value?: PropertyValueValue;
}

export interface SparkplugDataSet {
  numOfColumns?: UInt64;
  columns: string[];
  types: number[];
  /** Each row's elements; null is a DataSetValue with no value set. */
  rows: (DataSetValue | null)[][];
}

export interface SparkplugTemplate {
  version?: string;
  metrics: SparkplugMetric[];
  parameters: SparkplugParameter[];
  templateRef?: string;
  isDefinition?: boolean;
}

export interface SparkplugParameter {
  name?: string;
  type?: number;
  value?: ParameterValue;
}

/* ------------------------------------------------------------------------ */
/* Protobuf wire format                                                      */
/* ------------------------------------------------------------------------ */

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const GROUP_START = 3;
const GROUP_END = 4;
const I32 = 5;
const WIRE_TYPE_NAMES = [
  "varint",
  "64-bit",
  "length-delimited",
  "group start",
  "group end",
  "32-bit",
];
const MAX_UINT32 = 0xffff_ffff;
const MAX_UINT64 = 2n ** 64n - 1n;

const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A 64-bit integer as we hold it: a number while it is safe, its decimal string beyond. */
function bigIntJson(value: bigint): number | string {
  return value <= MAX_SAFE && value >= -MAX_SAFE ? Number(value) : value.toString();
}

/** The shortest decimal that reads back as the same float32: 21.3, not 21.299999237060547. */
function shortestFloat32(value: number): number {
  const single = Math.fround(value);
  if (!Number.isFinite(single) || single === 0) return single;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(single.toPrecision(digits));
    if (Math.fround(candidate) === single) return candidate;
  }
  return single;
}

/**
 * Reads one message's fields. Every read is checked against the end of the
 * message being read, so a length or a varint can never reach past it, and a
 * length is compared with the bytes left before anything is allocated.
 */
class Reader {
  pos = 0;
  /** The end of the message being read. */
  limit: number;
  private depth = 0;
  private message = "Payload";
  private field = 0;
  private readonly view: DataView;

  constructor(private readonly buffer: Uint8Array) {
    this.limit = buffer.length;
    this.view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  }

  private fail(problem: string): never {
    const where = this.field === 0 ? this.message : `${this.message} field ${this.field}`;
    throw new SparkplugError(`Sparkplug payload: ${problem} at byte ${this.pos} (${where})`);
  }

  /** Calls `onField` with each field's number and wire type, up to the end of the message. */
  fields(message: string, onField: (field: number, wire: number) => void): void {
    this.message = message;
    while (this.pos < this.limit) {
      const [field, wire] = this.tag();
      this.field = field;
      onField(field, wire);
    }
  }

  private tag(): [number, number] {
    this.field = 0;
    const tag = this.varint();
    if (typeof tag !== "number" || tag > MAX_UINT32) this.fail("field tag out of range");
    const field = tag >>> 3;
    if (field === 0) this.fail("field number 0");
    return [field, tag & 7];
  }

  /** A varint: a number up to 49 bits, a BigInt (modulo 2^64) beyond. */
  private varint(): number | bigint {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 7; i++) {
      const byte = this.byte();
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 0x80;
    }
    let big = BigInt(value);
    for (let shift = 49n; shift < 70n; shift += 7n) {
      const byte = this.byte();
      big |= BigInt(byte & 0x7f) << shift;
      if (byte < 0x80) return BigInt.asUintN(64, big);
    }
    return this.fail("varint longer than 10 bytes");
  }

  private byte(): number {
    if (this.pos >= this.limit) this.fail("truncated varint");
    return this.buffer[this.pos++] as number;
  }

  private expect(wire: number, expected: number): void {
    if (wire !== expected) {
      const got = WIRE_TYPE_NAMES[wire] ?? "invalid";
      this.fail(`wire type ${wire} (${got}) where ${WIRE_TYPE_NAMES[expected]} was expected`);
    }
  }

  private advance(size: number): number {
    if (this.limit - this.pos < size) this.fail(`truncated ${size * 8}-bit value`);
    const at = this.pos;
    this.pos += size;
    return at;
  }

  private length(wire: number): number {
    this.expect(wire, LEN);
    const length = this.varint();
    const left = this.limit - this.pos;
    if (typeof length !== "number" || length > left) {
      this.fail(`length ${length} runs past the end of the ${this.message} (${left} bytes left)`);
    }
    return length;
  }

  uint64(wire: number): UInt64 {
    this.expect(wire, VARINT);
    const value = this.varint();
    return typeof value === "number" ? value : bigIntJson(value);
  }

  /** Like protobuf's own parsers, keeps the low 32 bits of a longer varint. */
  uint32(wire: number): number {
    this.expect(wire, VARINT);
    const value = this.varint();
    return typeof value === "number" ? value >>> 0 : Number(BigInt.asUintN(32, value));
  }

  bool(wire: number): boolean {
    this.expect(wire, VARINT);
    const value = this.varint();
    return value !== 0 && value !== 0n;
  }

  float(wire: number): number {
    this.expect(wire, I32);
    return shortestFloat32(this.view.getFloat32(this.advance(4), true));
  }

  double(wire: number): number {
    this.expect(wire, I64);
    return this.view.getFloat64(this.advance(8), true);
  }

  bytes(wire: number): Uint8Array {
    const length = this.length(wire);
    const start = this.pos;
    this.pos += length;
    // A copy (Buffer#slice would be a view): the caller's buffer may be reused.
    return new Uint8Array(this.buffer.subarray(start, this.pos));
  }

  string(wire: number): string {
    const length = this.length(wire);
    const text = this.buffer.subarray(this.pos, this.pos + length);
    let decoded: string;
    try {
      decoded = utf8Decoder.decode(text);
    } catch {
      return this.fail("string is not valid UTF-8");
    }
    this.pos += length;
    return decoded;
  }

  /** Reads an embedded message (or a packed field) with `read`, bounded by its length. */
  nested<T>(wire: number, read: () => T): T {
    const length = this.length(wire);
    if (this.depth >= MAX_SPARKPLUG_NESTING) {
      this.fail(`messages nested more than ${MAX_SPARKPLUG_NESTING} deep`);
    }
    const { limit, message, field } = this;
    this.limit = this.pos + length;
    this.depth++;
    const value = read();
    this.depth--;
    this.limit = limit;
    this.message = message;
    this.field = field;
    return value;
  }

  /** Steps over a field this decoder does not know, as its wire type says. */
  skip(wire: number, field: number): void {
    switch (wire) {
      case VARINT:
        this.varint();
        return;
      case I64:
        this.advance(8);
        return;
      case LEN: {
        const length = this.length(wire);
        this.pos += length;
        return;
      }
      case I32:
        this.advance(4);
        return;
      case GROUP_START:
        this.skipGroup(field);
        return;
      default:
        this.fail(`unexpected wire type ${wire}`);
    }
  }

  private skipGroup(field: number): void {
    if (this.depth >= MAX_SPARKPLUG_NESTING) {
      this.fail(`groups nested more than ${MAX_SPARKPLUG_NESTING} deep`);
    }
    this.depth++;
    for (;;) {
      if (this.pos >= this.limit) this.fail(`group ${field} has no end`);
      const [inner, wire] = this.tag();
      if (wire === GROUP_END) {
        if (inner !== field) this.fail(`group ${field} ended as group ${inner}`);
        break;
      }
      this.skip(wire, inner);
    }
    this.depth--;
  }
}

type ScalarType = "uint32" | "uint64" | "bool" | "float" | "double" | "string" | "bytes";
type MessageName =
  | "Payload"
  | "Metric"
  | "MetaData"
  | "PropertySet"
  | "PropertyValue"
  | "PropertySetList"
  | "DataSet"
  | "DataSet.Row"
  | "DataSet.DataSetValue"
  | "Template"
  | "Template.Parameter";

interface FieldSpec {
  /** The property that holds the field in our objects. */
  key: string;
  type: ScalarType | MessageName;
  repeated?: boolean;
  /** A member of the message's `oneof value`, held as `value: { kind, value }`. */
  kind?: ValueKind;
}

interface MessageSpec {
  /** By field number; JavaScript keeps integer keys in ascending order, the order fields are written in. */
  fields: Record<number, FieldSpec>;
  /** A message we hold as its one field: a Row as its elements, a DataSetValue as its value. */
  unwrap?: string;
}

const optional = (key: string, type: FieldSpec["type"]): FieldSpec => ({ key, type });
const repeated = (key: string, type: FieldSpec["type"]): FieldSpec => ({
  key,
  type,
  repeated: true,
});

const KIND_TYPES = {
  int: "uint32",
  long: "uint64",
  float: "float",
  double: "double",
  boolean: "bool",
  string: "string",
  bytes: "bytes",
  dataset: "DataSet",
  template: "Template",
  propertyset: "PropertySet",
  propertysets: "PropertySetList",
  extension: "bytes",
} as const satisfies Record<ValueKind, FieldSpec["type"]>;

/** The `oneof value` members from field number `first` on. */
function oneof(first: number, kinds: readonly ValueKind[]): Record<number, FieldSpec> {
  return Object.fromEntries(
    kinds.map((kind, i) => [first + i, { key: "value", type: KIND_TYPES[kind], kind }]),
  );
}

const SCALAR_KINDS = ["int", "long", "float", "double", "boolean", "string"] as const;

/** sparkplug_b.proto, message by message. */
const MESSAGES: Record<MessageName, MessageSpec> = {
  Payload: {
    fields: {
      1: optional("timestamp", "uint64"),
      2: repeated("metrics", "Metric"),
      3: optional("seq", "uint64"),
      4: optional("uuid", "string"),
      5: optional("body", "bytes"),
    },
  },
  Metric: {
    fields: {
      1: optional("name", "string"),
      2: optional("alias", "uint64"),
      3: optional("timestamp", "uint64"),
      4: optional("datatype", "uint32"),
      5: optional("isHistorical", "bool"),
      6: optional("isTransient", "bool"),
      7: optional("isNull", "bool"),
      8: optional("metadata", "MetaData"),
      9: optional("properties", "PropertySet"),
      ...oneof(10, [...SCALAR_KINDS, "bytes", "dataset", "template", "extension"]),
    },
  },
  MetaData: {
    fields: {
      1: optional("isMultiPart", "bool"),
      2: optional("contentType", "string"),
      3: optional("size", "uint64"),
      4: optional("seq", "uint64"),
      5: optional("fileName", "string"),
      6: optional("fileType", "string"),
      7: optional("md5", "string"),
      8: optional("description", "string"),
    },
  },
  PropertySet: {
    fields: { 1: repeated("keys", "string"), 2: repeated("values", "PropertyValue") },
  },
  PropertyValue: {
    fields: {
      1: optional("type", "uint32"),
      2: optional("isNull", "bool"),
      ...oneof(3, [...SCALAR_KINDS, "propertyset", "propertysets", "extension"]),
    },
  },
  PropertySetList: { fields: { 1: repeated("propertyset", "PropertySet") }, unwrap: "propertyset" },
  DataSet: {
    fields: {
      1: optional("numOfColumns", "uint64"),
      2: repeated("columns", "string"),
      3: repeated("types", "uint32"),
      4: repeated("rows", "DataSet.Row"),
    },
  },
  "DataSet.Row": {
    fields: { 1: repeated("elements", "DataSet.DataSetValue") },
    unwrap: "elements",
  },
  "DataSet.DataSetValue": { fields: oneof(1, [...SCALAR_KINDS, "extension"]), unwrap: "value" },
  Template: {
    fields: {
      1: optional("version", "string"),
      2: repeated("metrics", "Metric"),
      3: repeated("parameters", "Template.Parameter"),
      4: optional("templateRef", "string"),
      5: optional("isDefinition", "bool"),
    },
  },
  "Template.Parameter": {
    fields: {
      1: optional("name", "string"),
      2: optional("type", "uint32"),
      ...oneof(3, [...SCALAR_KINDS, "extension"]),
    },
  },
};

/** The wire type of each scalar, which a packed repeated field leaves out. */
const SCALAR_WIRE_TYPES: Record<ScalarType, number> = {
  uint32: VARINT,
  uint64: VARINT,
  bool: VARINT,
  float: I32,
  double: I64,
  string: LEN,
  bytes: LEN,
};

function isScalar(type: FieldSpec["type"]): type is ScalarType {
  return type in SCALAR_WIRE_TYPES;
}

type Fields = Record<string, unknown>;

function readMessage(r: Reader, name: MessageName): unknown {
  const spec = MESSAGES[name];
  const message: Fields = {};
  for (const field of Object.values(spec.fields)) if (field.repeated) message[field.key] = [];
  r.fields(name, (number, wire) => {
    const field = spec.fields[number];
    if (field === undefined) {
      r.skip(wire, number);
    } else if (field.kind !== undefined) {
      message.value = { kind: field.kind, value: readField(r, wire, field.type) };
    } else if (!field.repeated) {
      message[field.key] = readField(r, wire, field.type);
    } else {
      const list = message[field.key] as unknown[];
      const { type } = field;
      // proto2 writes repeated scalars unpacked; parsers must take the packed form too.
      if (wire === LEN && isScalar(type) && SCALAR_WIRE_TYPES[type] !== LEN) {
        r.nested(wire, () => {
          while (r.pos < r.limit) list.push(readField(r, SCALAR_WIRE_TYPES[type], type));
        });
      } else {
        list.push(readField(r, wire, type));
      }
    }
  });
  return spec.unwrap === undefined ? message : (message[spec.unwrap] ?? null);
}

function readField(r: Reader, wire: number, type: FieldSpec["type"]): unknown {
  return isScalar(type) ? r[type](wire) : r.nested(wire, () => readMessage(r, type));
}

/**
 * Decodes a Sparkplug B payload. Fields this version does not know are
 * skipped; malformed bytes throw a SparkplugError, after work bounded by the
 * payload's length.
 */
export function decodePayload(bytes: Uint8Array): SparkplugPayload {
  return readMessage(new Reader(bytes), "Payload") as SparkplugPayload;
}

/** Writes fields in field-number order, as protobuf's own encoders do. */
class Writer {
  private buffer = new Uint8Array(256);
  private view = new DataView(this.buffer.buffer);
  private pos = 0;

  private reserve(size: number): void {
    if (this.pos + size <= this.buffer.length) return;
    const grown = new Uint8Array(Math.max(this.buffer.length * 2, this.pos + size));
    grown.set(this.buffer.subarray(0, this.pos));
    this.buffer = grown;
    this.view = new DataView(grown.buffer);
  }

  private varint(value: number | bigint): void {
    this.reserve(10);
    if (typeof value === "number") {
      for (; value >= 0x80; value = Math.floor(value / 0x80)) {
        this.buffer[this.pos++] = (value % 0x80) | 0x80;
      }
      this.buffer[this.pos++] = value;
    } else {
      for (; value >= 0x80n; value >>= 7n) this.buffer[this.pos++] = Number(value & 0x7fn) | 0x80;
      this.buffer[this.pos++] = Number(value);
    }
  }

  private tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  uint32(field: number, value: number): void {
    if (!Number.isInteger(value) || value < 0 || value > MAX_UINT32) {
      throw new SparkplugError(`${value} is not a uint32 (field ${field})`);
    }
    this.tag(field, VARINT);
    this.varint(value);
  }

  uint64(field: number, value: UInt64): void {
    this.tag(field, VARINT);
    this.varint(uint64ToWire(value, field));
  }

  bool(field: number, value: boolean): void {
    this.tag(field, VARINT);
    this.varint(value ? 1 : 0);
  }

  float(field: number, value: number): void {
    this.tag(field, I32);
    this.reserve(4);
    this.view.setFloat32(this.pos, value, true);
    this.pos += 4;
  }

  double(field: number, value: number): void {
    this.tag(field, I64);
    this.reserve(8);
    this.view.setFloat64(this.pos, value, true);
    this.pos += 8;
  }

  bytes(field: number, value: Uint8Array): void {
    this.tag(field, LEN);
    this.varint(value.length);
    this.reserve(value.length);
    this.buffer.set(value, this.pos);
    this.pos += value.length;
  }

  string(field: number, value: string): void {
    this.bytes(field, utf8Encoder.encode(value));
  }

  message(field: number, write: (writer: Writer) => void): void {
    const inner = new Writer();
    write(inner);
    this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    return this.buffer.slice(0, this.pos);
  }
}

function uint64ToWire(value: UInt64, field: number): number | bigint {
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return value;
  if (typeof value === "string" && /^[0-9]+$/.test(value) && BigInt(value) <= MAX_UINT64) {
    return BigInt(value);
  }
  throw new SparkplugError(`${JSON.stringify(value)} is not a uint64 (field ${field})`);
}

/** Encodes a payload as real Sparkplug B decoders read it (proto2: repeated scalars unpacked). */
export function encodePayload(payload: SparkplugPayload): Uint8Array {
  const w = new Writer();
  writeMessage(w, "Payload", payload);
  return w.finish();
}

function writeMessage(w: Writer, name: MessageName, value: unknown): void {
  const spec = MESSAGES[name];
  const message = (spec.unwrap === undefined ? value : { [spec.unwrap]: value }) as Fields;
  const chosen = message.value as SparkplugValue | null | undefined;
  let chosenWritten = false;
  for (const [key, field] of Object.entries(spec.fields)) {
    const number = Number(key);
    if (field.kind !== undefined) {
      if (chosen?.kind !== field.kind) continue;
      writeField(w, number, field.type, chosen.value);
      chosenWritten = true;
    } else if (field.repeated) {
      for (const item of message[field.key] as unknown[]) writeField(w, number, field.type, item);
    } else if (message[field.key] !== undefined) {
      writeField(w, number, field.type, message[field.key]);
    }
  }
  if (chosen != null && !chosenWritten) {
    throw new SparkplugError(`a ${chosen.kind} value cannot be written in a ${name}`);
  }
}

function writeField(w: Writer, number: number, type: FieldSpec["type"], value: unknown): void {
  // The writer's scalar methods are named for the types; the schema vouches for the value.
  if (isScalar(type)) w[type](number, value as never);
  else w.message(number, (inner) => writeMessage(inner, type, value));
}

/* ------------------------------------------------------------------------ */
/* Values by datatype                                                        */
/* ------------------------------------------------------------------------ */

interface IntegerType {
  bits: 8 | 16 | 32 | 64;
  signed: boolean;
}

const INTEGER_TYPES = new Map<number, IntegerType>([
  [DataType.Int8, { bits: 8, signed: true }],
  [DataType.Int16, { bits: 16, signed: true }],
  [DataType.Int32, { bits: 32, signed: true }],
  [DataType.Int64, { bits: 64, signed: true }],
  [DataType.UInt8, { bits: 8, signed: false }],
  [DataType.UInt16, { bits: 16, signed: false }],
  [DataType.UInt32, { bits: 32, signed: false }],
  [DataType.UInt64, { bits: 64, signed: false }],
  [DataType.DateTime, { bits: 64, signed: false }],
]);

/**
 * The value fields each datatype may arrive in. Integers are read from
 * either integer field: Eclipse Tahu's Java and JavaScript encoders put
 * UInt32 in long_value where the spec says uint32.
 */
const FIELDS_BY_DATATYPE = ((): ReadonlyMap<number, readonly ValueKind[]> => {
  const fields = new Map<number, readonly ValueKind[]>();
  const accept = (kinds: readonly ValueKind[], codes: Iterable<number>) => {
    for (const code of codes) fields.set(code, kinds);
  };
  accept(["int", "long"], INTEGER_TYPES.keys());
  accept(["float", "double"], [DataType.Float, DataType.Double]);
  accept(["boolean"], [DataType.Boolean]);
  accept(["string"], [DataType.String, DataType.Text, DataType.UUID]);
  accept(["dataset"], [DataType.DataSet]);
  accept(["template"], [DataType.Template]);
  accept(["propertyset"], [DataType.PropertySet]);
  accept(["propertysets"], [DataType.PropertySetList]);
  accept(["bytes"], [DataType.Bytes, DataType.File]);
  for (let code = DataType.Int8Array; code <= DataType.DateTimeArray; code++) {
    fields.set(code, ["bytes"]);
  }
  return fields;
})();

/** An array datatype's element datatype: Int8Array (22) holds Int8 (1), up to DateTimeArray (34). */
const ARRAY_OFFSET = DataType.Int8Array - DataType.Int8;

function isArrayType(datatype: number): boolean {
  return datatype >= DataType.Int8Array && datatype <= DataType.DateTimeArray;
}

/**
 * Signed integers travel as the two's complement of the unsigned field, and
 * encoders disagree on the width (Tahu's Java sign-extends an Int8 to 32 bits,
 * its Python writes 8), so the value's low `bits` are what count.
 */
function integerJson(raw: UInt64, type: IntegerType): number | string {
  if (!type.signed) return raw;
  if (typeof raw === "string") return bigIntJson(BigInt.asIntN(type.bits, BigInt(raw)));
  if (type.bits === 64) return raw;
  const shift = 32 - type.bits;
  return (raw << shift) >> shift;
}

function floatJson(value: number): number | string {
  // JSON has no NaN or Infinity: their names, as protobuf's JSON mapping writes them.
  return Number.isFinite(value) ? value : String(value);
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/** An object without a prototype, so a metric named "__proto__" is a key like any other. */
function record<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

interface ElementCodec {
  size: number;
  read(view: DataView, at: number): number | string;
  write(view: DataView, at: number, value: ScalarInput): void;
}

type ElementGet = (this: DataView, at: number, littleEndian?: boolean) => number;
type ElementPut = (this: DataView, at: number, value: number, littleEndian?: boolean) => void;
const dataView = DataView.prototype;

function integerElement(datatype: number, get: ElementGet, put: ElementPut): ElementCodec {
  return {
    size: (INTEGER_TYPES.get(datatype) as IntegerType).bits / 8,
    read: (view, at) => get.call(view, at, true),
    write: (view, at, value) => put.call(view, at, Number(integerInput(datatype, value)), true),
  };
}

function bigIntegerElement(datatype: number): ElementCodec {
  const { signed } = INTEGER_TYPES.get(datatype) as IntegerType;
  return {
    size: 8,
    read: (view, at) =>
      bigIntJson(signed ? view.getBigInt64(at, true) : view.getBigUint64(at, true)),
    write: (view, at, value) => {
      const n = integerInput(datatype, value);
      if (signed) view.setBigInt64(at, n, true);
      else view.setBigUint64(at, n, true);
    },
  };
}

/** The packed little-endian elements of the fixed-width array types, by element datatype. */
const FIXED_ELEMENTS = new Map<number, ElementCodec>([
  [DataType.Int8, integerElement(DataType.Int8, dataView.getInt8, dataView.setInt8)],
  [DataType.Int16, integerElement(DataType.Int16, dataView.getInt16, dataView.setInt16)],
  [DataType.Int32, integerElement(DataType.Int32, dataView.getInt32, dataView.setInt32)],
  [DataType.Int64, bigIntegerElement(DataType.Int64)],
  [DataType.UInt8, integerElement(DataType.UInt8, dataView.getUint8, dataView.setUint8)],
  [DataType.UInt16, integerElement(DataType.UInt16, dataView.getUint16, dataView.setUint16)],
  [DataType.UInt32, integerElement(DataType.UInt32, dataView.getUint32, dataView.setUint32)],
  [DataType.UInt64, bigIntegerElement(DataType.UInt64)],
  [
    DataType.Float,
    {
      size: 4,
      read: (view, at) => floatJson(shortestFloat32(view.getFloat32(at, true))),
      write: (view, at, value) =>
        view.setFloat32(at, checked(DataType.Float, value, isNumber), true),
    },
  ],
  [
    DataType.Double,
    {
      size: 8,
      read: (view, at) => floatJson(view.getFloat64(at, true)),
      write: (view, at, value) =>
        view.setFloat64(at, checked(DataType.Double, value, isNumber), true),
    },
  ],
  [DataType.DateTime, bigIntegerElement(DataType.DateTime)],
]);

function arrayJson(bytes: Uint8Array, datatype: number): JsonValue[] {
  const element = datatype - ARRAY_OFFSET;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (element === DataType.Boolean) {
    // A little-endian uint32 count, then the values, most significant bit first.
    if (bytes.length < 4) throw new SparkplugError("BooleanArray shorter than its 4-byte count");
    const count = view.getUint32(0, true);
    if (bytes.length !== 4 + Math.ceil(count / 8)) {
      throw new SparkplugError(`BooleanArray of ${count} values in ${bytes.length - 4} bytes`);
    }
    return Array.from(
      { length: count },
      (_, i) => ((bytes[4 + (i >> 3)] as number) & (0x80 >> (i & 7))) !== 0,
    );
  }
  if (element === DataType.String) {
    // NUL-terminated UTF-8 strings; a missing last terminator is forgiven.
    if (bytes.length === 0) return [];
    const end = bytes[bytes.length - 1] === 0 ? bytes.length - 1 : bytes.length;
    try {
      return utf8Decoder.decode(bytes.subarray(0, end)).split("\u0000");
    } catch {
      throw new SparkplugError("StringArray is not valid UTF-8");
    }
  }
  const codec = FIXED_ELEMENTS.get(element) as ElementCodec;
  if (bytes.length % codec.size !== 0) {
    throw new SparkplugError(
      `${dataTypeName(datatype)} of ${bytes.length} bytes, not a multiple of ${codec.size}`,
    );
  }
  return Array.from({ length: bytes.length / codec.size }, (_, i) =>
    codec.read(view, i * codec.size),
  );
}

/**
 * A value as JSON, read as `datatype` says when it is known: signed
 * integers from their two's complement, arrays from their packed bytes.
 * Without a datatype (DATA messages may omit it), integers read unsigned.
 *
 * uint64 and Int64 beyond 2^53 are decimal strings; NaN and ±Infinity are
 * "NaN", "Infinity", "-Infinity"; Bytes, File and extensions are base64;
 * a DataSet is { columns, types, rows }, a Template { template_ref, version,
 * is_definition, parameters, metrics } with parameters and members by name,
 * a PropertySet an object by key.
 */
export function toJsonValue(
  value: SparkplugValue | null | undefined,
  datatype?: number,
): JsonValue {
  if (value === null || value === undefined) return null;
  if (value.kind === "extension") return base64(value.value);
  const fields = datatype === undefined ? undefined : FIELDS_BY_DATATYPE.get(datatype);
  if (datatype !== undefined && fields !== undefined && !fields.includes(value.kind)) {
    throw new SparkplugError(`${dataTypeName(datatype)} value in the ${value.kind}_value field`);
  }
  switch (value.kind) {
    case "int":
    case "long": {
      const integer = datatype === undefined ? undefined : INTEGER_TYPES.get(datatype);
      return integer === undefined ? value.value : integerJson(value.value, integer);
    }
    case "float":
    case "double":
      return floatJson(value.value);
    case "boolean":
    case "string":
      return value.value;
    case "bytes":
      return datatype !== undefined && isArrayType(datatype)
        ? arrayJson(value.value, datatype)
        : base64(value.value);
    case "dataset":
      return dataSetJson(value.value);
    case "template":
      return templateJson(value.value);
    case "propertyset":
      return propertySetJson(value.value);
    case "propertysets":
      return value.value.map(propertySetJson);
  }
}

function dataSetJson(dataSet: SparkplugDataSet): JsonValue {
  return {
    columns: dataSet.columns,
    types: dataSet.types.map(dataTypeName),
    rows: dataSet.rows.map((row) =>
      row.map((element, i) => toJsonValue(element, dataSet.types[i])),
    ),
  };
}

function templateJson(template: SparkplugTemplate): JsonValue {
  const json = record<JsonValue>();
  if (template.templateRef !== undefined) json.template_ref = template.templateRef;
  if (template.version !== undefined) json.version = template.version;
  if (template.isDefinition !== undefined) json.is_definition = template.isDefinition;
  const parameters = record<JsonValue>();
  for (const parameter of template.parameters) {
    if (parameter.name === undefined) throw new SparkplugError("a template parameter has no name");
    parameters[parameter.name] = toJsonValue(parameter.value, parameter.type);
  }
  const metrics = record<JsonValue>();
  for (const metric of template.metrics) {
    if (metric.name === undefined) throw new SparkplugError("a template member has no name");
    metrics[metric.name] = metricJson(metric, metric.name, metric.datatype);
  }
  json.parameters = parameters;
  json.metrics = metrics;
  return json;
}

function propertySetJson(set: SparkplugPropertySet): { [key: string]: JsonValue } {
  if (set.keys.length !== set.values.length) {
    throw new SparkplugError(
      `a PropertySet has ${set.keys.length} keys and ${set.values.length} values`,
    );
  }
  const json = record<JsonValue>();
  set.keys.forEach((key, i) => {
    const property = set.values[i] as SparkplugPropertyValue;
    json[key] = property.isNull ? null : toJsonValue(property.value, property.type);
  });
  return json;
}

function metaDataJson(metadata: SparkplugMetaData): JsonValue {
  const json = record<JsonValue>();
  if (metadata.isMultiPart !== undefined) json.is_multi_part = metadata.isMultiPart;
  if (metadata.contentType !== undefined) json.content_type = metadata.contentType;
  if (metadata.size !== undefined) json.size = metadata.size;
  if (metadata.seq !== undefined) json.seq = metadata.seq;
  if (metadata.fileName !== undefined) json.file_name = metadata.fileName;
  if (metadata.fileType !== undefined) json.file_type = metadata.fileType;
  if (metadata.md5 !== undefined) json.md5 = metadata.md5;
  if (metadata.description !== undefined) json.description = metadata.description;
  return json;
}

/** Runs `convert`, naming the metric in its SparkplugError. */
function forMetric<T>(name: string, convert: () => T): T {
  try {
    return convert();
  } catch (error) {
    if (!(error instanceof SparkplugError)) throw error;
    throw new SparkplugError(`metric ${JSON.stringify(name)}: ${error.message}`, { cause: error });
  }
}

function metricJson(
  metric: SparkplugMetric,
  name: string,
  datatype: number | undefined,
): JsonValue {
  return metric.isNull ? null : forMetric(name, () => toJsonValue(metric.value, datatype));
}

/** What `scalarValue` and `metricValue` take: a plain value of the datatype. */
export type ScalarInput = number | bigint | string | boolean;
export type MetricInput =
  | ScalarInput
  | Uint8Array
  | readonly ScalarInput[]
  | SparkplugDataSet
  | SparkplugTemplate;

function show(value: unknown): string {
  return typeof value === "bigint" ? `${value}n` : (JSON.stringify(value) ?? String(value));
}

/** An integer of an integer datatype, range-checked, as a BigInt. */
function integerInput(datatype: number, value: ScalarInput): bigint {
  const type = INTEGER_TYPES.get(datatype) as IntegerType;
  let n: bigint | undefined;
  if (typeof value === "bigint") n = value;
  else if (typeof value === "number" && Number.isSafeInteger(value)) n = BigInt(value);
  else if (typeof value === "string" && /^-?[0-9]+$/.test(value)) n = BigInt(value);
  const limit = 1n << BigInt(type.signed ? type.bits - 1 : type.bits);
  const min = type.signed ? -limit : 0n;
  if (n === undefined || n < min || n >= limit) {
    throw new SparkplugError(`${show(value)} is not a ${dataTypeName(datatype)}`);
  }
  return n;
}

function checked<T extends ScalarInput>(
  datatype: number,
  value: ScalarInput,
  is: (value: ScalarInput) => value is T,
): T {
  if (!is(value)) throw new SparkplugError(`${show(value)} is not a ${dataTypeName(datatype)}`);
  return value;
}

const isNumber = (value: ScalarInput): value is number => typeof value === "number";
const isBoolean = (value: ScalarInput): value is boolean => typeof value === "boolean";
const isString = (value: ScalarInput): value is string => typeof value === "string";

/**
 * The wire value of a scalar datatype (Int8 to UUID): signed integers as
 * the two's complement of their 32- or 64-bit field (what Tahu's Java and
 * JavaScript decoders read back), Float rounded to float32 as it will be sent.
 */
export function scalarValue(datatype: number, value: ScalarInput): ScalarValue {
  const integer = INTEGER_TYPES.get(datatype);
  if (integer !== undefined) {
    const n = integerInput(datatype, value);
    return integer.bits === 64
      ? { kind: "long", value: bigIntJson(BigInt.asUintN(64, n)) }
      : { kind: "int", value: Number(BigInt.asUintN(32, n)) };
  }
  switch (datatype) {
    case DataType.Float:
      return { kind: "float", value: shortestFloat32(checked(datatype, value, isNumber)) };
    case DataType.Double:
      return { kind: "double", value: checked(datatype, value, isNumber) };
    case DataType.Boolean:
      return { kind: "boolean", value: checked(datatype, value, isBoolean) };
    case DataType.String:
    case DataType.Text:
    case DataType.UUID:
      return { kind: "string", value: checked(datatype, value, isString) };
    default:
      throw new SparkplugError(`${dataTypeName(datatype)} is not a scalar datatype`);
  }
}

/** The wire value of any metric datatype; arrays are packed into bytes_value as the spec lays out. */
export function metricValue(datatype: number, value: MetricInput): MetricValue {
  if (isArrayType(datatype)) {
    if (!Array.isArray(value)) throw new SparkplugError(`${dataTypeName(datatype)} needs an array`);
    return { kind: "bytes", value: packArray(datatype, value) };
  }
  switch (datatype) {
    case DataType.Bytes:
    case DataType.File:
      if (!(value instanceof Uint8Array)) {
        throw new SparkplugError(`${dataTypeName(datatype)} needs a Uint8Array`);
      }
      return { kind: "bytes", value };
    case DataType.DataSet:
      if (typeof value !== "object" || !("rows" in value)) {
        throw new SparkplugError("DataSet needs { columns, types, rows }");
      }
      return { kind: "dataset", value };
    case DataType.Template:
      if (typeof value !== "object" || !("parameters" in value)) {
        throw new SparkplugError("Template needs { metrics, parameters }");
      }
      return { kind: "template", value };
    default:
      if (typeof value === "object") {
        throw new SparkplugError(`${dataTypeName(datatype)} needs a single value`);
      }
      return scalarValue(datatype, value);
  }
}

function packArray(datatype: number, values: readonly ScalarInput[]): Uint8Array {
  const element = datatype - ARRAY_OFFSET;
  if (element === DataType.Boolean) {
    const bytes = new Uint8Array(4 + Math.ceil(values.length / 8));
    new DataView(bytes.buffer).setUint32(0, values.length, true);
    values.forEach((value, i) => {
      if (checked(element, value, isBoolean)) {
        bytes[4 + (i >> 3)] = (bytes[4 + (i >> 3)] as number) | (0x80 >> (i & 7));
      }
    });
    return bytes;
  }
  if (element === DataType.String) {
    const text = values.map((value) => {
      if (checked(element, value, isString).includes("\u0000")) {
        throw new SparkplugError(`${show(value)} holds a NUL, which ends a StringArray element`);
      }
      return `${value}\u0000`;
    });
    return utf8Encoder.encode(text.join(""));
  }
  const codec = FIXED_ELEMENTS.get(element) as ElementCodec;
  const bytes = new Uint8Array(values.length * codec.size);
  const view = new DataView(bytes.buffer);
  values.forEach((value, i) => {
    codec.write(view, i * codec.size, value);
  });
  return bytes;
}

/* ------------------------------------------------------------------------ */
/* Topics                                                                    */
/* ------------------------------------------------------------------------ */

export type SparkplugNodeMessageType = "NBIRTH" | "NDEATH" | "NDATA" | "NCMD";
export type SparkplugDeviceMessageType = "DBIRTH" | "DDEATH" | "DDATA" | "DCMD";
export type SparkplugMessageType = SparkplugNodeMessageType | SparkplugDeviceMessageType;

/** `spBv1.0/<group>/<type>/<edge node>[/<device>]`: the device is there exactly for the D types. */
export interface SparkplugEdgeTopic {
  namespace: typeof SPARKPLUG_B_NAMESPACE;
  group: string;
  type: SparkplugMessageType;
  edgeNode: string;
  device?: string;
}

/** `spBv1.0/STATE/<host id>`: a host application's JSON (not protobuf) birth and death. */
export interface SparkplugStateTopic {
  namespace: typeof SPARKPLUG_B_NAMESPACE;
  type: "STATE";
  hostId: string;
}

export type SparkplugTopic = SparkplugEdgeTopic | SparkplugStateTopic;

const NODE_TYPES: ReadonlySet<string> = new Set<SparkplugNodeMessageType>([
  "NBIRTH",
  "NDEATH",
  "NDATA",
  "NCMD",
]);
const DEVICE_TYPES: ReadonlySet<string> = new Set<SparkplugDeviceMessageType>([
  "DBIRTH",
  "DDEATH",
  "DDATA",
  "DCMD",
]);

/** Ids are non-empty UTF-8 without the reserved +, / and #. */
function isId(part: string): boolean {
  return part !== "" && !part.includes("+") && !part.includes("#");
}

/** The parts of a Sparkplug B topic, or undefined for any other topic. */
export function parseSparkplugTopic(topic: string): SparkplugTopic | undefined {
  const [namespace, group, type, edgeNode, device, ...rest] = topic.split("/");
  if (namespace !== SPARKPLUG_B_NAMESPACE || group === undefined || type === undefined) {
    return undefined;
  }
  if (!isId(group) || !isId(type)) return undefined;
  if (group === "STATE" && edgeNode === undefined) {
    return { namespace, type: "STATE", hostId: type };
  }
  if (edgeNode === undefined || !isId(edgeNode) || rest.length > 0) return undefined;
  if (device === undefined) {
    return NODE_TYPES.has(type)
      ? { namespace, group, type: type as SparkplugNodeMessageType, edgeNode }
      : undefined;
  }
  return DEVICE_TYPES.has(type) && isId(device)
    ? { namespace, group, type: type as SparkplugDeviceMessageType, edgeNode, device }
    : undefined;
}

/* ------------------------------------------------------------------------ */
/* Aliases and the stored document                                           */
/* ------------------------------------------------------------------------ */

/**
 * The JSON stored for one message. `metrics` holds each metric's current
 * value by name, so a reading is `payload->'metrics'->>'Temperature'`;
 * everything else is optional and keyed by the same names:
 *
 * - `metric_timestamps`: the metric's own timestamp (epoch ms), where it has one;
 * - `history`: values that are not the message's current one for their name:
 *   metrics flagged is_historical, and earlier occurrences of a name the
 *   message repeats (the last occurrence is current);
 * - `datatypes`: datatype names the message declares (BIRTHs do);
 * - `properties`, `metadata`: a metric's PropertySet and MetaData, as sent.
 *
 * A null metric's value is null. Metrics flagged is_transient are kept.
 */
export interface SparkplugDocument {
  timestamp?: UInt64;
  seq?: UInt64;
  uuid?: string;
  /** The payload's body, base64. */
  body?: string;
  metrics: Record<string, JsonValue>;
  metric_timestamps?: Record<string, UInt64>;
  history?: SparkplugHistoryEntry[];
  datatypes?: Record<string, string>;
  properties?: Record<string, JsonValue>;
  metadata?: Record<string, JsonValue>;
}

export interface SparkplugHistoryEntry {
  name: string;
  value: JsonValue;
  timestamp?: UInt64;
}

export interface SparkplugIngestResult {
  document: SparkplugDocument;
  /**
   * Aliases of metrics no BIRTH of this edge node (for this device) declared,
   * or whose declaration was forgotten: their values are not in the document.
   * A host answers with a rebirth request (NCMD `Node Control/Rebirth`).
   */
  unresolvedAliases: UInt64[];
  /** BIRTH metrics not remembered because their edge node reached its limit. */
  untrackedDeclarations: number;
}

export interface SparkplugAliasLimits {
  maxEdgeNodes?: number;
  maxMetricsPerEdgeNode?: number;
  maxTrackedMetrics?: number;
}

interface Declaration {
  name: string;
  datatype: number | undefined;
  alias: UInt64 | undefined;
}

interface EdgeNode {
  /** The NBIRTH's bdSeq, which the matching NDEATH repeats. */
  bdSeq: string | undefined;
  /** Unique across the edge node and all its devices. */
  aliases: Map<UInt64, Declaration>;
  /** By device ("" for the edge node's own metrics), then metric name. */
  devices: Map<string, Map<string, Declaration>>;
  size: number;
}

function bdSeqOf(payload: SparkplugPayload): string | undefined {
  const metric = payload.metrics.find((m) => m.name === "bdSeq");
  const value = metric?.value;
  return value?.kind === "int" || value?.kind === "long" ? String(value.value) : undefined;
}

/**
 * What each edge node's BIRTHs declared: alias → name and datatype, per
 * `group/edgeNode`. An NBIRTH replaces the edge node's whole table (a
 * rebirth), a DBIRTH replaces its device's part, an NDEATH forgets the edge
 * node unless its bdSeq shows it belongs to an earlier session. A DDEATH
 * changes nothing: the device's next DBIRTH replaces its part.
 *
 * Only BIRTHs add to the table, so DATA from unknown edge nodes costs no memory.
 */
export class SparkplugAliases {
  private readonly nodes = new Map<string, EdgeNode>();
  private tracked = 0;
  private readonly maxEdgeNodes: number;
  private readonly maxMetricsPerEdgeNode: number;
  private readonly maxTrackedMetrics: number;

  constructor(limits: SparkplugAliasLimits = {}) {
    this.maxEdgeNodes = Math.max(1, limits.maxEdgeNodes ?? MAX_SPARKPLUG_EDGE_NODES);
    this.maxTrackedMetrics = Math.max(1, limits.maxTrackedMetrics ?? MAX_SPARKPLUG_TRACKED_METRICS);
    this.maxMetricsPerEdgeNode = Math.min(
      this.maxTrackedMetrics,
      Math.max(1, limits.maxMetricsPerEdgeNode ?? MAX_SPARKPLUG_METRICS_PER_EDGE_NODE),
    );
  }

  get edgeNodes(): number {
    return this.nodes.size;
  }

  get trackedMetrics(): number {
    return this.tracked;
  }

  /** Records what a BIRTH or DEATH declares and returns the message's document. */
  ingest(topic: SparkplugEdgeTopic, payload: SparkplugPayload): SparkplugIngestResult {
    const key = `${topic.group}/${topic.edgeNode}`;
    const device = topic.device ?? "";
    let node = this.nodes.get(key);
    if (node !== undefined) {
      // Map order is recency order: the first node is the least recently heard from.
      this.nodes.delete(key);
      this.nodes.set(key, node);
    }
    let untrackedDeclarations = 0;
    if (topic.type === "NBIRTH" || topic.type === "DBIRTH") {
      if (node === undefined || topic.type === "NBIRTH") {
        if (node !== undefined) this.forget(key, node);
        node = { bdSeq: undefined, aliases: new Map(), devices: new Map(), size: 0 };
        this.nodes.set(key, node);
      }
      if (topic.type === "NBIRTH") node.bdSeq = bdSeqOf(payload);
      untrackedDeclarations = this.declare(node, device, payload.metrics);
      this.evict(key);
    }
    const result = this.document(node, device, payload);
    if (topic.type === "NDEATH" && node !== undefined) {
      const bdSeq = bdSeqOf(payload);
      if (node.bdSeq === undefined || bdSeq === undefined || bdSeq === node.bdSeq) {
        this.forget(key, node);
      }
    }
    return { ...result, untrackedDeclarations };
  }

  private forget(key: string, node: EdgeNode): void {
    this.nodes.delete(key);
    this.tracked -= node.size;
  }

  private evict(keep: string): void {
    for (const [key, node] of this.nodes) {
      if (this.nodes.size <= this.maxEdgeNodes && this.tracked <= this.maxTrackedMetrics) return;
      if (key !== keep) this.forget(key, node);
    }
  }

  /** Replaces the device's declarations with the BIRTH's; returns how many did not fit. */
  private declare(node: EdgeNode, device: string, metrics: SparkplugMetric[]): number {
    const previous = node.devices.get(device);
    if (previous !== undefined) {
      for (const declaration of previous.values()) this.unlinkAlias(node, declaration);
      node.size -= previous.size;
      this.tracked -= previous.size;
    }
    const declared = new Map<string, Declaration>();
    node.devices.set(device, declared);
    let untracked = 0;
    for (const { name, datatype, alias } of metrics) {
      if (name === undefined) continue;
      const repeated = declared.get(name);
      if (repeated !== undefined) {
        this.unlinkAlias(node, repeated);
      } else if (node.size >= this.maxMetricsPerEdgeNode) {
        untracked++;
        continue;
      } else {
        node.size++;
        this.tracked++;
      }
      const declaration = { name, datatype, alias };
      declared.set(name, declaration);
      if (alias !== undefined) node.aliases.set(alias, declaration);
    }
    return untracked;
  }

  private unlinkAlias(node: EdgeNode, declaration: Declaration): void {
    if (declaration.alias !== undefined && node.aliases.get(declaration.alias) === declaration) {
      node.aliases.delete(declaration.alias);
    }
  }

  private declarationOf(
    node: EdgeNode | undefined,
    device: string,
    metric: SparkplugMetric,
  ): Declaration | undefined {
    if (node === undefined) return undefined;
    const declared = node.devices.get(device);
    if (metric.name !== undefined) return declared?.get(metric.name);
    if (metric.alias === undefined) return undefined;
    const declaration = node.aliases.get(metric.alias);
    // An alias another device declared names none of this device's metrics.
    return declaration !== undefined && declared?.get(declaration.name) === declaration
      ? declaration
      : undefined;
  }

  private document(
    node: EdgeNode | undefined,
    device: string,
    payload: SparkplugPayload,
  ): Omit<SparkplugIngestResult, "untrackedDeclarations"> {
    const unresolved = new Set<UInt64>();
    const named: { name: string; metric: SparkplugMetric; value: JsonValue }[] = [];
    for (const metric of payload.metrics) {
      const declaration = this.declarationOf(node, device, metric);
      const name = metric.name ?? declaration?.name;
      if (name === undefined) {
        if (metric.alias === undefined) {
          throw new SparkplugError("Sparkplug payload: a metric has neither a name nor an alias");
        }
        unresolved.add(metric.alias);
        continue;
      }
      const value = metricJson(metric, name, metric.datatype ?? declaration?.datatype);
      named.push({ name, metric, value });
    }

    const current = new Map<string, number>();
    named.forEach(({ name, metric }, i) => {
      if (!metric.isHistorical) current.set(name, i);
    });
    const metrics = record<JsonValue>();
    const timestamps = record<UInt64>();
    const datatypes = record<string>();
    const properties = record<JsonValue>();
    const metadata = record<JsonValue>();
    const history: SparkplugHistoryEntry[] = [];
    named.forEach(({ name, metric, value }, i) => {
      if (current.get(name) === i) {
        metrics[name] = value;
        if (metric.timestamp !== undefined) timestamps[name] = metric.timestamp;
      } else {
        history.push(
          metric.timestamp === undefined
            ? { name, value }
            : { name, value, timestamp: metric.timestamp },
        );
      }
      if (metric.datatype !== undefined) datatypes[name] = dataTypeName(metric.datatype);
      const set = metric.properties;
      if (set !== undefined) properties[name] = forMetric(name, () => propertySetJson(set));
      if (metric.metadata !== undefined) metadata[name] = metaDataJson(metric.metadata);
    });
    const document: SparkplugDocument = { metrics };
    if (payload.timestamp !== undefined) document.timestamp = payload.timestamp;
    if (payload.seq !== undefined) document.seq = payload.seq;
    if (payload.uuid !== undefined) document.uuid = payload.uuid;
    if (payload.body !== undefined) document.body = base64(payload.body);
    if (Object.keys(timestamps).length > 0) document.metric_timestamps = timestamps;
    if (history.length > 0) document.history = history;
    if (Object.keys(datatypes).length > 0) document.datatypes = datatypes;
    if (Object.keys(properties).length > 0) document.properties = properties;
    if (Object.keys(metadata).length > 0) document.metadata = metadata;
    return { document, unresolvedAliases: [...unresolved] };
  }
}
