/**
 * MQTT topic filters (`+` one level, `#` this level and all below), as in
 * MQTT 3.1.1 §4.7. Topics starting with `$` only match filters that name
 * them, never a leading wildcard.
 */

export function validateFilter(filter: string): string | undefined {
  if (filter.length === 0) return "is empty";
  const levels = filter.split("/");
  for (const [i, level] of levels.entries()) {
    if (level.includes("#") && (level !== "#" || i !== levels.length - 1)) {
      return "has # other than as the whole last level";
    }
    if (level.includes("+") && level !== "+") return "has + other than as a whole level";
  }
  return undefined;
}

export function topicMatches(filter: string, topic: string): boolean {
  return compile(filter)(topic);
}

function levelsMatch(f: readonly string[], topic: string): boolean {
  if (topic.startsWith("$") && (f[0] === "+" || f[0] === "#")) return false;
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === "#") return true;
    if (i >= t.length) return false;
    if (level !== "+" && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/** One filter as a test; without `+`, a comparison of strings instead of levels. */
function compile(filter: string): (topic: string) => boolean {
  if (filter === "#") return (topic) => !topic.startsWith("$");
  if (!filter.includes("+")) {
    if (!filter.endsWith("/#")) return (topic) => topic === filter;
    // "a/#" matches "a" itself and everything below it.
    const parent = filter.slice(0, -2);
    const prefix = filter.slice(0, -1);
    return (topic) => topic.startsWith(prefix) || topic === parent;
  }
  const levels = filter.split("/");
  return (topic) => levelsMatch(levels, topic);
}

/** A matcher for a list of filters, compiled once: it runs for every message. */
export function topicMatcher(filters: readonly string[]): (topic: string) => boolean {
  const tests = filters.map(compile);
  return (topic) => tests.some((test) => test(topic));
}

/** True when every topic `inner` matches is also matched by `outer`. */
export function filterCovers(outer: string, inner: string): boolean {
  const o = outer.split("/");
  const i = inner.split("/");
  if (inner.startsWith("$") && (o[0] === "+" || o[0] === "#")) return false;
  for (let n = 0; n < o.length; n++) {
    if (o[n] === "#") return true;
    if (n >= i.length || i[n] === "#") return false;
    if (o[n] !== "+" && (i[n] === "+" || o[n] !== i[n])) return false;
  }
  return o.length === i.length;
}

/**
 * True when some topic matches both filters. `$` topics are not set apart
 * here: a deny rule on `#` covers them too.
 */
export function filtersOverlap(a: string, b: string): boolean {
  const x = a.split("/");
  const y = b.split("/");
  for (let n = 0; ; n++) {
    if (x[n] === "#" || y[n] === "#") return true;
    if (n >= x.length || n >= y.length) return x.length === y.length;
    if (x[n] !== "+" && y[n] !== "+" && x[n] !== y[n]) return false;
  }
}
