/**
 * The VM descriptor codecs and package formats. Adding one is one file in codecs/ or
 * packages/ and one line here; `vm inspect`, `vm convert --to`, the docs and the support
 * matrix read these tables.
 */
import { PolyvisorError } from '../errors.js';
import type { VmCodec, VmPackage } from './codec.js';
import { xl } from './codecs/xl.js';
import { libvirt } from './codecs/libvirt.js';
import { vmx } from './codecs/vmx.js';
import { ovf } from './codecs/ovf.js';
import { vmc } from './codecs/vmc.js';
import { hyperv } from './codecs/hyperv.js';
import { ova } from './packages/ova.js';
import { xva } from './packages/xva.js';

export const CODECS: readonly VmCodec[] = [xl, libvirt, vmx, ovf, vmc, hyperv];
export const PACKAGES: readonly VmPackage[] = [ova, xva];

export function findCodec(name: string): VmCodec | undefined {
  return CODECS.find((c) => c.name === name);
}

export function findPackage(name: string): VmPackage | undefined {
  return PACKAGES.find((p) => p.name === name);
}

export function targetNames(): string[] {
  return [...CODECS.filter((c) => c.encode).map((c) => c.name), ...PACKAGES.map((p) => p.name)];
}

export function unknownTarget(name: string): PolyvisorError {
  return new PolyvisorError('ERR_USAGE', `unknown target "${name}" (targets: ${targetNames().join(', ')})`);
}
