import type { TestProject } from "vitest/node";
import { assertReachable } from "../../bridge/database.ts";
import { startTestServer } from "./embedded-server.ts";

declare module "vitest" {
  export interface ProvidedContext {
    /** A server the tests may create databases on. */
    databaseUrl: string;
  }
}

/** Tests run against DATABASE_URL when set, otherwise against one embedded server. */
export default async function setup(project: TestProject) {
  const external = process.env.DATABASE_URL;
  if (external) {
    await assertReachable(external);
    project.provide("databaseUrl", external);
    return;
  }
  const server = await startTestServer();
  project.provide("databaseUrl", server.url);
  return () => server.destroy();
}
