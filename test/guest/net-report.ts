/**
 * A guest that says which network interfaces it came up with: an ifupdown configuration for
 * eth0 (what a real installed guest has) and a oneshot unit, run after networking.service
 * and before the marker unit powers the machine off (test/guests/debian.ts), that prints
 * `POLYVISOR-NET <name> <mac> <operstate> <driver>` on ttyS0 for every interface but lo.
 * The driver is the name of the kernel driver bound to the interface's device
 * (/sys/class/net/<if>/device/driver, Documentation/ABI/testing/sysfs-class-net), so a boot
 * shows which NIC model the guest's kernel drove, not only that some interface came up.
 */
import { editGuest, rootFs } from './adapt-fixtures.js';

export const NET_LINE = /POLYVISOR-NET (\S+) (\S+) (\S+) (\S+)\r?\n/g;

const NET_UNIT = `[Unit]
Description=Polyvisor test: the guest's network interfaces
After=networking.service
Before=polyvisor-marker.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for i in /sys/class/net/*; do n=$(basename $i); [ $n = lo ] || echo "POLYVISOR-NET $n $(cat $i/address) $(cat $i/operstate) $(basename $(readlink $i/device/driver) 2>/dev/null || echo none)" > /dev/ttyS0; done'

[Install]
WantedBy=multi-user.target
`;

export interface NetReport {
  name: string;
  mac: string;
  state: string;
  driver: string;
}

/** Writes the eth0 configuration and the reporting unit into the guest on `file` (an overlay). */
export async function addNetReport(file: string): Promise<void> {
  await editGuest(file, async (guest) => {
    const fs = rootFs(guest);
    await fs.writeFile('/etc/network/interfaces.d/eth0', Buffer.from('auto eth0\niface eth0 inet static\n  address 10.0.2.15/24\n'));
    await fs.writeFile('/etc/systemd/system/polyvisor-net.service', Buffer.from(NET_UNIT));
    await fs.symlink('/etc/systemd/system/polyvisor-net.service', '/etc/systemd/system/multi-user.target.wants/polyvisor-net.service');
  });
}

/** The interfaces a boot's console output reports. */
export function netReports(output: string): NetReport[] {
  return [...output.matchAll(NET_LINE)].map((m) => ({ name: m[1]!, mac: m[2]!, state: m[3]!, driver: m[4]! }));
}
