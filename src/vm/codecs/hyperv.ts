/**
 * Microsoft Hyper-V.
 *
 * Reads: the configuration XML of Windows Server 2008–2012 R2 (`Virtual Machines/<GUID>.xml`,
 * generation 1 and, from 2012 R2, generation 2) and the binary .vmcx of Windows Server 2016 and
 * later (hyperv-vmcx.ts); both carry the same tree of settings, mapped in hyperv-xml.ts.
 * Writes: NAME.ps1, a PowerShell script that creates the VM on a Hyper-V host from the disks
 * beside it (hyperv-ps1.ts).
 */
import { PolyvisorError } from '../../errors.js';
import type { DecodeResult, VmCodec } from '../codec.js';
import { encodeHypervPs1 } from './hyperv-ps1.js';
import { isVmcx, parseVmcx, VMCX_SIGNATURE } from './hyperv-vmcx.js';
import { hypervTreeToSpec, parseHypervXml } from './hyperv-xml.js';
import { xmlText } from '../xml.js';

function decodeHyperv(data: Buffer, path: string): DecodeResult {
  if (isVmcx(data)) {
    const { tree, notes } = parseVmcx(data, path);
    const cfg = tree.configuration;
    if (!cfg || typeof cfg !== 'object' || !('properties' in cfg)) {
      throw new PolyvisorError('ERR_UNSUPPORTED', 'this Hyper-V storage file holds no VM configuration (a .vmrs runtime-state file?); read the .vmcx beside it', { file: path, structure: 'configuration/properties' });
    }
    const r = hypervTreeToSpec(tree, path, 'vmcx');
    return { spec: r.spec, notes: [...notes, ...r.notes] };
  }
  if (/\.vmcx$/i.test(path) || /\.vmrs$/i.test(path)) {
    throw new PolyvisorError('ERR_CORRUPT', `no Hyper-V storage header (signature 0x${VMCX_SIGNATURE.toString(16)} at offset 0 or 0x1000): not a .vmcx, or a damaged one. Export the VM again (Export-VM), or on a Windows Server 2012 R2 host take the XML from "Virtual Machines"`, {
      file: path,
      structure: 'storage header',
      offset: 0,
    });
  }
  const tree = parseHypervXml(data, path);
  return hypervTreeToSpec(tree, path, 'xml');
}

function probeHyperv(head: Buffer): number {
  try {
    if (isVmcx(head)) return 90;
    const t = xmlText(head).slice(0, 16384);
    if (!/<configuration[\s>]/.test(t)) return 0;
    if (/<_[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}_>|<global_settings>|<type_id type="string">Virtual Machines<|<properties>\s*<creation_time/.test(t)) return 90;
    return 0;
  } catch {
    return 0;
  }
}

export const hyperv: VmCodec = {
  name: 'hyperv',
  description: 'Microsoft Hyper-V: configuration XML (2008–2012 R2) and .vmcx (2016+) in; a PowerShell creation script out',
  usedBy: 'Microsoft Hyper-V (Windows Server 2008 and later, Windows 8 and later)',
  extensions: ['.xml', '.vmcx'],
  defaultDiskFormat: 'vhdx',
  diskFormats: ['vhdx', 'vhd'],
  probe: probeHyperv,
  decode: decodeHyperv,
  encode: encodeHypervPs1,
};
