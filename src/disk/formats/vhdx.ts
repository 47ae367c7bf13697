/**
 * vhdx: Microsoft's Virtual Hard Disk v2 (MS-VHDX), Hyper-V's disk format; Hyper-V
 * checkpoints are .avhdx differencing disks. The format's pieces live beside this file:
 *
 *   vhdx-structs.ts  on-disk structures, GUIDs, CRC-32C, BAT geometry
 *   vhdx-log.ts      log replay (2.3), and a test-only log writer
 *   vhdx-layout.ts   file-range checks and the view of the file through a replayed log
 *   vhdx-image.ts    VhdxImage: read, write, blockStatus, flush, check, formatInfo
 *   vhdx-open.ts     opening (headers, log, region tables, metadata, BAT, parent) and creating
 */
import type { CreateContext, DiskFormat, OpenContext } from '../format.js';
import type { BlockImage } from '../image.js';
import { createVhdx, openVhdx } from './vhdx-open.js';
import { FILE_ID_SIGNATURE } from './vhdx-structs.js';

export { VhdxImage } from './vhdx-image.js';
export { writeLogEntryForTest } from './vhdx-log.js';

export const vhdx: DiskFormat = {
  name: 'vhdx',
  aliases: ['avhdx'],
  description: 'Microsoft Virtual Hard Disk v2 (VHDX): fixed, dynamic and differencing (.avhdx checkpoints), with log replay',
  usedBy: 'Hyper-V (Gen 1 and Gen 2), Windows Server, Azure Stack HCI',
  capabilities: { read: true, write: true, backing: true, compression: false, zeroInit: true, check: true },
  createOptions: [
    { name: 'subformat', type: 'enum', values: ['dynamic', 'fixed'], default: 'dynamic', description: 'dynamic: grows as written; fixed: every block allocated in place (created sparse)' },
    { name: 'block_size', type: 'size', default: '32M', description: 'payload block size, a power of two from 1M to 256M (Hyper-V uses 32M; 2M for checkpoints)' },
    { name: 'log_size', type: 'size', default: '1M', description: 'log size, a multiple of 1M' },
    { name: 'logical_sector_size', type: 'enum', values: ['512', '4096'], default: '512', description: 'logical sector size the guest sees (a differencing disk takes its parent\'s)' },
    { name: 'block_state_zero', type: 'bool', default: 'off', description: 'dynamic: start every block in state ZERO instead of NOT_PRESENT (qemu\'s default; both read as zeroes)' },
  ],

  probe(head: Uint8Array): number {
    // 2.1.1: every VHDX starts with the file type identifier "vhdxfile".
    if (head.length < 8) return 0;
    for (let i = 0; i < 8; i++) if (head[i] !== FILE_ID_SIGNATURE[i]) return 0;
    return 100;
  },

  open(ctx: OpenContext): Promise<BlockImage> {
    return openVhdx(ctx);
  },

  create(ctx: CreateContext): Promise<BlockImage> {
    return createVhdx(ctx);
  },
};
