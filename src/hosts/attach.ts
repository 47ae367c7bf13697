/**
 * Attaching a VM source's disks to the local QEMU engine without modifying or copying them.
 *
 * For each disk, QEMU either reads the file itself or reads it through Polyvisor:
 * - direct: the image is a real file of a format QEMU reads (raw, qcow2, vmdk, vpc, vhdx, vdi),
 *   `qemu-img info` agrees with Polyvisor on the format, the virtual size and the backing chain,
 *   and only qcow2 layers have backing files (QEMU follows qcow2 chains; it does not follow VHD
 *   or VHDX differencing parents, and a disk inside a package is a window of another file).
 * - NBD: anything else is served read-only by Polyvisor's own NBD server (./nbd/server.ts).
 *
 * Either way the guest writes go to a temporary qcow2 overlay in a private folder
 * (`qemu-img create -f qcow2 -b <source> -F <fmt>`), so the source is never written. With
 * `persist`, QEMU opens the source files themselves for writing where it reads them directly,
 * and a disk that would need NBD is refused.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, realpath, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { chainOf } from '../disk/chain.js';
import type { BlockImage } from '../disk/image.js';
import { PolyvisorError } from '../errors.js';
import type { VmSource } from '../vm/codec.js';
import type { DiskAttachment } from './driver.js';
import { serveNbd, type NbdServer } from './nbd/server.js';
import { QEMU_FORMATS } from './qemu/argv.js';

const run = promisify(execFile);

export interface AttachOptions {
  /** write the guest's changes to the source files themselves (QEMU-readable disks only) */
  persist?: boolean;
  /** the folder for overlays and the NBD socket is created under this one (default: OS temp dir) */
  tmpRoot?: string;
  qemuImg?: string;
}

export interface AttachedDisk {
  index: number;
  label: string;
  /** how QEMU reaches the source: the file itself, or Polyvisor's NBD server */
  via: 'direct' | 'nbd';
  /** the qcow2 overlay the guest writes to (absent with persist) */
  overlay?: string;
}

export interface Attached {
  /** one entry per spec.disks, same index; undefined for a disk without a medium */
  attachments: Array<DiskAttachment | undefined>;
  /** how each source disk was attached */
  disks: AttachedDisk[];
  /** Stops the NBD server, closes the images it served and removes the temporary folder. */
  close(): Promise<void>;
}

interface QemuImgLayer {
  filename: string;
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
}

/**
 * Why QEMU cannot read `image` itself, or undefined when it can. Polyvisor has already opened
 * the chain under its own rules (folder rule, no protocol names), so QEMU is only allowed to
 * follow a chain that is exactly the one Polyvisor resolved.
 */
export async function whyNotDirect(image: BlockImage, qemuImg = 'qemu-img'): Promise<string | undefined> {
  const chain = chainOf(image);
  for (const layer of chain) {
    if (!QEMU_FORMATS[layer.format]) return `QEMU does not read ${layer.format} images`;
    if (layer.backing && layer.format !== 'qcow2') return `QEMU does not follow ${layer.format} differencing parents`;
  }
  if (image.backingRef && !image.backing) return 'the backing chain was not opened';
  // One layer of raw or qcow2, as Polyvisor parsed it, is one file QEMU reads exactly so: raw
  // has no structure, and the qcow2 features that would make QEMU open other files (a backing
  // file, an external data file) or read differently (encryption, extended L2) are either
  // absent or refused by the parser. Asking qemu-img would only add its start-up (about
  // 20 ms) to every `run`.
  if (chain.length === 1 && (image.format === 'qcow2' || (image.format === 'raw' && (await stat(image.path)).size === image.virtualSize))) return undefined;
  let layers: QemuImgLayer[];
  try {
    // -U: read without taking QEMU's image lock (another reader may hold it); the format is
    // forced so that QEMU never probes a raw image's content
    const { stdout } = await run(qemuImg, ['info', '-U', '--output=json', '--backing-chain', '-f', QEMU_FORMATS[image.format]!, image.path], { maxBuffer: 16 << 20 });
    layers = JSON.parse(stdout) as QemuImgLayer[];
  } catch (e) {
    return `qemu-img info failed: ${((e as { stderr?: string }).stderr ?? (e as Error).message).trim()}`;
  }
  if (!Array.isArray(layers) || layers.length !== chain.length) return 'QEMU sees a different backing chain';
  for (let i = 0; i < chain.length; i++) {
    const ours = chain[i]!;
    const theirs = layers[i]!;
    if (theirs.format !== QEMU_FORMATS[ours.format]) return `QEMU reads ${ours.path} as ${theirs.format}`;
    // a disk inside a package (a window of the package file) shows here as a size mismatch
    if (theirs['virtual-size'] !== ours.virtualSize) return `QEMU sees ${theirs['virtual-size']} bytes, Polyvisor ${ours.virtualSize}`;
    if (ours.format === 'raw' && (await stat(ours.path)).size !== ours.virtualSize) return 'the raw disk is a part of a larger file';
    const same = await realpath(resolve(theirs.filename)).then(
      async (p) => p === (await realpath(ours.path)),
      () => false,
    );
    if (!same) return `QEMU resolves layer ${i} to ${theirs.filename}, Polyvisor to ${ours.path}`;
  }
  return undefined;
}

/** Attaches every disk of `source` (see the module comment). */
export async function attachDisks(source: VmSource, opts: AttachOptions = {}): Promise<Attached> {
  const qemuImg = opts.qemuImg ?? 'qemu-img';
  const dir = await mkdtemp(join(opts.tmpRoot ?? tmpdir(), 'pv-attach-'));
  const attachments: Array<DiskAttachment | undefined> = source.spec.disks.map(() => undefined);
  const disks: AttachedDisk[] = [];
  const served: Record<string, { image: BlockImage; index: number }> = {};
  let server: NbdServer | undefined;
  const open: BlockImage[] = [];

  const close = async () => {
    await server?.close().catch(() => undefined);
    for (const img of open) await img.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };

  try {
    for (const d of source.disks) {
      const image = await d.open();
      open.push(image);
      const why = await whyNotDirect(image, qemuImg);
      if (why === undefined) {
        const fmt = QEMU_FORMATS[image.format]!;
        const path = resolve(image.path);
        // QEMU reads the file itself: Polyvisor's handle is not needed any more
        open.splice(open.indexOf(image), 1);
        await image.close();
        if (opts.persist) {
          attachments[d.index] = { path, format: image.format };
          disks.push({ index: d.index, label: d.label, via: 'direct' });
        } else {
          const overlay = join(dir, `disk${d.index}.qcow2`);
          await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-b', path, '-F', fmt, overlay]);
          attachments[d.index] = { path: overlay, format: 'qcow2' };
          disks.push({ index: d.index, label: d.label, via: 'direct', overlay });
        }
      } else {
        if (opts.persist) {
          throw new PolyvisorError('ERR_UNSUPPORTED', `disk ${d.label} cannot be attached for writing (${why}); boot it without persisting, or convert it first`, { file: image.path });
        }
        served[`disk${d.index}`] = { image, index: d.index };
        disks.push({ index: d.index, label: d.label, via: 'nbd' });
      }
    }
    const names = Object.keys(served);
    if (names.length) {
      const exports = Object.fromEntries(names.map((n) => [n, { image: served[n]!.image, writable: false, description: `source disk ${served[n]!.index}` }]));
      server = await serveNbd({ socketPath: join(dir, 'nbd.sock'), exports });
      for (const n of names) {
        const { image, index } = served[n]!;
        const overlay = join(dir, `${n}.qcow2`);
        // the size is given so qemu-img need not open the export (this process serves it:
        // the child runs asynchronously so the server can answer if it does)
        await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-b', server.uri(n), '-F', 'raw', overlay, String(image.virtualSize)]);
        attachments[index] = { path: overlay, format: 'qcow2' };
        disks.find((x) => x.index === index)!.overlay = overlay;
      }
    }
  } catch (e) {
    await close();
    throw e;
  }
  return { attachments, disks, close };
}
