import net from "node:net";

/**
 * The load balancers allowed to name a client's address (TRUSTED_PROXIES):
 * IPv4 and IPv6 addresses and CIDR ranges. An IPv4 entry also matches the
 * IPv4-mapped IPv6 form a dual-stack socket reports (`::ffff:10.0.0.5`).
 */
export class TrustedProxies {
  private readonly list = new net.BlockList();

  /**
   * Throws a TypeError naming the first entry that is neither an address
   * nor a CIDR range, or that would trust far more than a proxy: a /0, or
   * IPv4 written in its IPv6-mapped form (whose prefix would count the 96
   * bits before it).
   */
  constructor(readonly entries: readonly string[]) {
    for (const entry of entries) {
      const [address = "", prefix, ...rest] = entry.split("/");
      const family = net.isIP(address);
      const bits = family === 4 ? 32 : 128;
      const length = prefix === undefined ? bits : Number(prefix);
      if (
        family === 0 ||
        rest.length > 0 ||
        (prefix !== undefined && !/^\d{1,3}$/.test(prefix)) ||
        length > bits
      ) {
        throw new TypeError(`"${entry}" is not an IP address or a CIDR range`);
      }
      if (length === 0) throw new TypeError(`"${entry}" would trust every address`);
      if (family === 6 && address.includes(".")) {
        throw new TypeError(`"${entry}" is IPv4 in IPv6 form: write it as IPv4`);
      }
      this.list.addSubnet(address, length, family === 4 ? "ipv4" : "ipv6");
    }
  }

  get empty(): boolean {
    return this.entries.length === 0;
  }

  /** True when `address`, a peer's as Node reports it, is one of the entries. */
  has(address: string | undefined): boolean {
    const family = net.isIP(address ?? "");
    return family !== 0 && this.list.check(address as string, family === 4 ? "ipv4" : "ipv6");
  }

  /**
   * The client behind `peer` by an X-Forwarded-For header: read from the
   * right, each address a trusted hop wrote is believed, up to the first
   * that is not trusted itself. `peer` when it is not trusted; an entry
   * that is not an IP address ends the walk at the hop that wrote it.
   */
  forwardedClient(peer: string, forwardedFor: string | string[] | undefined): string {
    const hops = [forwardedFor ?? []]
      .flat()
      .join(",")
      .split(",")
      .map((hop) => hop.trim())
      .filter((hop) => hop !== "");
    let client = peer;
    for (let hop = hops.pop(); hop !== undefined && this.has(client); hop = hops.pop()) {
      if (net.isIP(hop) === 0) break;
      client = hop;
    }
    return client;
  }
}
