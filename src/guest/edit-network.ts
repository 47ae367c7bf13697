/**
 * Network configuration that follows the NIC by its MAC address.
 *
 * The guest's configuration names interfaces (ifupdown's "iface eth0", a networkd [Match]
 * Name=, a NetworkManager interface-name=, netplan's ethernets keys, RHEL's ifcfg-DEVICE).
 * On another hypervisor the same NIC gets another name (eth0 on Xen, ens3 under KVM's
 * predictable naming, ens192 on VMware), and the configuration no longer applies. The MAC
 * travels with the VM (the descriptor carries it over), so a systemd .link file per
 * configured interface, matching the MAC and giving the name the configuration uses
 * (systemd.link(5): the first matching file in lexical order applies; 99-default.link is the
 * fallback), makes the name stable on every hypervisor. udev reads .link files in the
 * initramfs too (edit-initramfs.ts copies them there, as initramfs-tools' udev hook does).
 *
 * MACs come from the caller (the VM's NICs, in order) or from the guest's own
 * 70-persistent-net.rules; with neither, a single configured interface is matched by the
 * target's NIC drivers instead, which is unambiguous with one NIC.
 */
import { isPolyvisorError } from '../errors.js';
import type { GuestEditor } from './manifest.js';
import { readTextFile } from './open.js';
import type { Target } from './targets.js';

const MAX_CONFIG = 1 << 20;
const MAX_FILES = 256;
const LINK_DIR = '/etc/systemd/network';

export interface NicInfo {
  /** "52:54:00:12:34:56" */
  mac: string;
}

export interface NetworkResult {
  /** configured interface names found, and where */
  interfaces: { name: string; source: string; mac?: string }[];
  /** .link files written (or already right): file name -> content */
  links: Map<string, Buffer>;
  notes: string[];
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** a concrete interface name (no glob) */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
/**
 * Interfaces with no NIC of their own: the loopback, VLANs (eth0.100) and aliases (eth0:1),
 * bridges, bonds, tunnels and container links. They keep their names wherever the VM runs;
 * a .link matching their parent's MAC would rename the wrong device.
 */
const VIRTUAL = /^(lo|br|bond|team|vlan|virbr|docker|veth|tun|tap|wg|vxlan|dummy|ppp|sit|ip6tnl|gre)(\d|$|-)|[.:]/;

function physical(name: string): boolean {
  return IFNAME.test(name) && !VIRTUAL.test(name);
}

export function normalizeMac(mac: string): string | null {
  const m = mac.trim().toLowerCase().replace(/-/g, ':');
  return MAC.test(m) ? m : null;
}

async function optText(editor: GuestEditor, path: string): Promise<string | null> {
  try {
    return await readTextFile(editor.guest, path, MAX_CONFIG);
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND') || isPolyvisorError(e, 'ERR_UNSUPPORTED')) return null;
    throw e;
  }
}

async function listDir(editor: GuestEditor, dir: string): Promise<string[]> {
  try {
    return (await editor.guest.readdir(dir))
      .filter((e) => e.type === 'file' || e.type === 'symlink')
      .map((e) => e.name)
      .filter((n) => n !== '.' && n !== '..')
      .sort()
      .slice(0, MAX_FILES);
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return [];
    throw e;
  }
}

/** ifupdown (interfaces(5)): "auto", "allow-hotplug" and "iface" stanzas, following source and source-directory. */
async function ifupdownNames(editor: GuestEditor, out: Map<string, string>): Promise<void> {
  const queue = ['/etc/network/interfaces'];
  const seen = new Set<string>();
  while (queue.length && seen.size < MAX_FILES) {
    const file = queue.shift()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const t = await optText(editor, file);
    if (t === null) continue;
    for (const raw of t.split('\n')) {
      const w = raw.trim().split(/\s+/);
      // a bridge's or bond's members and a VLAN's parent are NICs too, named only there
      if (/^(bridge[_-]ports|bond[_-]slaves|vlan[_-]raw[_-]device)$/.test(w[0] ?? '')) {
        for (const n of w.slice(1)) if (physical(n) && !out.has(n)) out.set(n, file);
      } else if (w[0] === 'iface' || w[0] === 'auto' || w[0]?.startsWith('allow-')) {
        for (const n of w[0] === 'iface' ? [w[1]] : w.slice(1)) if (n && physical(n) && !out.has(n)) out.set(n, file);
      } else if (w[0] === 'source' && w[1]) {
        // "source /etc/network/interfaces.d/*": a trailing glob over one folder
        const g = /^(\/[^*?[]*)\/\*$/.exec(w[1]);
        if (g) for (const f of await listDir(editor, g[1]!)) queue.push(`${g[1]}/${f}`);
        else if (!/[*?[]/.test(w[1])) queue.push(w[1]);
      } else if (w[0] === 'source-directory' && w[1]) {
        for (const f of await listDir(editor, w[1])) if (/^[A-Za-z0-9_-]+$/.test(f)) queue.push(`${w[1]}/${f}`);
      }
    }
  }
}

/** systemd-networkd .network files: [Match] Name= with a concrete name. */
async function networkdNames(editor: GuestEditor, out: Map<string, string>): Promise<void> {
  for (const dir of ['/etc/systemd/network']) {
    for (const f of await listDir(editor, dir)) {
      if (!f.endsWith('.network')) continue;
      const t = await optText(editor, `${dir}/${f}`);
      for (const m of (t ?? '').matchAll(/^\s*Name\s*=\s*(.+)$/gm)) {
        for (const n of m[1]!.trim().split(/\s+/)) if (physical(n) && !out.has(n)) out.set(n, `${dir}/${f}`);
      }
    }
  }
}

/** NetworkManager keyfiles (interface-name=), RHEL ifcfg files (DEVICE=), netplan (ethernets: keys). */
async function otherNames(editor: GuestEditor, out: Map<string, string>): Promise<void> {
  const nm = '/etc/NetworkManager/system-connections';
  for (const f of await listDir(editor, nm)) {
    const t = await optText(editor, `${nm}/${f}`);
    const m = /^\s*interface-name\s*=\s*(\S+)\s*$/m.exec(t ?? '');
    if (m && physical(m[1]!) && !out.has(m[1]!)) out.set(m[1]!, `${nm}/${f}`);
  }
  const rh = '/etc/sysconfig/network-scripts';
  for (const f of await listDir(editor, rh)) {
    if (!f.startsWith('ifcfg-')) continue;
    const t = await optText(editor, `${rh}/${f}`);
    const m = /^\s*DEVICE\s*=\s*["']?([^"'\s]+)/m.exec(t ?? '');
    if (m && physical(m[1]!) && !out.has(m[1]!)) out.set(m[1]!, `${rh}/${f}`);
  }
  const np = '/etc/netplan';
  for (const f of await listDir(editor, np)) {
    if (!/\.ya?ml$/.test(f)) continue;
    const t = (await optText(editor, `${np}/${f}`)) ?? '';
    // the keys one level below "ethernets:" (netplan(5)); a "match:" inside binds by MAC already
    const lines = t.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const e = /^(\s*)ethernets:\s*$/.exec(lines[i]!);
      if (!e) continue;
      let childIndent: number | undefined;
      for (let j = i + 1; j < lines.length; j++) {
        const l = lines[j]!;
        if (!l.trim() || l.trim().startsWith('#')) continue;
        const ind = l.length - l.trimStart().length;
        if (ind <= e[1]!.length) break;
        childIndent ??= ind;
        const k = /^\s*([A-Za-z0-9_.-]+):\s*$/.exec(l);
        if (ind === childIndent && k && physical(k[1]!) && !out.has(k[1]!)) out.set(k[1]!, `${np}/${f}`);
      }
    }
  }
}

/** 70-persistent-net.rules (udev, Debian before 9 and RHEL 6): NAME= bound to ATTR{address}==. */
async function persistentNetMacs(editor: GuestEditor): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const t = await optText(editor, '/etc/udev/rules.d/70-persistent-net.rules');
  for (const line of (t ?? '').split('\n')) {
    if (line.trim().startsWith('#')) continue;
    const mac = /ATTR\{address\}=="([^"]+)"/.exec(line);
    const name = /NAME="([^"]+)"/.exec(line);
    const m = mac && normalizeMac(mac[1]!);
    if (m && name && IFNAME.test(name[1]!)) out.set(name[1]!, m);
  }
  return out;
}

/** "eth2" < "eth10", as the kernel numbers them */
function naturalCompare(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** Writes one .link file per configured interface; returns what it found and wrote. */
export async function adaptNetwork(editor: GuestEditor, target: Target, nics: NicInfo[]): Promise<NetworkResult> {
  const found = new Map<string, string>();
  await ifupdownNames(editor, found);
  await networkdNames(editor, found);
  await otherNames(editor, found);
  const notes: string[] = [];
  const links = new Map<string, Buffer>();
  const names = [...found.keys()].sort(naturalCompare);
  const persistent = await persistentNetMacs(editor);
  // the guest's own MAC bindings first; the VM's NICs, in order, go to the interfaces left
  const bound = new Set(names.map((n) => persistent.get(n)).filter(Boolean));
  const macs = nics.map((n) => normalizeMac(n.mac)).filter((m): m is string => !!m && !bound.has(m));
  const interfaces = names.map((name) => ({ name, source: found.get(name)!, mac: persistent.get(name) ?? macs.shift() }));
  if (names.length === 0) return { interfaces, links, notes };
  if (!(await editor.exists('/lib/systemd/systemd')) && !(await editor.exists('/usr/lib/systemd/systemd')) && !(await editor.exists('/lib/udev'))) {
    notes.push(`the guest configures ${names.join(', ')} but has neither systemd nor udev to name interfaces by MAC: check its network on ${target.title}`);
    return { interfaces, links, notes };
  }
  for (const itf of interfaces) {
    let match: string;
    if (itf.mac) match = `MACAddress=${itf.mac}`;
    else if (interfaces.length === 1) {
      // one NIC: whichever the target gives it is this one
      match = `Driver=${target.network.join(' ')}\nType=ether`;
      notes.push(`no MAC address known for ${itf.name}: it is matched by the ${target.title} NIC drivers instead (give the VM's MAC to bind it exactly)`);
    } else {
      notes.push(`no MAC address known for ${itf.name} among ${interfaces.length} interfaces: its name on ${target.title} is left to the guest`);
      continue;
    }
    const file = `10-polyvisor-${itf.name}.link`;
    const content = Buffer.from(`# Polyvisor: the interface the guest's configuration (${itf.source}) calls ${itf.name},\n# named so on every hypervisor by what identifies the NIC\n[Match]\n${match}\n\n[Link]\nName=${itf.name}\n`);
    await editor.writeFile(`${LINK_DIR}/${file}`, content, `network: ${itf.name} follows its NIC (${itf.mac ?? 'by driver'})`);
    links.set(file, content);
  }
  return { interfaces, links, notes };
}
