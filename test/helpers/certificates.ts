import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { runCommand } from "./run-command.ts";

export interface KeyPair {
  /** PEM certificate. */
  certFile: string;
  /** PEM private key, unencrypted. */
  keyFile: string;
}

/** A self-signed CA, `<name>.pem` and `<name>-key.pem` in `dir`. */
export async function createCertificateAuthority(dir: string, name: string): Promise<KeyPair> {
  const pair = files(dir, name);
  await openssl([
    ...["req", "-x509", ...newKey(pair.keyFile), "-days", "2"],
    ...["-subj", `/CN=${name}`, "-out", pair.certFile],
    ...["-addext", "basicConstraints=critical,CA:TRUE"],
    ...["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
  ]);
  return pair;
}

/**
 * A certificate with subject CN `cn` signed by `ca`, in `dir` as
 * `<name>.pem` and `<name>-key.pem`: a server's, valid for 127.0.0.1 and
 * localhost, or a client's.
 */
export async function issueCertificate(
  ca: KeyPair,
  dir: string,
  name: string,
  cn: string,
  role: "server" | "client",
): Promise<KeyPair> {
  const pair = files(dir, name);
  const request = path.join(dir, `${name}.csr`);
  const extensions = path.join(dir, `${name}.ext`);
  await openssl(["req", "-new", ...newKey(pair.keyFile), "-subj", `/CN=${cn}`, "-out", request]);
  await fs.writeFile(
    extensions,
    role === "server"
      ? "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
      : "extendedKeyUsage=clientAuth\n",
  );
  await openssl([
    ...["x509", "-req", "-in", request, "-days", "2", "-out", pair.certFile],
    ...[
      "-CA",
      ca.certFile,
      "-CAkey",
      ca.keyFile,
      "-set_serial",
      `0x${randomBytes(8).toString("hex")}`,
    ],
    ...["-extfile", extensions],
  ]);
  return pair;
}

function files(dir: string, name: string): KeyPair {
  return { certFile: path.join(dir, `${name}.pem`), keyFile: path.join(dir, `${name}-key.pem`) };
}

function newKey(keyFile: string): string[] {
  return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", keyFile];
}

async function openssl(args: string[]): Promise<void> {
  const result = await runCommand("openssl", args);
  if (result.code !== 0) {
    throw new Error(`openssl ${args.join(" ")} failed (${result.code}):\n${result.stderr}`);
  }
}
