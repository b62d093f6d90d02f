const MINUTE_MS = 60_000;
/** Zones change their offset on a quarter hour at the finest (Australia/Eucla: :45). */
const BUCKET_MS = 15 * MINUTE_MS;
const MAX_CACHED_BUCKETS = 10_000;

/** Whether `zone` is an IANA time zone this runtime knows, such as Europe/Berlin. */
export function isTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

const DAY_MS = 86_400_000;

/** For a zone, a function from an instant to the wall-clock time there, to the second, read as if UTC. */
export function wallClock(zone: string): (instantMs: number) => number {
  const format = new Intl.DateTimeFormat("en-US", {
    timeZone: zone,
    hourCycle: "h23",
    year: "numeric",
    month: "numeric",
    day: "numeric",
    hour: "numeric",
    minute: "numeric",
    second: "numeric",
  });
  return (instantMs) => {
    const parts: Record<string, number> = {};
    for (const { type, value } of format.formatToParts(instantMs)) parts[type] = Number(value);
    return Date.UTC(
      parts.year as number,
      (parts.month as number) - 1,
      parts.day,
      parts.hour,
      parts.minute,
      parts.second,
    );
  };
}

/**
 * For a zone, a function from a wall-clock time (its fields read as if UTC)
 * to the offset in minutes east of UTC in force then. A time that occurs
 * twice, when clocks go back, is read as the earlier instant; a time that
 * clocks skip is read with the offset before the change (02:30 becomes
 * 03:30), as java.time does. Offsets are cached per quarter hour of wall
 * clock, so a stream of readings costs an Intl call per quarter hour.
 */
export function zoneOffset(zone: string): (wallClockMs: number) => number {
  const wallClockAt = wallClock(zone);
  const offsetAt = (instantMs: number): number =>
    Math.round((wallClockAt(instantMs) - (instantMs - (instantMs % 1000))) / MINUTE_MS);
  const resolve = (wallMs: number): number => {
    // Zones change offset at most once a day: the offsets a day before and after bound it.
    const before = offsetAt(wallMs - DAY_MS);
    const after = offsetAt(wallMs + DAY_MS);
    const fits = (offset: number) => offsetAt(wallMs - offset * MINUTE_MS) === offset;
    const candidates = [before, after].filter(fits);
    return candidates.length === 0 ? before : Math.max(...candidates);
  };
  const cache = new Map<number, number>();
  return (wallClockMs) => {
    const bucket = Math.floor(wallClockMs / BUCKET_MS);
    let offset = cache.get(bucket);
    if (offset === undefined) {
      offset = resolve(bucket * BUCKET_MS);
      if (cache.size >= MAX_CACHED_BUCKETS) cache.clear();
      cache.set(bucket, offset);
    }
    return offset;
  };
}
