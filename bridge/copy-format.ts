/**
 * Encoders for PostgreSQL's COPY text format: one line per row, columns
 * separated by tabs, backslash escapes for the four characters that would
 * break the framing.
 */

const SPECIAL = /[\\\n\r\t]/;
const SPECIAL_ALL = /[\\\n\r\t]/g;
const ESCAPES: Record<string, string> = { "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" };

export const NULL = "\\N";

export function text(value: string): string {
  return SPECIAL.test(value) ? value.replace(SPECIAL_ALL, (ch) => ESCAPES[ch] ?? ch) : value;
}

export function nullableText(value: string | null): string {
  return value === null ? NULL : text(value);
}

export function timestamp(ms: number): string {
  return new Date(ms).toISOString();
}

/** bytea in hex form; the backslash itself is escaped for the COPY layer. */
export function bytea(value: Buffer): string {
  return `\\\\x${value.toString("hex")}`;
}
