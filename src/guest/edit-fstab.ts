/**
 * Devices named by what they hold, not by where the hypervisor attaches them: /etc/fstab,
 * /etc/crypttab and the initramfs-tools resume setting get UUID= (or LABEL=, PARTUUID=) in
 * place of /dev/xvda1, /dev/sda2, /dev/vdb...
 *
 * A Xen PV guest's disks are xvdX, a KVM guest's vdX, a VMware or Hyper-V guest's sdX: the
 * same disk is a different device on each hypervisor, so a name by position breaks the
 * boot ("ALERT! /dev/xvda1 does not exist"). fstab(5) and crypttab(5) accept UUID=, LABEL=
 * and PARTUUID= in the device field; initramfs-tools(7) accepts them in RESUME=.
 *
 * Lines are edited in place: comments, spacing and every other field stay as they were, so
 * that a second run finds nothing to change.
 */

/** A positional name ("/dev/xvda1") to its stable form ("UUID=..."), or null when unknown. */
export type StableName = (device: string) => string | null;

export interface LineChange {
  line: number;
  from: string;
  to: string;
}

/**
 * Positional device names, by the kernel's naming: SCSI/SATA/IDE under libata and Hyper-V
 * and VMware disks (sd), virtio (vd), Xen (xvd), old IDE (hd); NVMe (nvme0n1p1).
 */
export const POSITIONAL_DEVICE = /^\/dev\/(?:(?:sd|vd|xvd|hd)[a-z]+\d*|nvme\d+n\d+(?:p\d+)?)$/;

/** Replaces the device field (field `field`, 0-based) of whitespace-separated lines. */
function rewriteField(text: string, field: number, stable: StableName, skip?: (fields: string[]) => boolean): { text: string; changes: LineChange[] } {
  const changes: LineChange[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^\s*(#|$)/.test(line)) continue;
    // fields and the whitespace between them, kept as they are
    const parts = line.split(/(\s+)/);
    const fieldIdx: number[] = [];
    parts.forEach((p, k) => {
      if (p !== '' && !/^\s+$/.test(p)) fieldIdx.push(k);
    });
    const at = fieldIdx[field];
    if (at === undefined) continue;
    const fields = fieldIdx.map((k) => parts[k]!);
    if (skip?.(fields)) continue;
    const dev = parts[at]!;
    if (!POSITIONAL_DEVICE.test(dev)) continue;
    const to = stable(dev);
    if (!to || to === dev) continue;
    parts[at] = to;
    lines[i] = parts.join('');
    changes.push({ line: i + 1, from: dev, to });
  }
  return { text: lines.join('\n'), changes };
}

/** fstab(5): the first field is the device. */
export function rewriteFstab(text: string, stable: StableName): { text: string; changes: LineChange[] } {
  return rewriteField(text, 0, stable);
}

/** crypttab(5): "name device keyfile options"; the second field is the device. */
export function rewriteCrypttab(text: string, stable: StableName): { text: string; changes: LineChange[] } {
  return rewriteField(text, 1, stable);
}

/**
 * initramfs-tools' resume setting (/etc/initramfs-tools/conf.d/resume, and the copy in the
 * initramfs under conf/conf.d/): "RESUME=/dev/xvda2", optionally quoted.
 */
export function rewriteResume(text: string, stable: StableName): { text: string; changes: LineChange[] } {
  const changes: LineChange[] = [];
  const lines = text.split('\n').map((line, i) => {
    const m = /^(\s*RESUME=)(["']?)([^"'\s]+)(\2)(.*)$/.exec(line);
    if (!m || !POSITIONAL_DEVICE.test(m[3]!)) return line;
    const to = stable(m[3]!);
    if (!to) return line;
    changes.push({ line: i + 1, from: m[3]!, to });
    return `${m[1]}${m[2]}${to}${m[4]}${m[5]}`;
  });
  return { text: lines.join('\n'), changes };
}
