/**
 * Which VM names the xl driver accepts.
 *
 * xl itself takes almost any string as a domain name, but the name is used in three more
 * places where it can do harm: xl reads a name made only of digits as a domain ID
 * (libxl_domain_qualifier_to_domid in tools/libs/light/libxl_utils.c), libxl names its log
 * files after it (/var/log/xen/qemu-dm-NAME.log), and this driver names the VM's folder on the
 * host after it. So the driver accepts a conservative subset: letters, digits, '.', '_' and
 * '-', starting with a letter or digit, at most 64 characters, and not all digits.
 */
import { PolyvisorError } from '../../errors.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Throws ERR_USAGE when `name` is not a VM name the xl driver accepts. */
export function checkDomainName(name: string): string {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new PolyvisorError('ERR_USAGE', `xen: VM name ${JSON.stringify(String(name).slice(0, 80))}: use letters, digits, '.', '_' and '-', starting with a letter or digit (at most 64)`);
  }
  if (/^\d+$/.test(name)) throw new PolyvisorError('ERR_USAGE', `xen: VM name ${JSON.stringify(name)} is all digits, which xl reads as a domain ID`);
  return name;
}
