/**
 * The host drivers, one entry each: adding a hypervisor family is one file in src/hosts/ and
 * one line here. The README's driver support matrix is generated from this table (src/docs.ts).
 */
import { DRIVER_OPERATIONS, type DriverCapabilities } from './driver.js';
import { QEMU_CAPABILITIES } from './qemu/driver.js';
import { XEN_CAPABILITIES } from './xen/driver.js';

export interface DriverEntry {
  /** the name in host URIs and the store */
  name: string;
  description: string;
  /** how Polyvisor reaches the host */
  reach: string;
  capabilities: DriverCapabilities;
  /** what the manifest cannot say: where it was tested, what it was not */
  notes: string;
}

export const DRIVERS: DriverEntry[] = [
  {
    name: 'qemu',
    description: 'the local QEMU engine (embedded default host)',
    reach: 'this machine: qemu-system-x86_64 processes, QMP over Unix sockets',
    capabilities: QEMU_CAPABILITIES,
    notes: 'KVM when a probe guest runs under it, else TCG; tested with real guests on every disk bus',
  },
  {
    name: 'xen',
    description: 'a Xen host with the xl toolstack',
    reach: 'xen+ssh://[user@]host[:port]: the system ssh client, xl in dom0',
    capabilities: XEN_CAPABILITIES,
    notes: 'tested on Xen 4.17 (Debian 12) nested under QEMU TCG with PV guests (direct kernel and pygrub); PVH and HVM configurations are written but were not booted here (the nested host has no VT-x)',
  },
];

export { DRIVER_OPERATIONS };
