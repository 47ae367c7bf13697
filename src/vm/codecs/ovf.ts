/**
 * OVF (DMTF DSP0243): the descriptor of VMware's, VirtualBox's and XenServer's appliance
 * exports, and the one every one of them imports. Reads OVF 1.x and 2.x in the dialects of
 * ovftool / vSphere, VBoxManage export and XenCenter (ovf-read.ts); writes OVF 1.0 that
 * VMware accepts as it is, with streamOptimized VMDK disks (ovf-write.ts). The OVA package
 * (packages/ova.ts) is this descriptor and its disks in one tar.
 */
import type { VmCodec } from '../codec.js';
import { looksLikeOvf, readOvf } from './ovf-read.js';
import { encodeOvf } from './ovf-write.js';

export const ovf: VmCodec = {
  name: 'ovf',
  description: 'Open Virtualization Format descriptor (DMTF DSP0243, OVF 1.x/2.x), with streamOptimized VMDK disks',
  usedBy: 'VMware ESXi/vCenter/Workstation (ovftool), VirtualBox, XenServer/XCP-ng (XenCenter), oVirt, Proxmox import',
  extensions: ['.ovf'],
  defaultDiskFormat: 'vmdk',
  diskFormats: ['vmdk'],
  probe(head: Buffer): number {
    try {
      return looksLikeOvf(head) ? 95 : 0;
    } catch {
      return 0;
    }
  },
  decode(data: Buffer, path: string) {
    const { spec, notes } = readOvf(data, path);
    return { spec, notes };
  },
  encode(input) {
    return encodeOvf(input);
  },
};
