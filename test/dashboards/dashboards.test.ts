import fs from "node:fs/promises";
import path from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { startTestService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { openWriter, row } from "../helpers/writer.ts";

const DASHBOARDS = "dashboards/grafana";
const db = await createTestDatabase("dashboards");
const pool = new pg.Pool({ connectionString: db.url });
afterAll(() => pool.end());

interface Target {
  refId: string;
  datasource: { uid: string };
  rawSql?: string;
  expr?: string;
}
interface Panel {
  title: string;
  datasource: { uid: string };
  targets: Target[];
}
interface Dashboard {
  title: string;
  panels: Panel[];
  templating: { list: { name: string; query: string; datasource: { uid: string } }[] };
}

async function dashboards(): Promise<Dashboard[]> {
  const files = (await fs.readdir(DASHBOARDS)).filter((file) => file.endsWith(".json"));
  return Promise.all(
    files.map(
      async (file) =>
        JSON.parse(await fs.readFile(path.join(DASHBOARDS, file), "utf8")) as Dashboard,
    ),
  );
}

function seconds(interval: string): number {
  const match = /^(\d+)(s|m|h|d)$/.exec(interval);
  if (!match) throw new Error(`unknown interval ${interval}`);
  return Number(match[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[match[2] as "s" | "m" | "h" | "d"];
}

/** Expands the Grafana PostgreSQL macros and variables the way Grafana does before it sends a query. */
function expand(sql: string, from: Date, to: Date, variables: Record<string, string>): string {
  const range = `'${from.toISOString()}' AND '${to.toISOString()}'`;
  return sql
    .replace(/\$__timeFilter\(([^)]+)\)/g, (_, column) => `${column} BETWEEN ${range}`)
    .replace(/\$__timeGroupAlias\(([^,]+),\s*'([^']+)'\)/g, (_, column, interval) => {
      const step = seconds(interval);
      return `floor(extract(epoch from ${column})/${step})*${step} AS "time"`;
    })
    .replace(/\$__timeGroup\(([^,]+),\s*'([^']+)'\)/g, (_, column, interval) => {
      const step = seconds(interval);
      return `floor(extract(epoch from ${column})/${step})*${step}`;
    })
    .replace(/\$__timeFrom\(\)/g, `'${from.toISOString()}'`)
    .replace(/\$__timeTo\(\)/g, `'${to.toISOString()}'`)
    .replace(/\$\{?(\w+)\}?/g, (whole, name) => variables[name] ?? whole);
}

describe("the Grafana dashboards", () => {
  it("only use the provisioned data sources", async () => {
    const provisioning = YAML.parse(
      await fs.readFile("dashboards/provisioning/datasources/telemetry-bridge.yml", "utf8"),
    ) as { datasources: { uid: string }[] };
    const uids = new Set(provisioning.datasources.map((source) => source.uid));
    for (const dashboard of await dashboards()) {
      for (const panel of dashboard.panels) {
        expect(uids, panel.title).toContain(panel.datasource.uid);
        for (const target of panel.targets)
          expect(uids, panel.title).toContain(target.datasource.uid);
      }
    }
  });

  it("run every SQL panel and variable against real PostgreSQL", async () => {
    const { writer, close } = openWriter(db.url);
    const now = Date.now();
    const rows = Array.from({ length: 90 }, (_, i) => row(`dash-${i % 3}`, i, now - i * 20_000));
    const odd = row("dash-odd", 1, now - 5000);
    odd.payload = Buffer.from(
      JSON.stringify({ event_id: odd.eventId, ts: now, temperature: "21.5 C", battery: null }),
    );
    // A device in its own shape (a mapped topic): its fields are nested and named otherwise.
    const nested = row("dash-tasmota", 1, now - 3000);
    nested.payload = Buffer.from(
      JSON.stringify({ Time: "2026-03-01T12:00:00", ENERGY: { Power: 45, Voltage: 230 }, seq: 9 }),
    );
    await Promise.all([...rows, odd, nested].map((r) => writer.write(r)));
    await writer.ingest({
      topic: "telemetry/dash-0/env",
      payload: Buffer.from("{"),
      clientId: "dash-0",
      receivedAtMs: now,
    });
    await close();

    const from = new Date(now - 3_600_000);
    const to = new Date(now + 60_000);
    for (const dashboard of await dashboards()) {
      const variables: Record<string, string> = {};
      for (const variable of dashboard.templating.list) {
        const result = await pool.query<{ device_id: string }>(
          expand(variable.query, from, to, {}),
        );
        expect(result.rows.map((r) => r.device_id)).toEqual([
          "dash-0",
          "dash-1",
          "dash-2",
          "dash-odd",
          "dash-tasmota",
        ]);
        variables[variable.name] = result.rows[0]?.device_id ?? "";
      }
      for (const panel of dashboard.panels) {
        for (const target of panel.targets.filter((t) => t.rawSql)) {
          const sql = expand(target.rawSql as string, from, to, variables);
          const result = await pool.query(sql).catch((error: Error) => {
            throw new Error(`panel "${panel.title}" (${target.refId}): ${error.message}\n${sql}`);
          });
          expect(result.rows.length, `panel "${panel.title}" returned no rows`).toBeGreaterThan(0);
        }
      }
      const device = dashboard.panels.find((panel) => panel.title === "Device $device");
      const fields = async (id: string) => {
        const sql = expand(device?.targets[0]?.rawSql as string, from, to, { device: id });
        const { rows: points } = await pool.query<{ metric: string }>(sql);
        return [...new Set(points.map((point) => point.metric))].sort();
      };
      expect(await fields("dash-tasmota")).toEqual(["ENERGY.Power", "ENERGY.Voltage"]);
      expect(await fields("dash-0")).toEqual(["temperature"]);
      expect(await fields("dash-odd")).toEqual([]);
    }
  });

  it("only chart Prometheus metrics the service exports", async () => {
    const service = await startTestService(db.url);
    try {
      const text = await (await fetch(`http://127.0.0.1:${service.httpPort}/metrics`)).text();
      const exported = new Set([...text.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]));
      for (const dashboard of await dashboards()) {
        for (const panel of dashboard.panels) {
          for (const target of panel.targets.filter((t) => t.expr)) {
            for (const [name] of (target.expr as string).matchAll(/telemetry_bridge_\w+/g)) {
              expect(exported, `${panel.title}: ${name}`).toContain(
                name.replace(/_(bucket|sum|count)$/, ""),
              );
            }
          }
        }
      }
    } finally {
      await service.close();
    }
  });
});
