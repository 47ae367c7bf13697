/**
 * The address of a Xen host reached over SSH, written as libvirt writes it:
 *
 *   xen+ssh://[user@]host[:port][/]
 *
 * (libvirt's remote URIs, https://libvirt.org/uri.html: "driver+transport://user@host:port/").
 * The user defaults to root, since xl needs it; the port to 22. The host is a DNS name, an
 * IPv4 address or a bracketed IPv6 address. Every part is checked strictly, because each one
 * ends up on the ssh command line: a host or user that starts with '-' would be read by ssh as
 * an option.
 */
import { PolyvisorError } from '../../errors.js';

export interface XenHostAddress {
  user: string;
  /** as ssh takes it: a name, an IPv4 address, or an IPv6 address without brackets */
  host: string;
  port: number;
}

const SCHEME = 'xen+ssh://';
/** POSIX portable user names (IEEE Std 1003.1, 3.437), as useradd accepts them */
const USER = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/;
/** RFC 1123 host names: labels of letters, digits and inner hyphens, dot-separated */
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
const IPV6 = /^[0-9A-Fa-f:.]{2,45}$/;

function bad(uri: string, why: string): PolyvisorError {
  return new PolyvisorError('ERR_USAGE', `host URI ${JSON.stringify(uri)}: ${why} (expected xen+ssh://[user@]host[:port])`);
}

/** Parses a xen+ssh:// URI; ERR_USAGE naming the part that is wrong. */
export function parseXenUri(uri: string): XenHostAddress {
  if (typeof uri !== 'string' || uri.length > 1024) throw bad(String(uri).slice(0, 64), 'too long');
  if (!uri.toLowerCase().startsWith(SCHEME)) throw bad(uri, 'the scheme must be xen+ssh');
  let rest = uri.slice(SCHEME.length);
  if (/[?#]/.test(rest)) throw bad(uri, 'a query or fragment is not accepted; give the key file and other settings as options');
  if (rest.endsWith('/')) rest = rest.slice(0, -1);
  if (rest.includes('/')) throw bad(uri, 'a path is not accepted');

  let user = 'root';
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    user = rest.slice(0, at);
    rest = rest.slice(at + 1);
    if (!USER.test(user)) throw bad(uri, `user ${JSON.stringify(user)} is not a valid user name`);
  }

  let host: string;
  let portText: string | undefined;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw bad(uri, 'an IPv6 address lacks its closing bracket');
    host = rest.slice(1, close);
    if (!IPV6.test(host) || !host.includes(':')) throw bad(uri, `${JSON.stringify(host)} is not an IPv6 address`);
    const after = rest.slice(close + 1);
    if (after !== '') {
      if (!after.startsWith(':')) throw bad(uri, `unexpected ${JSON.stringify(after)} after the address`);
      portText = after.slice(1);
    }
  } else {
    const colon = rest.indexOf(':');
    host = colon < 0 ? rest : rest.slice(0, colon);
    if (colon >= 0) portText = rest.slice(colon + 1);
    if (host === '') throw bad(uri, 'no host');
    if (!HOST_NAME.test(host)) throw bad(uri, `${JSON.stringify(host)} is not a host name or IPv4 address`);
  }

  let port = 22;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText)) throw bad(uri, `port ${JSON.stringify(portText)} is not a number`);
    port = Number(portText);
    if (port < 1 || port > 65535) throw bad(uri, `port ${port} is outside 1..65535`);
  }
  return { user, host, port };
}

/** The canonical URI of an address, as messages quote it: xen+ssh://root@10.0.0.5:22 */
export function formatXenUri(a: XenHostAddress): string {
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  return `${SCHEME}${a.user}@${host}:${a.port}`;
}
