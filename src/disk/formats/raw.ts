/**
 * raw: the guest disk byte for byte, used by every hypervisor. Holes in a sparse host file
 * are reported as zero extents (lseek SEEK_DATA/SEEK_HOLE); new images are created sparse
 * (or fully allocated with -o preallocation=full).
 */
import { PolyvisorError } from '../../errors.js';
import { checkRange } from '../backing.js';
import type { CreateContext, DiskFormat, OpenContext } from '../format.js';
import type { BlockImage, Extent } from '../image.js';
import { ImageFile } from '../io.js';

/** Host filesystem block granularity used to align zero detection. */
const RAW_CLUSTER = 64 * 1024;

class RawImage implements BlockImage {
  readonly format = 'raw';
  readonly clusterSize = RAW_CLUSTER;
  readonly backing = null;
  readonly backingRef = null;
  readonly readOnly: boolean;
  #file: ImageFile;
  #virtualSize: number;

  constructor(file: ImageFile, readOnly: boolean, virtualSize: number) {
    this.#file = file;
    this.readOnly = readOnly;
    this.#virtualSize = virtualSize;
  }

  get path(): string {
    return this.#file.path;
  }

  get virtualSize(): number {
    return this.#virtualSize;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length, 'block status');
    const end = offset + length;
    // Bytes between the file's end and the virtual size (a file shrunk behind our back) read as zeroes.
    const fileEnd = Math.min(end, this.#file.size);
    const out: Extent[] = [];
    const runs = offset < fileEnd ? this.#file.dataRuns(offset, fileEnd) : [];
    let pos = offset;
    for (const [s, e] of runs ?? [[offset, fileEnd] as [number, number]]) {
      if (s > pos) out.push({ offset: pos, length: s - pos, kind: 'zero' });
      out.push({ offset: s, length: e - s, kind: 'data', hostOffset: s });
      pos = e;
    }
    if (pos < end) out.push({ offset: pos, length: end - pos, kind: 'zero' });
    return out;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    await this.#file.readInto(buf, offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    if (this.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'image is open read-only', { file: this.path });
    await this.#file.writeAt(buf, offset);
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    // A sparse output whose tail is a hole must still have its full length.
    if (this.#file.size < this.#virtualSize) await this.#file.truncate(this.#virtualSize);
    await this.#file.sync();
  }

  async close(): Promise<void> {
    try {
      if (!this.readOnly) await this.flush();
    } finally {
      await this.#file.close();
    }
  }

  formatInfo(): Record<string, unknown> {
    return {};
  }
}

export const raw: DiskFormat = {
  name: 'raw',
  aliases: ['img', 'dd'],
  description: 'raw disk image, byte for byte (sparse where the file system allows)',
  usedBy: 'every hypervisor: KVM/QEMU, Xen, Hyper-V pass-through, VMware flat extents',
  capabilities: { read: true, write: true, backing: false, compression: false, zeroInit: true, check: false },
  createOptions: [
    { name: 'preallocation', type: 'enum', values: ['off', 'full'], default: 'off', description: 'off: sparse file; full: write zeroes to every byte' },
  ],

  probe(): number {
    return 1; // anything is a raw image; every other format outbids this
  },

  async open(ctx: OpenContext): Promise<BlockImage> {
    return new RawImage(ctx.file, ctx.readOnly, ctx.file.size);
  },

  async create(ctx: CreateContext): Promise<BlockImage> {
    const file = await ImageFile.create(ctx.path, ctx.cache);
    try {
      if (ctx.options.preallocation === 'full') {
        const chunk = Buffer.alloc(Math.min(8 << 20, Math.max(1, ctx.virtualSize)));
        for (let pos = 0; pos < ctx.virtualSize; pos += chunk.length) {
          await file.writeAt(chunk.subarray(0, Math.min(chunk.length, ctx.virtualSize - pos)), pos);
        }
      } else {
        await file.truncate(ctx.virtualSize);
      }
    } catch (e) {
      await file.close();
      throw e;
    }
    return new RawImage(file, false, ctx.virtualSize);
  },
};
