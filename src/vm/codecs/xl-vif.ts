/**
 * xl's network specification mini-language (xl-network-configuration(5)), the string in each
 * entry of `vif = [ ... ]`: comma-separated `key=value` settings and flags, all optional
 * ('' is a NIC with every default). The same `key=value` shape serves `vfb = [ ... ]`
 * (xl.cfg(5) "vfb") and `vtpm = [ ... ]`, so the splitter is shared.
 */

export interface XlVifSpec {
  mac?: string;
  bridge?: string;
  /** the emulated device model (HVM, type=ioemu only): rtl8139 (xl's default), e1000... */
  model?: string;
  /** ioemu (emulated + PV, the default) or vif (PV only); HVM only */
  type?: string;
  /** the hotplug script: vif-bridge (default), vif-route, vif-nat, vif-openvswitch */
  script?: string;
  /** every other setting, verbatim (ip=, vifname=, rate=, mtu=, vlan=, backend=...) */
  options: string[];
}

/** Splits "k=v, k2=v2, flag" into ordered [key, value|undefined] pairs; whitespace around items is ignored. */
export function splitKeyValues(spec: string): Array<[string, string | undefined]> {
  const out: Array<[string, string | undefined]> = [];
  for (const item of spec.split(',')) {
    const t = item.trim();
    if (t === '') continue;
    const eq = t.indexOf('=');
    if (eq < 0) out.push([t, undefined]);
    else out.push([t.slice(0, eq).trim(), t.slice(eq + 1).trim()]);
  }
  return out;
}

export function parseVifSpec(spec: string): XlVifSpec {
  const v: XlVifSpec = { options: [] };
  for (const [k, val] of splitKeyValues(spec)) {
    if (val === undefined) {
      if (k === 'trusted' || k === 'untrusted') v.options.push(k);
      else throw new Error(`unknown flag "${k}"`);
      continue;
    }
    switch (k) {
      case 'mac':
        v.mac = val;
        break;
      case 'bridge':
        v.bridge = val;
        break;
      case 'model':
        v.model = val;
        break;
      case 'type':
        v.type = val;
        break;
      case 'script':
        v.script = val;
        v.options.push(`${k}=${val}`);
        break;
      default:
        if (!/^[a-z][a-z0-9_-]*$/i.test(k)) throw new Error(`bad setting "${k}"`);
        v.options.push(`${k}=${val}`);
    }
  }
  return v;
}

export function formatVifSpec(v: { mac?: string; bridge?: string; model?: string; type?: string; options?: readonly string[] }): string {
  const parts: string[] = [];
  if (v.mac) parts.push(`mac=${v.mac}`);
  if (v.bridge) parts.push(`bridge=${v.bridge}`);
  if (v.type) parts.push(`type=${v.type}`);
  if (v.model) parts.push(`model=${v.model}`);
  parts.push(...(v.options ?? []));
  return parts.join(', ');
}
