/**
 * Volume: a byte range of a guest disk that a file-system or partition reader works on.
 *
 * Guest inspection never copies a disk and never asks the host kernel to mount it: readers
 * see the guest's disks through Polyvisor's own disk engine (any format, chains included),
 * narrowed to one partition or logical volume. Every read is bounds-checked here, so a
 * hostile file system that points past its partition meets one clear ERR_RANGE naming the
 * volume, not a read of a neighbouring partition.
 */
import { PolyvisorError } from '../errors.js';
import type { BlockImage } from '../disk/image.js';

export interface Volume {
  /** what the user sees in messages: "disk.qcow2", "disk.qcow2 partition 1", "vg0/root" */
  readonly name: string;
  readonly size: number;
  readonly readOnly: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Uint8Array): Promise<void>;
  flush(): Promise<void>;
}

function checkRange(v: Volume, offset: number, length: number, what: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > v.size) {
    throw new PolyvisorError('ERR_RANGE', `${what} of ${length} bytes at ${offset} lies outside the volume (${v.size} bytes)`, { file: v.name });
  }
}

/** The whole virtual disk of an opened image. */
export function imageVolume(image: BlockImage, name = image.path): Volume {
  const v: Volume = {
    name,
    size: image.virtualSize,
    readOnly: image.readOnly,
    async read(offset, length) {
      checkRange(v, offset, length, 'read');
      const buf = Buffer.alloc(length);
      if (length > 0) await image.read(buf, offset);
      return buf;
    },
    async write(offset, data) {
      checkRange(v, offset, data.length, 'write');
      if (image.readOnly) throw new PolyvisorError('ERR_READ_ONLY', 'the disk was opened read-only', { file: name });
      if (data.length > 0) await image.write(data, offset);
    },
    flush: () => image.flush(),
  };
  return v;
}

/** [offset, offset+size) of a parent volume, as a volume of its own (a partition, an LV segment). */
export function subVolume(parent: Volume, offset: number, size: number, name: string): Volume {
  checkRange(parent, offset, size, name);
  const v: Volume = {
    name,
    size,
    readOnly: parent.readOnly,
    async read(off, length) {
      checkRange(v, off, length, 'read');
      return parent.read(offset + off, length);
    },
    async write(off, data) {
      checkRange(v, off, data.length, 'write');
      return parent.write(offset + off, data);
    },
    flush: () => parent.flush(),
  };
  return v;
}
