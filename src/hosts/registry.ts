/**
 * The host drivers, one entry each: adding a hypervisor family is one file in src/hosts/ and
 * one line here. The README's driver support matrix is generated from this table (src/docs.ts).
 */
import { DRIVER_OPERATIONS, type DriverCapabilities } from './driver.js';
import { QEMU_CAPABILITIES } from './qemu/driver.js';

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
];

export { DRIVER_OPERATIONS };
