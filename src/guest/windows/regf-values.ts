/**
 * Registry value types and their data, as Windows stores them (winnt.h REG_* constants;
 * Suhanov, "Windows registry file format specification", section "Key value").
 *
 * Strings are UTF-16LE with a terminating NUL; REG_MULTI_SZ is a sequence of such strings
 * ended by an empty one. Windows does not enforce any of this: a REG_SZ without its NUL, a
 * REG_DWORD of 3 bytes are found in real hives, so decoding is lenient and says what it found.
 */

export const REG = {
  NONE: 0,
  SZ: 1,
  EXPAND_SZ: 2,
  BINARY: 3,
  DWORD: 4,
  DWORD_BIG_ENDIAN: 5,
  LINK: 6,
  MULTI_SZ: 7,
  RESOURCE_LIST: 8,
  FULL_RESOURCE_DESCRIPTOR: 9,
  RESOURCE_REQUIREMENTS_LIST: 10,
  QWORD: 11,
} as const;

export type RegType = number;

export const REG_NAMES: Record<number, string> = Object.fromEntries(Object.entries(REG).map(([k, v]) => [v, `REG_${k}`]));

export function regTypeName(t: number): string {
  return REG_NAMES[t] ?? `type 0x${t.toString(16)}`;
}

/** UTF-16LE up to the first NUL (or the end) */
export function decodeSz(data: Buffer): string {
  const even = data.subarray(0, data.length & ~1);
  const s = even.toString('utf16le');
  const nul = s.indexOf('\0');
  return nul < 0 ? s : s.slice(0, nul);
}

export function decodeMultiSz(data: Buffer): string[] {
  const s = data.subarray(0, data.length & ~1).toString('utf16le');
  const parts = s.split('\0');
  // the list ends at the first empty string (the double NUL)
  const end = parts.indexOf('');
  return end < 0 ? parts : parts.slice(0, end);
}

export const sz = (s: string): Buffer => Buffer.from(s + '\0', 'utf16le');
export const multiSz = (xs: string[]): Buffer => Buffer.from(xs.map((x) => x + '\0').join('') + '\0', 'utf16le');
export function dword(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}
export function qword(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

export type DecodedValue = string | string[] | number | bigint | Buffer;

/** The data in its natural form: a string, a list of strings, a number, or the raw bytes (binary, or malformed). */
export function decodeValue(type: number, data: Buffer): DecodedValue {
  switch (type) {
    case REG.SZ:
    case REG.EXPAND_SZ:
    case REG.LINK:
      return decodeSz(data);
    case REG.MULTI_SZ:
      return decodeMultiSz(data);
    case REG.DWORD:
      return data.length >= 4 ? data.readUInt32LE(0) : data;
    case REG.DWORD_BIG_ENDIAN:
      return data.length >= 4 ? data.readUInt32BE(0) : data;
    case REG.QWORD:
      return data.length >= 8 ? data.readBigUInt64LE(0) : data;
    default:
      return data;
  }
}
