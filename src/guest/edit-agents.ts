/**
 * systemd units: other hypervisors' guest agents masked, serial consoles given a login.
 *
 * Masking (systemctl mask: a symlink to /dev/null in /etc/systemd/system, systemd.unit(5))
 * disables a unit without removing its package or files, so the agent comes back when the
 * manifest is undone or the mask removed. It also stops the unit that sysv-generator makes
 * from an /etc/init.d script of the same name.
 *
 * Consoles: serial-getty@NAME.service enabled (a symlink in getty.target.wants, as
 * `systemctl enable serial-getty@ttyS0` makes) for the target's serial consoles; those the
 * guest had stay, so logins work on both hypervisors. A guest without systemd but with
 * /etc/inittab gets an inittab getty line instead.
 */
import { isPolyvisorError } from '../errors.js';
import type { GuestEditor } from './manifest.js';
import { AGENTS, type Hypervisor, type Target } from './targets.js';

const UNIT_DIRS = ['/etc/systemd/system', '/lib/systemd/system', '/usr/lib/systemd/system'];

async function unitExists(editor: GuestEditor, unit: string): Promise<string | null> {
  for (const d of UNIT_DIRS) {
    try {
      if (await editor.guest.exists(`${d}/${unit}`)) return `${d}/${unit}`;
    } catch (e) {
      if (!isPolyvisorError(e)) throw e;
    }
  }
  return null;
}

async function isMasked(editor: GuestEditor, unit: string): Promise<boolean> {
  try {
    const st = await editor.guest.lstat(`/etc/systemd/system/${unit}`);
    return st.type === 'symlink' && (await editor.guest.readlink(`/etc/systemd/system/${unit}`)) === '/dev/null';
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return false;
    throw e;
  }
}

/** Masks the agents of every hypervisor but the target's; returns the units masked now. */
export async function maskAgents(editor: GuestEditor, target: Target): Promise<string[]> {
  const masked: string[] = [];
  for (const hv of Object.keys(AGENTS) as Hypervisor[]) {
    if (hv === target.hypervisor) continue;
    for (const unit of AGENTS[hv].units) {
      const at = await unitExists(editor, unit);
      if (!at && !(await isMasked(editor, unit))) continue;
      if (await editor.symlink(`/etc/systemd/system/${unit}`, '/dev/null', `agents: ${unit} masked: ${AGENTS[hv].why}`)) masked.push(unit);
    }
  }
  return masked;
}

/** The serial consoles the guest has a getty on now (systemd units enabled, or inittab lines). */
async function currentGettys(editor: GuestEditor): Promise<string[]> {
  try {
    return (await editor.guest.readdir('/etc/systemd/system/getty.target.wants'))
      .map((e) => /^serial-getty@(.+)\.service$/.exec(e.name)?.[1])
      .filter((n): n is string => !!n);
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return [];
    throw e;
  }
}

/** Enables a login on each of the target's serial consoles; returns the ones enabled now. */
export async function enableConsoles(editor: GuestEditor, target: Target): Promise<{ enabled: string[]; notes: string[] }> {
  const enabled: string[] = [];
  const notes: string[] = [];
  const template = await unitExists(editor, 'serial-getty@.service');
  if (template) {
    const have = new Set(await currentGettys(editor));
    for (const tty of target.serialGettys) {
      if (have.has(tty)) continue;
      const made = await editor.symlink(`/etc/systemd/system/getty.target.wants/serial-getty@${tty}.service`, template, `consoles: a login on ${tty} for ${target.title}`);
      if (made) enabled.push(tty);
    }
    return { enabled, notes };
  }
  const inittab = await editor.read('/etc/inittab');
  if (inittab) {
    let t = inittab.toString('utf8');
    const before = t;
    for (const tty of target.serialGettys) {
      if (new RegExp(`getty\\b.*\\b${tty}\\b`).test(t)) continue;
      const id = `p${tty.replace(/[^0-9]/g, '').slice(-2) || '0'}`.slice(0, 4);
      t = (t.endsWith('\n') ? t : t + '\n') + `${id}:2345:respawn:/sbin/getty -L ${tty} 115200 vt100\n`;
      enabled.push(tty);
    }
    if (t !== before) await editor.writeFile('/etc/inittab', Buffer.from(t), `consoles: a login on ${enabled.join(', ')} for ${target.title}`);
    return { enabled, notes };
  }
  notes.push(`the guest has neither systemd's serial-getty@.service nor /etc/inittab: no login was added on ${target.serialGettys.join(', ')}`);
  return { enabled, notes };
}
