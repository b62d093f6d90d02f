import fs from "node:fs/promises";

export interface Instruction {
  /** Upper case, as `FROM`, `COPY`, `RUN`. */
  keyword: string;
  args: string;
}

export interface Stage {
  /** The name given with `AS`, if any. */
  name: string | undefined;
  instructions: Instruction[];
}

/** The stages of a Dockerfile, each with its instructions (continued lines joined, comments left out). */
export async function readDockerfile(file = "Dockerfile"): Promise<Stage[]> {
  const text = (await fs.readFile(file, "utf8")).replace(/\\\n/g, " ");
  const stages: Stage[] = [];
  for (const line of text.split("\n")) {
    const match = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!match || line.trim().startsWith("#")) continue;
    const keyword = (match[1] as string).toUpperCase();
    const args = (match[2] as string).replace(/\s+/g, " ").trim();
    if (keyword === "FROM")
      stages.push({ name: /\sAS\s+(\S+)$/i.exec(args)?.[1], instructions: [] });
    stages.at(-1)?.instructions.push({ keyword, args });
  }
  return stages;
}

/** The arguments of each of the stage's instructions with this keyword. */
export function argsOf(stage: Stage, keyword: string): string[] {
  return stage.instructions.filter((line) => line.keyword === keyword).map((line) => line.args);
}

/** The command of an exec-form `CMD` or `HEALTHCHECK … CMD`, options before it left out. */
export function execForm(args: string): string[] {
  const json = args.replace(/^(--\S+\s+)*(CMD\s+)?/, "");
  return JSON.parse(json) as string[];
}

/** The final stage's `HEALTHCHECK` command. */
export async function healthcheck(): Promise<string[]> {
  const final = (await readDockerfile()).at(-1) as Stage;
  return execForm(argsOf(final, "HEALTHCHECK")[0] ?? "");
}
