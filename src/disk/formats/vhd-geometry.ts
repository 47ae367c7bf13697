/**
 * VHD disk geometry (cylinders / heads / sectors per track) and the rules that decide
 * whether a VHD's guest-visible size is its CHS geometry or its "current size" field.
 *
 * Why this matters: the footer records both a byte size ("current size") and a CHS
 * geometry, and they rarely agree. Virtual PC and Virtual Server expose only what the CHS
 * geometry can address (an ATA disk to the guest), so their images are read by geometry;
 * Hyper-V, Disk2vhd, XenServer and qemu's force_size images are read by current size.
 * Polyvisor must report the same size as qemu-img and as the hypervisor that made the
 * image, so it follows the creator application as qemu does.
 */

/** Largest geometry the footer can hold: 65535 cylinders, 16 heads, 255 sectors per track. */
export const MAX_CHS_SECTORS = 65535 * 16 * 255;

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

export function chsSectors(g: Geometry): number {
  return g.cylinders * g.heads * g.sectorsPerTrack;
}

/**
 * The geometry for a disk of `totalSectors` 512-byte sectors, by the algorithm of the VHD
 * specification's appendix ("CHS calculation"). It favours the ATA translations BIOSes
 * understand (17, then 31, then 63 sectors per track) and only uses 255 sectors per track
 * when even 16 heads x 63 sectors cannot reach the size. The product may be smaller than
 * `totalSectors` (integer division): that shortfall is exactly why CHS-sized images lose
 * their tail unless the size is rounded up to a whole geometry.
 */
export function geometryForSectors(totalSectors: number): Geometry {
  let total = Math.max(0, Math.floor(totalSectors));
  if (total > MAX_CHS_SECTORS) total = MAX_CHS_SECTORS;
  let sectorsPerTrack: number;
  let heads: number;
  let cylTimesHeads: number;
  if (total >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylTimesHeads = Math.floor(total / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylTimesHeads = Math.floor(total / sectorsPerTrack);
    heads = Math.floor((cylTimesHeads + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cylTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylTimesHeads = Math.floor(total / sectorsPerTrack);
    }
    if (cylTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylTimesHeads = Math.floor(total / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylTimesHeads / heads), heads, sectorsPerTrack };
}

/**
 * The smallest size of at least `sectors` that a geometry addresses exactly, with that
 * geometry being the one the spec's algorithm gives for it (so a Virtual PC reading the
 * geometry and a tool recomputing it from the size agree). Null when no CHS geometry can
 * reach `sectors` (beyond 65535/16/255, about 127 GiB).
 */
export function roundUpToGeometry(sectors: number): { sectors: number; geometry: Geometry } | null {
  if (sectors > MAX_CHS_SECTORS) return null;
  let n = sectors;
  // Each step grows by at least one cylinder, and MAX_CHS_SECTORS is itself a fixed point,
  // so this ends quickly; the bound only guards against a mistake here.
  for (let i = 0; i < 1024; i++) {
    const g = geometryForSectors(n);
    const p = chsSectors(g);
    if (p === n && n >= sectors) return { sectors: n, geometry: g };
    const next = p >= sectors ? p : (g.cylinders + 1) * g.heads * g.sectorsPerTrack;
    if (next > MAX_CHS_SECTORS) return { sectors: MAX_CHS_SECTORS, geometry: geometryForSectors(MAX_CHS_SECTORS) };
    n = next;
  }
  return null;
}

/**
 * Creator applications whose images are sized by the footer's current size. Everything
 * else (Virtual PC "vpc ", Virtual Server "vs  ", qemu's older "qemu", unknown tools) is
 * sized by CHS geometry, as those hypervisors present the disk to the guest.
 *   "win "  Hyper-V / Windows (VirtualDisk API)
 *   "qem2"  qemu-img with force_size=on
 *   "d2v "  Sysinternals Disk2vhd
 *   "tap\0" XenServer blktap (vhd-util)
 *   "CTXS"  Citrix XenConverter
 */
const CURRENT_SIZE_CREATORS = new Set(['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0']);

/**
 * Whether the guest size comes from CHS geometry. A geometry at the maximum means the
 * disk was too big for CHS, so its real size can only be the current size field.
 */
export function sizeFromGeometry(creatorApp: string, g: Geometry): boolean {
  if (CURRENT_SIZE_CREATORS.has(creatorApp)) return false;
  return chsSectors(g) !== MAX_CHS_SECTORS;
}
