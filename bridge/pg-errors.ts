import pg from "pg";

/**
 * SQLSTATEs after which the same batch is tried again after a pause: the
 * server is going away, starting or overloaded.
 */
export const RETRYABLE_SQLSTATES: ReadonlyMap<string, string> = new Map([
  ["08000", "connection_exception"],
  ["08001", "sqlclient_unable_to_establish_sqlconnection"],
  ["08003", "connection_does_not_exist"],
  ["08004", "sqlserver_rejected_establishment_of_sqlconnection"],
  ["08006", "connection_failure"],
  ["08P01", "protocol_violation"],
  ["53000", "insufficient_resources"],
  ["53100", "disk_full"],
  ["53200", "out_of_memory"],
  ["53300", "too_many_connections"],
  ["55P03", "lock_not_available"],
  ["57P01", "admin_shutdown"],
  ["57P02", "crash_shutdown"],
  ["57P03", "cannot_connect_now"],
  ["58000", "system_error"],
  ["58030", "io_error"],
]);

/** Socket-level failures reported by Node rather than by PostgreSQL. */
const RETRYABLE_NODE_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
]);

/** node-postgres reports a dropped connection with these messages and no code. */
const CONNECTION_LOST =
  /Connection terminated|connection error|not queryable|timeout exceeded when trying to connect|Client was closed/i;

export function sqlstate(error: unknown): string | undefined {
  return error instanceof pg.DatabaseError ? error.code : undefined;
}

/**
 * SQLSTATEs of a transaction that lost a race with another one, typically
 * another process writing the same keys: PostgreSQL is fine, the other
 * transaction has finished or is about to, and the batch can go again at once.
 */
export const LOST_RACE_SQLSTATES: ReadonlySet<string> = new Set(["40001", "40P01"]);

export function isLostRace(error: unknown): boolean {
  return LOST_RACE_SQLSTATES.has(sqlstate(error) ?? "");
}

export function isRetryable(error: unknown): boolean {
  if (error instanceof pg.DatabaseError) return RETRYABLE_SQLSTATES.has(error.code ?? "");
  if (!(error instanceof Error)) return false;
  const code = (error as NodeJS.ErrnoException).code;
  return (
    (code !== undefined && RETRYABLE_NODE_CODES.has(code)) || CONNECTION_LOST.test(error.message)
  );
}

export const UNIQUE_VIOLATION = "23505";
/** "no partition of relation found for row": the partition is missing or was just dropped. */
export const CHECK_VIOLATION = "23514";

/**
 * Errors caused by the content of one row: data exceptions (class 22), a
 * row no partition accepts, an index entry too large, a value nested past
 * the server's stack (54001). Found, such a row is dead-lettered and the
 * rest of its batch is written.
 */
export function isRowError(error: unknown): boolean {
  const code = sqlstate(error);
  if (code === undefined) return false;
  return (
    code.startsWith("22") ||
    code === CHECK_VIOLATION ||
    code === "54000" ||
    code === "54001" ||
    code === "23502"
  );
}

/** The 0-based row of a COPY that PostgreSQL refused, from the error's context line. */
export function copyErrorRow(error: unknown, table: string): number | undefined {
  const where = error instanceof pg.DatabaseError ? error.where : undefined;
  const match = where ? new RegExp(`COPY ${table}, line (\\d+)`).exec(where) : null;
  return match ? Number(match[1]) - 1 : undefined;
}
