/**
 * A VM of the store as a VmSource (../vm/codec.ts), so that what reads sources (conversion,
 * export packages, boot verification) takes a stored VM as it is now: its spec, and its own
 * disks (the overlays and copies in its folder, with whatever the guest wrote), opened through
 * the disk engine read-only. Only VMs on the local engine have their disks here.
 */
import { openImage } from '../disk/chain.js';
import { PolyvisorError } from '../errors.js';
import { LOCAL_HOST } from '../hosts/local.js';
import type { StoredVm } from '../store/store.js';
import type { VmSource } from '../vm/codec.js';

export function storedVmSource(vm: StoredVm, folder: string): VmSource {
  if (vm.host !== LOCAL_HOST) throw new PolyvisorError('ERR_UNSUPPORTED', `${vm.name} is on host ${vm.host}; move it to the local engine first (its disks are there)`);
  const spec = structuredClone(vm.spec);
  for (const d of vm.disks) {
    const disk = spec.disks[d.index];
    if (disk) {
      disk.file = d.path;
      disk.format = d.format;
    }
  }
  return {
    path: folder,
    kind: 'store',
    spec,
    notes: [],
    disks: vm.disks.map((d) => ({
      index: d.index,
      label: d.path,
      // the overlays name their sources by absolute path, vetted when the VM was imported
      open: () => openImage(d.path, { format: d.format, allowOutsidePaths: true }),
    })),
    close: async () => {},
  };
}
