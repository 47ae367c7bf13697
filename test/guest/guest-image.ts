/**
 * Test helper: small guest disks built from a folder tree with Debian's own tools, no loop
 * device or mount: `mke2fs -d` fills an ext4 file system (at a partition's offset when the disk
 * is partitioned by sfdisk), mkfs.vfat and mcopy fill a FAT one.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const MiB = 1 << 20;

function run(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
}

/** Writes `files` under `root`: a string or Buffer is a file, `{ link }` a symlink, `{ dir: true }` a folder. */
export function writeTree(root: string, files: Record<string, string | Buffer | { link: string } | { dir: true }>): void {
  mkdirSync(root, { recursive: true });
  for (const [rel, v] of Object.entries(files)) {
    const p = join(root, rel);
    mkdirSync(dirname(p), { recursive: true });
    if (typeof v === 'string' || Buffer.isBuffer(v)) writeFileSync(p, v);
    else if ('link' in v) symlinkSync(v.link, p);
    else mkdirSync(p, { recursive: true });
  }
}

export interface PartitionSpec {
  /** MiB */
  size: number;
  /** sfdisk type: "83", "ef", "82", or a GPT type GUID / alias (L, U, S) */
  type: string;
  /** an ext4 file system from this folder */
  ext4?: { tree: string; uuid: string; label?: string };
  /** a FAT file system holding these files (paths with "/" inside) */
  vfat?: { files: Record<string, string | Buffer>; id?: string; dir: string };
}

/** A raw disk of `sizeMiB` with the partitions given (first at 1 MiB), on an MBR ("dos") or GPT label. */
export function makeDisk(file: string, sizeMiB: number, label: 'dos' | 'gpt', parts: PartitionSpec[], labelId?: string): void {
  run('truncate', ['-s', `${sizeMiB}M`, file]);
  let start = 1;
  const lines = [`label: ${label}`, ...(labelId ? [`label-id: ${labelId}`] : []), 'unit: sectors', ''];
  const starts: number[] = [];
  for (const p of parts) {
    starts.push(start);
    lines.push(`start=${start * 2048}, size=${p.size * 2048}, type=${p.type}`);
    start += p.size;
  }
  run('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', file], lines.join('\n') + '\n');
  parts.forEach((p, i) => {
    const offset = starts[i]! * MiB;
    if (p.ext4) {
      run('mke2fs', ['-q', '-t', 'ext4', '-d', p.ext4.tree, '-U', p.ext4.uuid, ...(p.ext4.label ? ['-L', p.ext4.label] : []), '-E', `offset=${offset}`, '-F', file, `${p.size * 1024}k`]);
    }
    if (p.vfat) {
      // mkfs.vfat picks the FAT type for the size (FAT12 below 16 MiB or so)
      run('mkfs.vfat', [...(p.vfat.id ? ['-i', p.vfat.id] : []), '--offset', String(offset / 512), file, String(p.size * 1024)]);
      const img = `${file}@@${offset}`;
      const made = new Set<string>();
      for (const [rel, data] of Object.entries(p.vfat.files)) {
        const parts = rel.split('/');
        for (let k = 1; k < parts.length; k++) {
          const d = parts.slice(0, k).join('/');
          if (!made.has(d)) {
            run('mmd', ['-i', img, `::/${d}`]);
            made.add(d);
          }
        }
        const host = join(p.vfat.dir, parts.join('_'));
        writeFileSync(host, data);
        run('mcopy', ['-i', img, host, `::/${rel}`]);
      }
    }
  });
}

/** A whole-disk ext4 image (no partition table) of `sizeMiB` from `tree`. */
export function makeExt4(file: string, tree: string, sizeMiB = 32): void {
  run('mke2fs', ['-q', '-t', 'ext4', '-d', tree, '-F', file, `${sizeMiB}M`]);
}
