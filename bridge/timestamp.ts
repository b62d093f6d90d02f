const DAY_MS = 86_400_000;
let cachedDay = Number.NaN;
let cachedDate = "";

function pad(value: number, width: number): string {
  return String(value).padStart(width, "0");
}

/**
 * ISO 8601 in UTC, as `Date#toISOString` writes it for years 1970–9999 but
 * several times faster: rows of a batch mostly share a day, whose date part
 * is formatted once.
 */
export function timestamp(ms: number): string {
  const day = Math.floor(ms / DAY_MS);
  if (day !== cachedDay) {
    cachedDay = day;
    cachedDate = new Date(day * DAY_MS).toISOString().slice(0, 11);
  }
  let rest = ms - day * DAY_MS;
  const hours = Math.floor(rest / 3_600_000);
  rest -= hours * 3_600_000;
  const minutes = Math.floor(rest / 60_000);
  rest -= minutes * 60_000;
  const seconds = Math.floor(rest / 1000);
  return `${cachedDate}${pad(hours, 2)}:${pad(minutes, 2)}:${pad(seconds, 2)}.${pad(rest - seconds * 1000, 3)}Z`;
}
