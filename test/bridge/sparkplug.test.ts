import { describe, expect, it } from "vitest";
import {
  DataType,
  decodePayload,
  encodePayload,
  MAX_SPARKPLUG_NESTING,
  type MetricInput,
  metricValue,
  parseSparkplugTopic,
  SparkplugAliases,
  type SparkplugEdgeTopic,
  SparkplugError,
  type SparkplugMetric,
  type SparkplugPayload,
  type SparkplugValue,
  scalarValue,
  toJsonValue,
} from "../../bridge/sparkplug.ts";

/** Bytes from hex digits; `//` starts a comment that runs to the end of the line. */
const hex = (text: string) =>
  Uint8Array.from(Buffer.from(text.replace(/\/\/[^\n]*/g, "").replace(/\s+/g, ""), "hex"));
const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");

function edgeTopic(topic: string): SparkplugEdgeTopic {
  const parsed = parseSparkplugTopic(topic);
  if (parsed === undefined || parsed.type === "STATE") {
    throw new Error(`not an edge topic: ${topic}`);
  }
  return parsed;
}

/** Sends a payload through the wire format, as the broker would hand it over. */
const viaWire = (payload: SparkplugPayload) => decodePayload(encodePayload(payload));

const T0 = 1_700_000_000_000;

describe("parseSparkplugTopic", () => {
  it("reads edge node, device and host application topics", () => {
    expect(parseSparkplugTopic("spBv1.0/Plant 1/NBIRTH/Gateway")).toEqual({
      namespace: "spBv1.0",
      group: "Plant 1",
      type: "NBIRTH",
      edgeNode: "Gateway",
    });
    expect(parseSparkplugTopic("spBv1.0/Plant/DDATA/Gateway/Press-3")).toEqual({
      namespace: "spBv1.0",
      group: "Plant",
      type: "DDATA",
      edgeNode: "Gateway",
      device: "Press-3",
    });
    expect(parseSparkplugTopic("spBv1.0/STATE/scada-primary")).toEqual({
      namespace: "spBv1.0",
      type: "STATE",
      hostId: "scada-primary",
    });
    // A group may be called STATE: the level count tells the two apart.
    expect(parseSparkplugTopic("spBv1.0/STATE/NDATA/Gateway")).toMatchObject({ group: "STATE" });
  });

  it("refuses topics outside the spBv1.0 namespace rules", () => {
    for (const topic of [
      "spBv1.0",
      "spBv1.0/STATE",
      "spBv1.0/Plant/NDATA",
      "spAv1.0/Plant/NDATA/Gateway",
      "STATE/scada-primary",
      "spBv1.0/Plant/STATE/Gateway",
      "spBv1.0/Plant/NDATA/Gateway/Press-3",
      "spBv1.0/Plant/DDATA/Gateway",
      "spBv1.0/Plant/DDATA/Gateway/Press-3/extra",
      "spBv1.0/Plant/ndata/Gateway",
      "spBv1.0//NDATA/Gateway",
      "spBv1.0/Plant/NDATA/",
      "spBv1.0/Plant/DDATA/Gateway/",
      "spBv1.0/Pl+nt/NDATA/Gateway",
      "spBv1.0/Plant/NDATA/Gate#way",
      "spBv1.0/STATE/",
      "telemetry/dev-1/env",
    ]) {
      expect(parseSparkplugTopic(topic), topic).toBeUndefined();
    }
  });
});

describe("decodePayload on hand-made bytes", () => {
  // Laid out from the protobuf encoding rules, byte by byte: tag = field << 3 | wire type.
  const birth = hex(`
    08 80 d0 95 ff bc 31           // timestamp (1, varint) = 1700000000000
    12 0f                          // metrics (2, length 15)
      0a 04 54 65 6d 70            // name (1) = "Temp"
      10 01                        // alias (2) = 1
      20 09                        // datatype (4) = 9, Float
      65 00 00 ac 41               // float_value (12, 32-bit) = 21.5
    12 11                          // metrics (2, length 17)
      0a 05 43 6f 75 6e 74         // name (1) = "Count"
      10 02                        // alias (2) = 2
      20 01                        // datatype (4) = 1, Int8
      50 fb ff ff ff 0f            // int_value (10) = 0xfffffffb: -5 sign-extended to 32 bits
    18 00                          // seq (3) = 0
  `);

  it("reads a birth with a float and a negative Int8", () => {
    const payload = decodePayload(birth);
    expect(payload).toEqual({
      timestamp: T0,
      seq: 0,
      metrics: [
        { name: "Temp", alias: 1, datatype: 9, value: { kind: "float", value: 21.5 } },
        { name: "Count", alias: 2, datatype: 1, value: { kind: "int", value: 0xfffffffb } },
      ],
    });
    expect(toJsonValue(payload.metrics[1]?.value, DataType.Int8)).toBe(-5);
    // The encoder writes the same bytes, in field order, as the layout above.
    expect(toHex(encodePayload(payload))).toBe(toHex(birth));
  });

  it("reads a DataSet, Int64, UInt64, Double, Boolean and a null metric", () => {
    const bytes = hex(`
      12 23 0a 01 64 20 10 8a 01 1b        // "d": DataSet (17), 27 bytes:
            08 02 12 01 61 12 01 62        //   2 columns, "a" and "b"
            18 03 18 0c                    //   types unpacked, as proto2 writes them: Int32, String
            22 0d 0a 06 08 ff ff ff ff 0f  //   a row: int_value 0xffffffff,
                  0a 03 32 01 78           //   and string_value (6) "x"
      12 10 0a 01 6e 20 04 58 fe ff ff ff ff ff ff ff ff 01  // "n": Int64, long_value 2^64 - 2
      12 10 0a 01 75 20 08 58 ff ff ff ff ff ff ff ff ff 01  // "u": UInt64, long_value 2^64 - 1
      12 0e 0a 01 66 20 0a 69 00 00 00 00 00 00 0a 40        // "f": Double (13, 64-bit) 3.25
      12 07 0a 01 62 20 0b 70 01                             // "b": Boolean (14) true
      12 07 0a 01 7a 20 0c 38 01                             // "z": String, is_null (7)
    `);
    const payload = decodePayload(bytes);
    expect(payload.metrics).toEqual([
      {
        name: "d",
        datatype: DataType.DataSet,
        value: {
          kind: "dataset",
          value: {
            numOfColumns: 2,
            columns: ["a", "b"],
            types: [DataType.Int32, DataType.String],
            rows: [
              [
                { kind: "int", value: 0xffffffff },
                { kind: "string", value: "x" },
              ],
            ],
          },
        },
      },
      {
        name: "n",
        datatype: DataType.Int64,
        value: { kind: "long", value: "18446744073709551614" },
      },
      {
        name: "u",
        datatype: DataType.UInt64,
        value: { kind: "long", value: "18446744073709551615" },
      },
      { name: "f", datatype: DataType.Double, value: { kind: "double", value: 3.25 } },
      { name: "b", datatype: DataType.Boolean, value: { kind: "boolean", value: true } },
      { name: "z", datatype: DataType.String, isNull: true },
    ]);
    const json = payload.metrics.map((m) => toJsonValue(m.value, m.datatype));
    expect(json).toEqual([
      { columns: ["a", "b"], types: ["Int32", "String"], rows: [[-1, "x"]] },
      -2,
      "18446744073709551615",
      3.25,
      true,
      null,
    ]);
    expect(toHex(encodePayload(payload))).toBe(toHex(bytes));
  });

  it("takes packed DataSet types and skips unknown fields of every wire type", () => {
    const payload = decodePayload(
      hex(`
        18 07                              // seq (3) = 7
        30 01                              // field 6, varint
        39 01 02 03 04 05 06 07 08         // field 7, 64-bit
        42 02 aa bb                        // field 8, length-delimited
        4d 01 02 03 04                     // field 9, 32-bit
        53 08 01 5b 5c 54                  // field 10, a group holding a varint and an empty group
        12 0c 0a 01 74 20 10 8a 01 04      // metric "t", a DataSet (17) of 4 bytes:
              1a 02 03 0c                  // types (3), packed: Int32, String
      `),
    );
    expect(payload).toEqual({
      seq: 7,
      metrics: [
        {
          name: "t",
          datatype: DataType.DataSet,
          value: { kind: "dataset", value: { columns: [], types: [3, 12], rows: [] } },
        },
      ],
    });
  });

  it("reads the array layouts of the specification's examples", () => {
    const examples: [number, string, unknown[]][] = [
      // The specification prints 0xEF for -23, a typo for 0xE9.
      [DataType.Int8Array, "e9 7b", [-23, 123]],
      [DataType.Int16Array, "d0 8a 30 75", [-30000, 30000]],
      [DataType.Int32Array, "ff ff ff ff fa af cb 12", [-1, 315338746]],
      [
        DataType.Int64Array,
        "ce 06 72 ac 18 9c ba c4 c4 ba 9c 18 ac 72 06 ce",
        ["-4270929666821191986", "-3601064768563266876"],
      ],
      [DataType.UInt8Array, "17 fa", [23, 250]],
      [DataType.UInt16Array, "1e 00 88 cc", [30, 52360]],
      [DataType.UInt32Array, "34 00 00 00 49 fb 55 c4", [52, 3293969225]],
      [
        DataType.UInt64Array,
        "34 00 00 00 00 00 00 00 d9 9e 02 d1 b2 76 37 e4",
        [52, "16444743074749521625"],
      ],
      // The specification's Float and Double examples are big-endian; Tahu and the text say little.
      [DataType.FloatArray, "a4 70 9d 3f 98 ae b2 42", [1.23, 89.341]],
      [
        DataType.DoubleArray,
        "d7 a2 05 68 5b b5 28 40 8e 17 1c 6f 4c f7 8f 40",
        [12.354213, 1022.9123213],
      ],
      [
        DataType.BooleanArray,
        "0c 00 00 00 34 d0",
        [false, false, true, true, false, true, false, false, true, true, false, true],
      ],
      [DataType.StringArray, "41 42 43 00 68 65 6c 6c 6f 00", ["ABC", "hello"]],
      [
        DataType.DateTimeArray,
        "c7 d0 90 75 24 01 00 00 b8 ba b8 97 81 01 00 00",
        [1256102875335, 1656107875000],
      ],
    ];
    for (const [datatype, bytes, values] of examples) {
      expect(toJsonValue({ kind: "bytes", value: hex(bytes) }, datatype), bytes).toEqual(values);
      const packed = metricValue(datatype, values as MetricInput);
      expect(packed.kind === "bytes" && toHex(packed.value), bytes).toBe(bytes.replace(/ /g, ""));
    }
  });
});

describe("encodePayload and decodePayload", () => {
  const dataSet = {
    numOfColumns: 3,
    columns: ["Step", "Temperature", "Label"],
    types: [DataType.Int16, DataType.Float, DataType.String],
    rows: [
      [
        scalarValue(DataType.Int16, -4),
        scalarValue(DataType.Float, 180.5),
        scalarValue(DataType.String, "heat"),
      ],
      [scalarValue(DataType.Int16, 5), null, { kind: "extension" as const, value: hex("0801") }],
    ],
  };
  const template = {
    version: "1.2",
    templateRef: "Motor",
    isDefinition: false,
    parameters: [{ name: "Rated", type: DataType.Int32, value: scalarValue(DataType.Int32, -7) }],
    metrics: [
      { name: "Speed", datatype: DataType.UInt16, value: scalarValue(DataType.UInt16, 1500) },
      { name: "Fault", datatype: DataType.Boolean, isNull: true },
    ],
  };
  const cases: [number, MetricInput, unknown][] = [
    [DataType.Int8, -128, -128],
    [DataType.Int8, 127, 127],
    [DataType.Int16, -32768, -32768],
    [DataType.Int32, -2147483648, -2147483648],
    [DataType.Int32, 2147483647, 2147483647],
    [DataType.Int64, -5, -5],
    [DataType.Int64, -(2n ** 63n), "-9223372036854775808"],
    [DataType.Int64, "9007199254740993", "9007199254740993"],
    [DataType.UInt8, 255, 255],
    [DataType.UInt16, 65535, 65535],
    [DataType.UInt32, 4294967295, 4294967295],
    [DataType.UInt64, 2n ** 64n - 1n, "18446744073709551615"],
    [DataType.UInt64, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
    [DataType.Float, 21.3, 21.3],
    [DataType.Float, Number.NaN, "NaN"],
    [DataType.Double, 0.1 + 0.2, 0.30000000000000004],
    [DataType.Double, Number.NEGATIVE_INFINITY, "-Infinity"],
    [DataType.Boolean, false, false],
    [DataType.String, "héllo ✓", "héllo ✓"],
    [DataType.DateTime, T0, T0],
    [DataType.Text, "", ""],
    [DataType.UUID, "4a8b5c1e-0f4d-4a5e-9b1e-2c3d4e5f6a7b", "4a8b5c1e-0f4d-4a5e-9b1e-2c3d4e5f6a7b"],
    [
      DataType.DataSet,
      dataSet,
      {
        columns: ["Step", "Temperature", "Label"],
        types: ["Int16", "Float", "String"],
        rows: [
          [-4, 180.5, "heat"],
          [5, null, "CAE="],
        ],
      },
    ],
    [DataType.Bytes, hex("010203"), "AQID"],
    [DataType.File, new Uint8Array(0), ""],
    [
      DataType.Template,
      template,
      {
        template_ref: "Motor",
        version: "1.2",
        is_definition: false,
        parameters: { Rated: -7 },
        metrics: { Speed: 1500, Fault: null },
      },
    ],
    [DataType.Int8Array, [-128, 0, 127], [-128, 0, 127]],
    [DataType.Int16Array, [-32768, 32767], [-32768, 32767]],
    [DataType.Int32Array, [-2147483648], [-2147483648]],
    [DataType.Int64Array, [-(2n ** 63n), -1, "42"], ["-9223372036854775808", -1, 42]],
    [DataType.UInt8Array, [], []],
    [DataType.UInt16Array, [65535], [65535]],
    [DataType.UInt32Array, [4294967295, 0], [4294967295, 0]],
    [DataType.UInt64Array, [2n ** 64n - 1n, 7], ["18446744073709551615", 7]],
    [DataType.FloatArray, [0.1, -2.5, Number.POSITIVE_INFINITY], [0.1, -2.5, "Infinity"]],
    [DataType.DoubleArray, [0.1, Number.NaN], [0.1, "NaN"]],
    [
      DataType.BooleanArray,
      [true, false, true, true, false, false, false, false, true],
      [true, false, true, true, false, false, false, false, true],
    ],
    [DataType.StringArray, ["a", "", "ü"], ["a", "", "ü"]],
    [DataType.DateTimeArray, [T0, 0], [T0, 0]],
  ];

  it("round-trips a metric of every datatype and reads it back as JSON", () => {
    const propertyOnly: number[] = [
      DataType.Unknown,
      DataType.PropertySet,
      DataType.PropertySetList,
    ];
    const metricTypes = Object.values(DataType).filter((code) => !propertyOnly.includes(code));
    expect(new Set(cases.map(([datatype]) => datatype))).toEqual(new Set(metricTypes));
    for (const [datatype, input, json] of cases) {
      const payload: SparkplugPayload = {
        timestamp: T0,
        seq: 3,
        metrics: [
          { name: "m", alias: 9, timestamp: T0, datatype, value: metricValue(datatype, input) },
        ],
      };
      const decoded = viaWire(payload);
      expect(decoded, `datatype ${datatype}`).toEqual(payload);
      expect(toJsonValue(decoded.metrics[0]?.value, datatype), `datatype ${datatype}`).toEqual(
        json,
      );
    }
  });

  it("round-trips every field of the payload, metric, metadata and property set", () => {
    const payload: SparkplugPayload = {
      timestamp: "18446744073709551615",
      seq: 255,
      uuid: "schema-7",
      body: hex("00ff"),
      metrics: [
        {
          name: "Image",
          alias: "9007199254740993",
          timestamp: T0,
          datatype: DataType.File,
          isHistorical: false,
          isTransient: true,
          isNull: false,
          metadata: {
            isMultiPart: false,
            contentType: "image/png",
            size: 2,
            seq: 0,
            fileName: "a.png",
            fileType: "png",
            md5: "d41d8cd98f00b204e9800998ecf8427e",
            description: "{}",
          },
          properties: {
            keys: ["Engineering Units", "Limits", "Ranges", "Missing", "Ext"],
            values: [
              { type: DataType.String, value: scalarValue(DataType.String, "°C") },
              {
                type: DataType.PropertySet,
                value: {
                  kind: "propertyset",
                  value: {
                    keys: ["Low"],
                    values: [{ type: DataType.Int8, value: scalarValue(DataType.Int8, -40) }],
                  },
                },
              },
              {
                type: DataType.PropertySetList,
                value: { kind: "propertysets", value: [{ keys: [], values: [] }] },
              },
              { type: DataType.Int32, isNull: true },
              { value: { kind: "extension", value: hex("0801") } },
            ],
          },
          value: { kind: "bytes", value: hex("8950") },
        },
      ],
    };
    expect(viaWire(payload)).toEqual(payload);
    const { document } = new SparkplugAliases().ingest(edgeTopic("spBv1.0/G/NBIRTH/E"), payload);
    expect(document.properties).toEqual({
      Image: {
        "Engineering Units": "°C",
        Limits: { Low: -40 },
        Ranges: [{}],
        Missing: null,
        Ext: "CAE=",
      },
    });
    expect(document.metadata).toEqual({
      Image: {
        is_multi_part: false,
        content_type: "image/png",
        size: 2,
        seq: 0,
        file_name: "a.png",
        file_type: "png",
        md5: "d41d8cd98f00b204e9800998ecf8427e",
        description: "{}",
      },
    });
    expect(document.body).toBe("AP8=");
  });

  it("keeps uint64 values past 2^53 exact, as decimal strings", () => {
    expect(decodePayload(hex("08 ff ff ff ff ff ff ff 0f")).timestamp).toBe(2 ** 53 - 1);
    expect(decodePayload(hex("08 80 80 80 80 80 80 80 10")).timestamp).toBe("9007199254740992");
    expect(decodePayload(hex("08 81 80 80 80 80 80 80 10")).timestamp).toBe("9007199254740993");
    // A tenth byte's bits past 64 are dropped, as protobuf's parsers do.
    expect(decodePayload(hex("18 ff ff ff ff ff ff ff ff ff 7f")).seq).toBe("18446744073709551615");
    // Zero written in ten bytes is still zero.
    expect(decodePayload(hex("18 80 80 80 80 80 80 80 80 80 00")).seq).toBe(0);
    expect(() => encodePayload({ timestamp: 2 ** 53, metrics: [] })).toThrow(SparkplugError);
    expect(() => encodePayload({ timestamp: "18446744073709551616", metrics: [] })).toThrow(
      /not a uint64/,
    );
    expect(() => encodePayload({ timestamp: -1, metrics: [] })).toThrow(SparkplugError);
  });

  it("reads float32 as the shortest decimal that is the same float", () => {
    const float = (bytes: string) =>
      decodePayload(hex(`12 05 65 ${bytes}`)).metrics[0]?.value?.value as number;
    expect(float("66 66 aa 41")).toBe(21.3);
    expect(float("cd cc cc 3d")).toBe(0.1);
    expect(float("00 00 80 4b")).toBe(16777216);
    expect(float("ff ff 7f 7f")).toBe(3.4028235e38);
    expect(float("01 00 00 00")).toBe(1e-45);
    expect(float("00 00 c0 7f")).toBeNaN();
    expect(Object.is(float("00 00 00 80"), -0)).toBe(true);
    // What a float32 cannot hold is rounded once, where the value is made.
    expect(scalarValue(DataType.Float, 16777217)).toEqual({ kind: "float", value: 16777216 });
    expect(scalarValue(DataType.Float, 1.00000001)).toEqual({ kind: "float", value: 1 });
    const bytes = encodePayload({ metrics: [{ value: scalarValue(DataType.Float, 0.1) }] });
    expect(toHex(bytes)).toBe("120565cdcccc3d");
  });

  it("reads signed integers from either width of two's complement", () => {
    // Tahu's Python writes an Int8 -5 as 251; its Java and JavaScript as 0xfffffffb.
    expect(toJsonValue({ kind: "int", value: 251 }, DataType.Int8)).toBe(-5);
    expect(toJsonValue({ kind: "int", value: 0xfffffffb }, DataType.Int8)).toBe(-5);
    expect(toJsonValue({ kind: "int", value: 0x8000 }, DataType.Int16)).toBe(-32768);
    expect(toJsonValue({ kind: "int", value: 0x80000000 }, DataType.Int32)).toBe(-2147483648);
    expect(toJsonValue({ kind: "long", value: "18446744073709551611" }, DataType.Int64)).toBe(-5);
    expect(toJsonValue({ kind: "long", value: "18446744073709551611" }, DataType.Int32)).toBe(-5);
    // Tahu's Java and JavaScript put UInt32 in long_value.
    expect(toJsonValue({ kind: "long", value: 4294967295 }, DataType.UInt32)).toBe(4294967295);
    // Without a datatype, integers read as the unsigned field.
    expect(toJsonValue({ kind: "int", value: 0xfffffffb })).toBe(0xfffffffb);
    expect(scalarValue(DataType.Int8, -5)).toEqual({ kind: "int", value: 0xfffffffb });
    expect(scalarValue(DataType.Int64, -1)).toEqual({
      kind: "long",
      value: "18446744073709551615",
    });
  });

  it("refuses values that do not fit their datatype", () => {
    for (const [datatype, value] of [
      [DataType.Int8, 128],
      [DataType.Int8, 1.5],
      [DataType.UInt8, -1],
      [DataType.UInt32, 2 ** 32],
      [DataType.Int64, 2n ** 63n],
      [DataType.UInt64, "-1"],
      [DataType.Int32, "12abc"],
      [DataType.Float, "1"],
      [DataType.Boolean, 1],
      [DataType.String, 1],
      [DataType.PropertySet, 1],
    ] as const) {
      expect(() => scalarValue(datatype, value), `${datatype} ${value}`).toThrow(SparkplugError);
    }
    expect(() => metricValue(DataType.Int8Array, [1, 300])).toThrow(/300 is not a Int8/);
    expect(() => metricValue(DataType.StringArray, ["a\u0000b"])).toThrow(SparkplugError);
    expect(() => metricValue(DataType.BooleanArray, [true, 1])).toThrow(SparkplugError);
    expect(() => metricValue(DataType.Bytes, [1, 2])).toThrow(SparkplugError);
    expect(() => metricValue(DataType.Int32Array, 5)).toThrow(SparkplugError);
    expect(() => metricValue(DataType.Int32, [5])).toThrow(SparkplugError);
    expect(() => metricValue(DataType.DataSet, 5)).toThrow(SparkplugError);
    expect(() => metricValue(DataType.Template, hex("00"))).toThrow(SparkplugError);
    expect(() =>
      encodePayload({ metrics: [{ datatype: 2 ** 32, value: { kind: "int", value: 1 } }] }),
    ).toThrow(/not a uint32/);
    const misplaced = { kind: "propertyset", value: { keys: [], values: [] } } as const;
    expect(() => encodePayload({ metrics: [{ value: misplaced as never }] })).toThrow(
      /a propertyset value cannot be written in a Metric/,
    );
  });

  it("refuses a value in a field its datatype does not use, and malformed arrays", () => {
    const bytes = (text: string): SparkplugValue => ({ kind: "bytes", value: hex(text) });
    const cases: [SparkplugValue, number, RegExp][] = [
      [{ kind: "string", value: "1" }, DataType.Int32, /Int32 value in the string_value field/],
      [{ kind: "int", value: 1 }, DataType.Boolean, /Boolean value in the int_value/],
      [bytes("01 02 03"), DataType.Int32Array, /Int32Array of 3 bytes/],
      [bytes("01 00 00"), DataType.BooleanArray, /shorter than its 4-byte count/],
      [bytes("ff ff ff ff 00"), DataType.BooleanArray, /4294967295 values in 1 bytes/],
      [bytes("09 00 00 00 ff"), DataType.BooleanArray, /9 values in 1 bytes/],
      [bytes("41 ff 00"), DataType.StringArray, /not valid UTF-8/],
      [
        { kind: "propertyset", value: { keys: ["a", "b"], values: [{}] } },
        DataType.PropertySet,
        /2 keys and 1 values/,
      ],
      [
        { kind: "template", value: { metrics: [{ datatype: 3 }], parameters: [] } },
        DataType.Template,
        /template member has no name/,
      ],
      [
        { kind: "template", value: { metrics: [], parameters: [{ type: 3 }] } },
        DataType.Template,
        /template parameter has no name/,
      ],
    ];
    for (const [value, datatype, message] of cases) {
      expect(() => toJsonValue(value, datatype)).toThrow(message);
    }
    // An unterminated last string is read all the same; an unknown datatype reads the raw field.
    expect(toJsonValue(bytes("61 00 62"), DataType.StringArray)).toEqual(["a", "b"]);
    expect(toJsonValue(bytes("ff"), 99)).toBe("/w==");
  });
});

describe("decodePayload on malformed bytes", () => {
  function wrap(field: number, inner: number[]): number[] {
    const length: number[] = [];
    for (let n = inner.length; ; n >>>= 7) {
      if (n < 0x80) {
        length.push(n);
        break;
      }
      length.push((n & 0x7f) | 0x80);
    }
    return [(field << 3) | 2, ...length, ...inner];
  }
  /** A metric whose property sets hold property sets until `depth` (even) messages are nested. */
  function nestedMessages(depth: number): Uint8Array {
    let set: number[] = [];
    for (let nested = 2; nested < depth; nested += 2) set = wrap(2, wrap(9, set));
    return Uint8Array.from(wrap(2, wrap(9, set)));
  }

  const cases: [string, Uint8Array, RegExp][] = [
    ["a truncated varint", hex("08 80"), /truncated varint at byte 2 \(Payload field 1\)/],
    [
      "an 11-byte varint",
      hex("08 ff ff ff ff ff ff ff ff ff ff 01"),
      /varint longer than 10 bytes/,
    ],
    [
      "a length past the end",
      hex("12 05 0a"),
      /length 5 runs past the end of the Payload \(1 bytes left\)/,
    ],
    ["a length of 4 GiB", hex("12 ff ff ff ff 0f 0a"), /length 4294967295 runs past the end/],
    ["a length past 2^49", hex("2a ff ff ff ff ff ff ff ff 01"), /runs past the end/],
    [
      "a nested length past its message",
      hex("12 03 0a 05 41 42 43"),
      /length 5 runs past the end of the Metric/,
    ],
    [
      "a length-delimited timestamp",
      hex("0a 00"),
      /wire type 2 \(length-delimited\) where varint was expected/,
    ],
    [
      "a 32-bit metric list",
      hex("15 00 00 00 00"),
      /wire type 5 \(32-bit\) where length-delimited/,
    ],
    [
      "a varint float",
      hex("12 02 60 01"),
      /wire type 0 \(varint\) where 32-bit was expected .*Metric field 12/,
    ],
    ["a truncated float", hex("12 03 65 00 00"), /truncated 32-bit value/],
    ["a truncated double", hex("12 05 69 00 00 00 00"), /truncated 64-bit value/],
    ["wire type 7", hex("37"), /unexpected wire type 7/],
    ["wire type 6 on a known field", hex("0e"), /wire type 6 \(invalid\)/],
    ["a stray group end", hex("34"), /unexpected wire type 4/],
    ["field number 0", hex("00 00"), /field number 0/],
    ["a tag past 32 bits", hex("f8 ff ff ff ff 01"), /field tag out of range/],
    ["a group without its end", hex("53 08 01"), /group 10 has no end/],
    ["a group ended by another", hex("53 5c"), /group 10 ended as group 11/],
    [
      "groups nested 100,000 deep",
      new Uint8Array(100_000).fill(0x53),
      /groups nested more than 32 deep/,
    ],
    [
      "messages nested too deep",
      nestedMessages(MAX_SPARKPLUG_NESTING + 2),
      /nested more than 32 deep/,
    ],
    ["an invalid UTF-8 string", hex("22 02 c3 28"), /string is not valid UTF-8/],
  ];

  for (const [what, bytes, message] of cases) {
    it(`throws a SparkplugError on ${what}`, () => {
      const started = performance.now();
      expect(() => decodePayload(bytes)).toThrow(SparkplugError);
      expect(() => decodePayload(bytes)).toThrow(message);
      expect(performance.now() - started).toBeLessThan(100);
    });
  }

  it("reads nesting up to the limit", () => {
    let set = decodePayload(nestedMessages(MAX_SPARKPLUG_NESTING)).metrics[0]?.properties;
    let levels = 0;
    for (; set?.values[0]?.value?.kind === "propertyset"; levels++) set = set.values[0].value.value;
    expect(levels).toBe(MAX_SPARKPLUG_NESTING / 2 - 1);
  });
});

describe("SparkplugAliases", () => {
  const nodeTopic = (type: string) => edgeTopic(`spBv1.0/Plant/${type}/Gateway`);
  const deviceTopic = (type: string, device = "Press") =>
    edgeTopic(`spBv1.0/Plant/${type}/Gateway/${device}`);
  const nbirth = (metrics: SparkplugMetric[], bdSeq = 0): SparkplugPayload => ({
    timestamp: T0,
    seq: 0,
    metrics: [
      {
        name: "bdSeq",
        timestamp: T0,
        datatype: DataType.Int64,
        value: scalarValue(DataType.Int64, bdSeq),
      },
      ...metrics,
    ],
  });
  const declare = (
    name: string,
    alias: number,
    datatype: number,
    value: MetricInput,
  ): SparkplugMetric => ({
    name,
    alias,
    timestamp: T0,
    datatype,
    value: metricValue(datatype, value),
  });
  /** A DATA metric as the spec has it: alias, timestamp and value, no name and no datatype. */
  const byAlias = (alias: number, datatype: number, value: MetricInput): SparkplugMetric => ({
    alias,
    timestamp: T0 + 1,
    value: metricValue(datatype, value),
  });
  const data = (seq: number, metrics: SparkplugMetric[]): SparkplugPayload => ({
    timestamp: T0 + 1,
    seq,
    metrics,
  });

  it("names a DDATA's metrics by the aliases of its DBIRTH and reads them by its datatypes", () => {
    const aliases = new SparkplugAliases();
    aliases.ingest(
      nodeTopic("NBIRTH"),
      viaWire(nbirth([declare("Node Control/Rebirth", 1, DataType.Boolean, false)])),
    );
    const birth = aliases.ingest(
      deviceTopic("DBIRTH"),
      viaWire({
        timestamp: T0,
        seq: 1,
        metrics: [
          declare("Temperature", 10, DataType.Int16, 21),
          declare("Status", 11, DataType.String, "idle"),
          declare("Counts", 12, DataType.Int32Array, [1, 2]),
        ],
      }),
    );
    expect(birth.document).toEqual({
      timestamp: T0,
      seq: 1,
      metrics: { Temperature: 21, Status: "idle", Counts: [1, 2] },
      metric_timestamps: { Temperature: T0, Status: T0, Counts: T0 },
      datatypes: { Temperature: "Int16", Status: "String", Counts: "Int32Array" },
    });

    const result = aliases.ingest(
      deviceTopic("DDATA"),
      viaWire(
        data(2, [
          byAlias(10, DataType.Int16, -32768),
          byAlias(11, DataType.String, "running"),
          byAlias(12, DataType.Int32Array, [-1]),
        ]),
      ),
    );
    expect(result).toEqual({
      document: {
        timestamp: T0 + 1,
        seq: 2,
        metrics: { Temperature: -32768, Status: "running", Counts: [-1] },
        metric_timestamps: { Temperature: T0 + 1, Status: T0 + 1, Counts: T0 + 1 },
      },
      unresolvedAliases: [],
      untrackedDeclarations: 0,
    });
    expect(JSON.parse(JSON.stringify(result.document))).toEqual(result.document);

    // A named DATA metric without a datatype takes its own device's BIRTH datatype;
    // on a device whose BIRTH declared no such name, the unsigned field is all there is.
    const named = { name: "Temperature", value: scalarValue(DataType.Int16, -2) };
    expect(aliases.ingest(deviceTopic("DDATA"), data(3, [named])).document.metrics).toEqual({
      Temperature: -2,
    });
    expect(
      aliases.ingest(deviceTopic("DDATA", "Other"), data(4, [named])).document.metrics,
    ).toEqual({
      Temperature: 0xfffffffe,
    });
  });

  it("forgets aliases a rebirth drops and learns the ones it changes", () => {
    const aliases = new SparkplugAliases();
    aliases.ingest(
      nodeTopic("NBIRTH"),
      nbirth([declare("A", 1, DataType.UInt8, 1), declare("B", 2, DataType.UInt8, 2)]),
    );
    aliases.ingest(deviceTopic("DBIRTH"), {
      seq: 1,
      metrics: [declare("D", 20, DataType.Int8, -1)],
    });
    const before = aliases.ingest(nodeTopic("NDATA"), data(2, [byAlias(2, DataType.UInt8, 7)]));
    expect(before.document.metrics).toEqual({ B: 7 });

    aliases.ingest(
      nodeTopic("NBIRTH"),
      nbirth([declare("B", 1, DataType.Int8, 0), declare("C", 3, DataType.Int8, 0)], 1),
    );
    const after = aliases.ingest(
      nodeTopic("NDATA"),
      data(1, [
        byAlias(1, DataType.Int8, -3),
        byAlias(2, DataType.UInt8, 7),
        byAlias(3, DataType.Int8, 4),
      ]),
    );
    expect(after.document.metrics).toEqual({ B: -3, C: 4 });
    expect(after.unresolvedAliases).toEqual([2]);
    // The rebirth dropped the device's aliases too, until its own DBIRTH comes again.
    const device = aliases.ingest(deviceTopic("DDATA"), data(2, [byAlias(20, DataType.Int8, -1)]));
    expect(device.unresolvedAliases).toEqual([20]);
    expect(aliases.trackedMetrics).toBe(3);
  });

  it("reports aliases no BIRTH declared, and an alias another device declared", () => {
    const aliases = new SparkplugAliases();
    const unknown = aliases.ingest(
      nodeTopic("NDATA"),
      data(5, [
        byAlias(5, DataType.Int32, 1),
        byAlias(5, DataType.Int32, 2),
        { alias: "18446744073709551615", value: scalarValue(DataType.Int32, 1) },
        { name: "Named", value: scalarValue(DataType.Int32, -1) },
      ]),
    );
    expect(unknown.unresolvedAliases).toEqual([5, "18446744073709551615"]);
    expect(unknown.document.metrics).toEqual({ Named: 0xffffffff });
    expect(aliases.edgeNodes).toBe(0);

    aliases.ingest(deviceTopic("DBIRTH", "One"), { metrics: [declare("X", 7, DataType.Int8, 0)] });
    const other = aliases.ingest(
      deviceTopic("DDATA", "Two"),
      data(1, [byAlias(7, DataType.Int8, 1)]),
    );
    expect(other.unresolvedAliases).toEqual([7]);
    // Commands use the same aliases.
    const command = aliases.ingest(
      deviceTopic("DCMD", "One"),
      data(0, [byAlias(7, DataType.Int8, -8)]),
    );
    expect(command.document.metrics).toEqual({ X: -8 });
  });

  it("replaces a device's aliases on its DBIRTH", () => {
    const aliases = new SparkplugAliases();
    aliases.ingest(deviceTopic("DBIRTH"), { metrics: [declare("Old", 1, DataType.Int8, 0)] });
    aliases.ingest(deviceTopic("DBIRTH"), { metrics: [declare("New", 2, DataType.Int8, 0)] });
    const result = aliases.ingest(
      deviceTopic("DDATA"),
      data(1, [byAlias(1, DataType.Int8, 1), byAlias(2, DataType.Int8, 2)]),
    );
    expect(result.document.metrics).toEqual({ New: 2 });
    expect(result.unresolvedAliases).toEqual([1]);
    expect(aliases.trackedMetrics).toBe(1);
  });

  it("forgets an edge node on its NDEATH, but not on a stale one from an earlier session", () => {
    const aliases = new SparkplugAliases();
    aliases.ingest(nodeTopic("NBIRTH"), nbirth([declare("A", 1, DataType.Int8, 0)], 4));
    const stale = { metrics: [{ name: "bdSeq", value: scalarValue(DataType.Int64, 3) }] };
    expect(aliases.ingest(nodeTopic("NDEATH"), stale).document).toEqual({ metrics: { bdSeq: 3 } });
    expect(aliases.edgeNodes).toBe(1);
    aliases.ingest(nodeTopic("NDEATH"), {
      metrics: [{ name: "bdSeq", value: scalarValue(DataType.Int64, 4) }],
    });
    expect(aliases.edgeNodes).toBe(0);
    expect(aliases.trackedMetrics).toBe(0);
    const after = aliases.ingest(nodeTopic("NDATA"), data(1, [byAlias(1, DataType.Int8, 1)]));
    expect(after.unresolvedAliases).toEqual([1]);
  });

  it("keeps historical values and repeated names in history, the last value as current", () => {
    const aliases = new SparkplugAliases();
    aliases.ingest(nodeTopic("NBIRTH"), nbirth([declare("Level", 1, DataType.Double, 0)]));
    const result = aliases.ingest(
      nodeTopic("NDATA"),
      data(1, [
        {
          alias: 1,
          timestamp: T0 - 2000,
          isHistorical: true,
          value: scalarValue(DataType.Double, 1),
        },
        { alias: 1, timestamp: T0 - 1000, value: scalarValue(DataType.Double, 2) },
        { alias: 1, value: scalarValue(DataType.Double, 3) },
        { name: "Pressure", timestamp: T0, isNull: true },
      ]),
    );
    expect(result.document).toEqual({
      timestamp: T0 + 1,
      seq: 1,
      metrics: { Level: 3, Pressure: null },
      metric_timestamps: { Pressure: T0 },
      history: [
        { name: "Level", value: 1, timestamp: T0 - 2000 },
        { name: "Level", value: 2, timestamp: T0 - 1000 },
      ],
    });
  });

  it("keeps any metric name as a key, and refuses a metric with neither name nor alias", () => {
    const aliases = new SparkplugAliases();
    const { document } = aliases.ingest(nodeTopic("NDATA"), {
      metrics: [{ name: "__proto__", value: scalarValue(DataType.Int8, 1) }],
    });
    expect(Object.keys(document.metrics)).toEqual(["__proto__"]);
    expect(JSON.stringify(document)).toBe('{"metrics":{"__proto__":1}}');
    expect(() =>
      aliases.ingest(nodeTopic("NDATA"), { metrics: [{ value: scalarValue(DataType.Int8, 1) }] }),
    ).toThrow(/neither a name nor an alias/);
    expect(() =>
      aliases.ingest(nodeTopic("NDATA"), {
        metrics: [{ name: "Bad", datatype: DataType.Int32, value: { kind: "string", value: "x" } }],
      }),
    ).toThrow(/metric "Bad": Int32 value in the string_value field/);
  });

  it("forgets the least recently heard edge nodes past the limits", () => {
    const aliases = new SparkplugAliases({
      maxEdgeNodes: 2,
      maxTrackedMetrics: 5,
      maxMetricsPerEdgeNode: 3,
    });
    const birth = (node: string, count: number) =>
      aliases.ingest(edgeTopic(`spBv1.0/Plant/NBIRTH/${node}`), {
        metrics: Array.from({ length: count }, (_, i) => declare(`m${i}`, i, DataType.Int8, 0)),
      });
    const known = (node: string) =>
      aliases.ingest(
        edgeTopic(`spBv1.0/Plant/NDATA/${node}`),
        data(1, [byAlias(0, DataType.Int8, 1)]),
      ).unresolvedAliases.length === 0;

    expect(birth("n1", 1).untrackedDeclarations).toBe(0);
    birth("n2", 1);
    expect(known("n1")).toBe(true);
    birth("n3", 1);
    expect([known("n1"), known("n2"), known("n3")]).toEqual([true, false, true]);
    expect(aliases.edgeNodes).toBe(2);

    // Past the per-node limit, declarations are counted, not kept.
    expect(birth("n4", 5).untrackedDeclarations).toBe(2);
    expect(aliases.trackedMetrics).toBe(4);
    expect([known("n3"), known("n4")]).toEqual([true, true]);
    // Five metrics in all are too many for n3, n4 and n5: both older nodes go.
    birth("n5", 3);
    expect(aliases.trackedMetrics).toBe(3);
    expect(aliases.edgeNodes).toBe(1);
  });
});

describe("decoding random and mutated bytes", () => {
  function random(seed: number): () => number {
    let state = seed;
    return () => {
      state = (state + 0x6d2b79f5) | 0;
      let t = Math.imul(state ^ (state >>> 15), 1 | state);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
    };
  }

  const valid = encodePayload({
    timestamp: T0,
    seq: 0,
    uuid: "u",
    metrics: [
      { name: "bdSeq", alias: 0, datatype: DataType.Int64, value: scalarValue(DataType.Int64, -1) },
      {
        name: "F",
        alias: 1,
        timestamp: T0,
        datatype: DataType.Float,
        value: scalarValue(DataType.Float, 1.5),
      },
      {
        name: "A",
        alias: 2,
        datatype: DataType.BooleanArray,
        value: metricValue(DataType.BooleanArray, [true, false]),
      },
      {
        name: "S",
        alias: 3,
        datatype: DataType.StringArray,
        value: metricValue(DataType.StringArray, ["x", "y"]),
      },
      {
        name: "D",
        alias: 4,
        datatype: DataType.DataSet,
        value: metricValue(DataType.DataSet, {
          columns: ["c"],
          types: [DataType.Int8],
          rows: [[scalarValue(DataType.Int8, -1)], [null]],
        }),
      },
      {
        name: "T",
        alias: 5,
        datatype: DataType.Template,
        properties: {
          keys: ["k"],
          values: [{ type: DataType.UInt16, value: scalarValue(DataType.UInt16, 9) }],
        },
        value: metricValue(DataType.Template, {
          templateRef: "R",
          parameters: [
            { name: "p", type: DataType.String, value: scalarValue(DataType.String, "v") },
          ],
          metrics: [
            { name: "in", datatype: DataType.Double, value: scalarValue(DataType.Double, 2) },
          ],
        }),
      },
      {
        name: "I",
        alias: 6,
        datatype: DataType.Int64Array,
        value: metricValue(DataType.Int64Array, [-1, 2]),
      },
    ],
  });

  function mutate(next: () => number): Uint8Array {
    const bytes = Array.from(valid);
    const at = () => Math.floor(next() * bytes.length);
    for (let edits = 1 + Math.floor(next() * 2); edits > 0; edits--) {
      const choice = next();
      if (choice < 0.4) bytes[at()] = Math.floor(next() * 256);
      else if (choice < 0.6) {
        const i = at();
        bytes[i] = (bytes[i] as number) ^ (1 << Math.floor(next() * 8));
      } else if (choice < 0.75) bytes.splice(at(), 1 + Math.floor(next() * 8));
      else if (choice < 0.9)
        bytes.splice(
          at(),
          0,
          ...Array.from({ length: 1 + Math.floor(next() * 8) }, () => Math.floor(next() * 256)),
        );
      else bytes.length = at();
    }
    return Uint8Array.from(bytes);
  }

  it("throws nothing but SparkplugError and finishes quickly", () => {
    const next = random(20_240_601);
    const inputs: Uint8Array[] = [];
    for (let i = 0; i < 2000; i++) {
      inputs.push(
        Uint8Array.from({ length: Math.floor(next() * 96) }, () => Math.floor(next() * 256)),
      );
    }
    for (let i = 0; i < 2000; i++) inputs.push(mutate(next));

    const aliases = new SparkplugAliases();
    const topics = ["NBIRTH", "NDATA", "DBIRTH", "DDATA", "NDEATH"].map((type) =>
      edgeTopic(`spBv1.0/G/${type}/E${type.startsWith("D") ? "/dev" : ""}`),
    );
    const unexpected: unknown[] = [];
    let decoded = 0;
    const started = performance.now();
    inputs.forEach((bytes, i) => {
      try {
        const payload = decodePayload(bytes);
        decoded++;
        JSON.stringify(
          aliases.ingest(topics[i % topics.length] as SparkplugEdgeTopic, payload).document,
        );
      } catch (error) {
        if (!(error instanceof SparkplugError)) unexpected.push(error);
      }
    });
    const elapsed = performance.now() - started;

    expect(unexpected).toEqual([]);
    expect(decoded).toBeGreaterThan(100);
    expect(elapsed).toBeLessThan(1000);
  });
});
