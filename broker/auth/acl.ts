import type { BridgedTopics } from "../../bridge/mappings.ts";
import type { Identity, Rule } from "../../storage/identities.ts";
import { filterCovers, filtersOverlap, topicMatches } from "../topic-filter.ts";

/** What one connected identity may do, decided in memory for every publish and subscription. */
export interface Acl {
  canPublish(topic: string): boolean;
  canSubscribe(filter: string): boolean;
}

/** Topics addressed to a device, which it may subscribe to. */
export const DEVICE_INBOX = "commands/%u/#";

/** A placeholder's value may not widen a filter or change its levels. */
function fillable(value: string): boolean {
  return (
    value.length > 0 &&
    !value.includes("+") &&
    !value.includes("#") &&
    !value.includes("/") &&
    !value.includes("\u0000")
  );
}

type Filled = { pattern: string } | { unsafe: true };

function fill(pattern: string, identityId: string, clientId: string): Filled {
  let unsafe = false;
  const filled = pattern.replace(/%[uc]/g, (placeholder) => {
    const value = placeholder === "%u" ? identityId : clientId;
    if (!fillable(value)) unsafe = true;
    return value;
  });
  return unsafe ? { unsafe: true } : { pattern: filled };
}

function applies(rule: Rule, action: "publish" | "subscribe"): boolean {
  return rule.action === action || rule.action === "all";
}

/**
 * The rules of Mosquitto's ACL file and EMQX's authorization, for one
 * identity: deny rules first, then what its role grants, then allow rules;
 * anything else is denied.
 *
 * - `device`: publishes on the bridged topics whose device is its id (the
 *   second level, or a mapping's device),
 *   and nowhere else unless a rule allows it; whatever a rule says, it never
 *   publishes a bridged topic of another device, so a stored row's device_id
 *   is always the identity that sent it. Subscribes to `commands/<id>/#`.
 * - `gateway`: publishes for the devices behind it, wherever its allow rules
 *   say, bridged topics of any device included; subscribes to
 *   `commands/<id>/#`.
 * - `reader`: subscribes within the bridged filters; publishes nothing.
 * - `admin`: everything.
 *
 * A deny rule whose placeholder cannot be filled safely denies everything it
 * could stand for; such an allow rule allows nothing.
 */
export function compileAcl(
  identity: Pick<Identity, "id" | "role" | "rules">,
  clientId: string,
  topics: BridgedTopics,
): Acl {
  const compiled = identity.rules.map((rule) => ({
    rule,
    filled: fill(rule.pattern, identity.id, clientId),
  }));
  const rules = (permission: Rule["permission"], action: "publish" | "subscribe") =>
    compiled.filter(({ rule }) => rule.permission === permission && applies(rule, action));
  const denyPublish = rules("deny", "publish");
  const allowPublish = rules("allow", "publish");
  const denySubscribe = rules("deny", "subscribe");
  const allowSubscribe = rules("allow", "subscribe");
  const inbox = DEVICE_INBOX.replace("%u", identity.id);

  return {
    canPublish(topic) {
      if (
        denyPublish.some(({ filled }) => "unsafe" in filled || topicMatches(filled.pattern, topic))
      )
        return false;
      if (identity.role === "admin") return true;
      if (identity.role === "device" && topics.bridged(topic)) {
        return topics.deviceOf(topic) === identity.id;
      }
      return allowPublish.some(
        ({ filled }) => "pattern" in filled && topicMatches(filled.pattern, topic),
      );
    },
    canSubscribe(filter) {
      if (
        denySubscribe.some(
          ({ filled }) => "unsafe" in filled || filtersOverlap(filled.pattern, filter),
        )
      )
        return false;
      if (identity.role === "admin") return true;
      if (identity.role === "reader" && topics.filters.some((outer) => filterCovers(outer, filter)))
        return true;
      if (
        (identity.role === "device" || identity.role === "gateway") &&
        filterCovers(inbox, filter)
      )
        return true;
      return allowSubscribe.some(
        ({ filled }) => "pattern" in filled && filterCovers(filled.pattern, filter),
      );
    },
  };
}
