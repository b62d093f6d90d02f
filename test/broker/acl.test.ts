import { describe, expect, it } from "vitest";
import { bridgedTopics } from "../../bridge/mappings.ts";
import { compileAcl } from "../../broker/auth/acl.ts";
import { filterCovers, filtersOverlap } from "../../broker/topic-filter.ts";
import type { Identity, Rule } from "../../storage/identities.ts";

const topics = bridgedTopics(["telemetry/#", "plant/+/sensors/#"]);

function acl(role: Identity["role"], rules: Rule[] = [], id = "dev-1", clientId = id) {
  return compileAcl({ id, role, rules }, clientId, topics);
}

describe("topic filters", () => {
  it("knows when one filter covers another", () => {
    const cases: [string, string, boolean][] = [
      ["telemetry/#", "telemetry/+/env", true],
      ["telemetry/#", "telemetry", true],
      ["telemetry/#", "#", false],
      ["telemetry/+", "telemetry/#", false],
      ["telemetry/+/env", "telemetry/a/env", true],
      ["telemetry/a/env", "telemetry/+/env", false],
      ["#", "$SYS/broker", false],
      ["+/broker", "$SYS/broker", false],
      ["$SYS/#", "$SYS/broker", true],
      ["a/b", "a/b/c", false],
    ];
    for (const [outer, inner, expected] of cases) {
      expect(filterCovers(outer, inner), `${outer} covers ${inner}`).toBe(expected);
    }
  });

  it("knows when two filters share a topic", () => {
    const cases: [string, string, boolean][] = [
      ["firmware/beta/#", "firmware/#", true],
      ["firmware/beta/#", "#", true],
      ["firmware/beta/#", "firmware/stable/#", false],
      ["a/+/c", "a/b/+", true],
      ["a/b", "a/b/c", false],
      ["a/#", "a", true],
      ["#", "$SYS/#", true],
    ];
    for (const [a, b, expected] of cases) {
      expect(filtersOverlap(a, b), `${a} overlaps ${b}`).toBe(expected);
      expect(filtersOverlap(b, a), `${b} overlaps ${a}`).toBe(expected);
    }
  });
});

describe("compileAcl", () => {
  it("lets a device publish only its own telemetry and read only its commands", () => {
    const device = acl("device");
    expect(device.canPublish("telemetry/dev-1/env")).toBe(true);
    expect(device.canPublish("plant/dev-1/sensors/t")).toBe(true);
    expect(device.canPublish("telemetry/dev-2/env")).toBe(false);
    expect(device.canPublish("commands/dev-1/x")).toBe(false);
    expect(device.canSubscribe("commands/dev-1/#")).toBe(true);
    expect(device.canSubscribe("commands/dev-1/reboot")).toBe(true);
    expect(device.canSubscribe("commands/+/reboot")).toBe(false);
    expect(device.canSubscribe("telemetry/dev-1/#")).toBe(false);
  });

  it("never lets a rule give a device another device's telemetry", () => {
    const device = acl("device", [{ permission: "allow", action: "all", pattern: "#" }]);
    expect(device.canPublish("telemetry/dev-2/env")).toBe(false);
    expect(device.canPublish("status/anything")).toBe(true);
  });

  it("lets a reader subscribe within the bridged filters and publish nothing", () => {
    const reader = acl("reader", [], "reader-1");
    expect(reader.canSubscribe("telemetry/#")).toBe(true);
    expect(reader.canSubscribe("plant/+/sensors/#")).toBe(true);
    expect(reader.canSubscribe("plant/#")).toBe(false);
    expect(reader.canSubscribe("#")).toBe(false);
    expect(reader.canPublish("telemetry/reader-1/env")).toBe(false);
  });

  it("checks deny rules before the role and allow rules", () => {
    const admin = acl("admin", [
      { permission: "deny", action: "subscribe", pattern: "telemetry/secret/#" },
      { permission: "deny", action: "publish", pattern: "commands/#" },
    ]);
    expect(admin.canSubscribe("telemetry/public/#")).toBe(true);
    expect(admin.canSubscribe("telemetry/#")).toBe(false);
    expect(admin.canPublish("commands/dev-2/reboot")).toBe(false);
    expect(admin.canPublish("telemetry/dev-2/env")).toBe(true);
  });

  it("lets a gateway publish for other devices only where its rules allow", () => {
    const rules: Rule[] = [
      { permission: "allow", action: "publish", pattern: "plant/+/sensors/#" },
    ];
    const gateway = acl("gateway", rules, "gw-1");
    expect(gateway.canPublish("plant/press-3/sensors/t")).toBe(true);
    expect(gateway.canPublish("telemetry/dev-2/env")).toBe(false);
    expect(gateway.canPublish("telemetry/gw-1/env")).toBe(false);
    expect(gateway.canSubscribe("commands/gw-1/#")).toBe(true);
    expect(gateway.canSubscribe("telemetry/#")).toBe(false);
    expect(acl("gateway", [], "gw-1").canPublish("plant/press-3/sensors/t")).toBe(false);
    // A device's rule never reaches another device's bridged topic.
    expect(acl("device", rules).canPublish("plant/press-3/sensors/t")).toBe(false);
  });

  it("fills %u and %c, and never with a value that would widen a filter", () => {
    const rules: Rule[] = [
      { permission: "allow", action: "publish", pattern: "status/%u/%c" },
      { permission: "allow", action: "subscribe", pattern: "inbox/%c/#" },
    ];
    const reader = acl("reader", rules, "reader-1", "reader-1:tap");
    expect(reader.canPublish("status/reader-1/reader-1:tap")).toBe(true);
    expect(reader.canSubscribe("inbox/reader-1:tap/#")).toBe(true);
    for (const clientId of ["#", "+", "a/b", "x\u0000y"]) {
      const wild = acl("reader", rules, "reader-1", clientId);
      expect(wild.canSubscribe(`inbox/${clientId}/#`)).toBe(false);
      expect(wild.canSubscribe("inbox/#")).toBe(false);
      expect(wild.canPublish("status/reader-1/x")).toBe(false);
    }
    // A deny rule that cannot be filled denies everything it might have meant.
    const denied = acl(
      "admin",
      [{ permission: "deny", action: "subscribe", pattern: "%c/#" }],
      "a",
      "#",
    );
    expect(denied.canSubscribe("anything/#")).toBe(false);
    expect(denied.canPublish("anything")).toBe(true);
  });
});
