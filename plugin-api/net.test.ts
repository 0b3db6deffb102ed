import { describe, expect, it } from 'vitest';
import { cidrSet, clientAddress, normalizeAddress, type AddressedRequest } from './net.js';

describe('cidrSet', () => {
  it('matches v4, v6, v4-mapped and bare addresses', () => {
    const s = cidrSet(['10.0.0.0/8', '2001:db8::/32', '192.0.2.7', '::ffff:172.16.0.0/108']);
    expect(s.has('10.255.0.1')).toBe(true);
    expect(s.has('::ffff:10.0.0.1')).toBe(true);
    expect(s.has('2001:db8:1::1')).toBe(true);
    expect(s.has('192.0.2.7')).toBe(true);
    expect(s.has('192.0.2.8')).toBe(false);
    expect(s.has('172.16.9.9')).toBe(true);
    expect(s.has('11.0.0.1')).toBe(false);
    expect(s.has('not an address')).toBe(false);
    expect(cidrSet([]).has('10.0.0.1')).toBe(false);
  });

  it('refuses a malformed entry naming where it is', () => {
    expect(() => cidrSet(['10.0.0.0/8', 'x/3'], '$.p.list')).toThrow(/\$\.p\.list\[1\]: expected an IPv4\/IPv6 address or CIDR, found "x\/3"/);
  });
});

describe('clientAddress', () => {
  const r = (remoteAddress: string, xff?: string | string[]): AddressedRequest => ({ remoteAddress, headers: xff === undefined ? {} : { 'x-forwarded-for': xff } });

  it('is the peer when no proxy is trusted, whatever the header says', () => {
    expect(clientAddress(cidrSet([]))(r('192.0.2.1', '6.6.6.6'))).toBe('192.0.2.1');
  });

  it('walks X-Forwarded-For from the right past trusted hops only', () => {
    const of = clientAddress(cidrSet(['10.0.0.0/8']));
    expect(of(r('10.0.0.1', '1.1.1.1, 81.2.69.142'))).toBe('81.2.69.142');
    expect(of(r('10.0.0.1', '1.1.1.1, 81.2.69.142, 10.2.2.2'))).toBe('81.2.69.142');
    expect(of(r('10.0.0.1', ['1.1.1.1', '81.2.69.142,10.2.2.2']))).toBe('81.2.69.142');
    expect(of(r('10.0.0.1', '10.3.3.3, 10.2.2.2'))).toBe('10.3.3.3');
    expect(of(r('10.0.0.1', 'junk, 10.2.2.2'))).toBe('10.2.2.2');
    expect(of(r('10.0.0.1'))).toBe('10.0.0.1');
    expect(of(r('192.0.2.1', '81.2.69.142'))).toBe('192.0.2.1');
    expect(of(r('10.0.0.1', '::ffff:81.2.69.142'))).toBe('81.2.69.142');
  });

  it('normalizes addresses', () => {
    expect(normalizeAddress('::ffff:1.2.3.4')).toBe('1.2.3.4');
    expect(normalizeAddress('2001:0db8:0000::0001')).toBe('2001:db8::1');
    expect(normalizeAddress('1.2.3')).toBe(null);
  });
});
