/**
 * Address helpers shared by the guard plugins: CIDR lists and the client
 * address behind trusted proxies. Plugins cannot import each other, so the
 * one place they share code is here.
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { BextError } from './errors.js';
import type { Headers } from './hooks.js';

type Addr = ipaddr.IPv4 | ipaddr.IPv6;

/** A compiled list of IPv4/IPv6 networks. */
export interface CidrSet {
  /** Whether the address (v4, v6 or v4-mapped v6) lies in one of the networks; false for a malformed address. */
  has(address: string): boolean;
  readonly size: number;
}

/**
 * Parses an address, folding `::ffff:a.b.c.d` into IPv4; null when malformed.
 * Only the canonical forms a socket reports are accepted: ipaddr.js alone
 * would also read `1.2.3` or `0x7f.1` as IPv4, which a header must not smuggle in.
 */
export function parseAddress(address: string): Addr | null {
  if (isIP(address) === 0) return null;
  try {
    return ipaddr.process(address);
  } catch {
    // A malformed address is a normal input (headers come from clients); callers decide what it means.
    return null;
  }
}

/** The canonical text of an address (`::ffff:1.2.3.4` → `1.2.3.4`, IPv6 compressed), or null when malformed. */
export function normalizeAddress(address: string): string | null {
  return parseAddress(address)?.toString() ?? null;
}

const MEMO_MAX = 4096;

/**
 * Compiles CIDR strings (`10.0.0.0/8`, `2001:db8::/32`, or a bare address)
 * once. Lookups are memoised per address text, so a busy client costs one
 * Map lookup.
 *
 * @example
 * ```ts
 * const proxies = cidrSet(['10.0.0.0/8', '::1'], '$.plugins.ipfilter.trustedProxies');
 * proxies.has('10.1.2.3'); // true
 * ```
 * @param where JSON path named in the error when an entry is malformed.
 */
export function cidrSet(list: readonly string[], where = 'cidr list'): CidrSet {
  const v4: [ipaddr.IPv4, number][] = [];
  const v6: [ipaddr.IPv6, number][] = [];
  list.forEach((entry, i) => {
    let range: [Addr, number];
    try {
      range = entry.includes('/') ? ipaddr.parseCIDR(entry) : ((a) => [a, a.kind() === 'ipv4' ? 32 : 128] as [Addr, number])(ipaddr.parse(entry));
    } catch (e) {
      throw new BextError('BEXT_ERR_CONFIG_INVALID', `${where}[${i}]: expected an IPv4/IPv6 address or CIDR, found ${JSON.stringify(entry)}`, { cause: e });
    }
    const [addr, bits] = range;
    // `::ffff:10.0.0.0/104` is written for dual-stack sockets; fold it into the IPv4 network it means.
    if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
      v4.push([(addr as ipaddr.IPv6).toIPv4Address(), bits - 96]);
    } else if (addr.kind() === 'ipv4') v4.push([addr as ipaddr.IPv4, bits]);
    else v6.push([addr as ipaddr.IPv6, bits]);
  });
  const memo = new Map<string, boolean>();
  const size = list.length;
  return {
    size,
    has(address) {
      if (size === 0) return false;
      let hit = memo.get(address);
      if (hit !== undefined) return hit;
      const a = parseAddress(address);
      hit = false;
      if (a) {
        if (a.kind() === 'ipv4') {
          for (const [n, b] of v4) if ((a as ipaddr.IPv4).match(n, b)) { hit = true; break; }
        } else {
          for (const [n, b] of v6) if ((a as ipaddr.IPv6).match(n, b)) { hit = true; break; }
        }
      }
      // Rotating addresses (IPv6 gives a client billions) must not grow the memo without bound.
      if (memo.size >= MEMO_MAX) memo.clear();
      memo.set(address, hit);
      return hit;
    },
  };
}

/** What a client-address resolver reads from a request. */
export interface AddressedRequest {
  remoteAddress: string;
  headers: Headers;
}

/**
 * Builds the function that names the client of a request: the socket peer,
 * or — only when the peer is a trusted proxy — the right-most address in
 * `X-Forwarded-For` that is not itself a trusted proxy. Everything left of
 * that is client-supplied and never believed.
 *
 * @example
 * ```ts
 * const clientOf = clientAddress(cidrSet(['10.0.0.0/8']));
 * clientOf({ remoteAddress: '10.0.0.5', headers: { 'x-forwarded-for': '6.6.6.6, 81.2.69.142' } }); // '81.2.69.142'
 * ```
 */
export function clientAddress(trustedProxies: CidrSet): (req: AddressedRequest) => string {
  if (trustedProxies.size === 0) return (req) => req.remoteAddress;
  return (req) => {
    const peer = req.remoteAddress;
    if (!trustedProxies.has(peer)) return peer;
    const xff = req.headers['x-forwarded-for'];
    if (xff === undefined) return peer;
    const hops = (typeof xff === 'string' ? xff : xff.join(',')).split(',');
    let nearest = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]!.trim();
      // A malformed hop means the chain cannot be followed further; the last address we could vouch for is the answer.
      const norm = normalizeAddress(hop);
      if (norm === null) return nearest;
      if (!trustedProxies.has(norm)) return norm;
      nearest = norm;
    }
    return nearest;
  };
}
