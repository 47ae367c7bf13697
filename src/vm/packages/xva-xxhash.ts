/**
 * XXH64 (seed 0), for the `.xxhash` chunk checksums newer XAPI writes (stream_vdi.ml:
 * `Printf.sprintf "%016LX" (XXHash.XXH64.hash chunk)`: upper-case hex of the 64-bit value).
 *
 * No XXH64 package is among the project's dependencies, so this is the reference algorithm
 * (github.com/Cyan4973/xxHash, doc/xxhash_spec.md, "XXH64") on BigInt. It runs at tens of
 * MiB/s, enough to verify chunks as they are first read; Polyvisor writes SHA-1 `.checksum`
 * members, which XAPI accepts as well.
 */
const M64 = (1n << 64n) - 1n;
const P1 = 0x9e3779b185ebca87n;
const P2 = 0xc2b2ae3d27d4eb4fn;
const P3 = 0x165667b19e3779f9n;
const P4 = 0x85ebca77c2b2ae63n;
const P5 = 0x27d4eb2f165667c5n;

const rotl = (x: bigint, r: bigint): bigint => ((x << r) | (x >> (64n - r))) & M64;
const round = (acc: bigint, lane: bigint): bigint => (rotl((acc + lane * P2) & M64, 31n) * P1) & M64;
const merge = (acc: bigint, val: bigint): bigint => (((acc ^ round(0n, val)) * P1 + P4) & M64);

export function xxh64(data: Uint8Array): bigint {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const len = b.length;
  let p = 0;
  let h: bigint;
  if (len >= 32) {
    let v1 = (P1 + P2) & M64;
    let v2 = P2;
    let v3 = 0n;
    let v4 = (0n - P1) & M64;
    const limit = len - 32;
    while (p <= limit) {
      v1 = round(v1, b.readBigUInt64LE(p));
      v2 = round(v2, b.readBigUInt64LE(p + 8));
      v3 = round(v3, b.readBigUInt64LE(p + 16));
      v4 = round(v4, b.readBigUInt64LE(p + 24));
      p += 32;
    }
    h = (rotl(v1, 1n) + rotl(v2, 7n) + rotl(v3, 12n) + rotl(v4, 18n)) & M64;
    h = merge(h, v1);
    h = merge(h, v2);
    h = merge(h, v3);
    h = merge(h, v4);
  } else {
    h = P5;
  }
  h = (h + BigInt(len)) & M64;
  while (p + 8 <= len) {
    h ^= round(0n, b.readBigUInt64LE(p));
    h = (rotl(h, 27n) * P1 + P4) & M64;
    p += 8;
  }
  if (p + 4 <= len) {
    h ^= (BigInt(b.readUInt32LE(p)) * P1) & M64;
    h = (rotl(h, 23n) * P2 + P3) & M64;
    p += 4;
  }
  while (p < len) {
    h ^= (BigInt(b[p]!) * P5) & M64;
    h = (rotl(h, 11n) * P1) & M64;
    p++;
  }
  h ^= h >> 33n;
  h = (h * P2) & M64;
  h ^= h >> 29n;
  h = (h * P3) & M64;
  h ^= h >> 32n;
  return h;
}

/** The text XAPI stores in a `.xxhash` member. */
export function xxh64Hex(data: Uint8Array): string {
  return xxh64(data).toString(16).toUpperCase().padStart(16, '0');
}
