/**
 * Polyvisor's typed library: the same calls the CLI makes. One operation, one code path.
 *
 *   import { openImage, convert, openVmSource, convertVm } from 'polyvisor';
 */
export { ERROR_CODES, PolyvisorError, isPolyvisorError, type ErrorCode } from './errors.js';

// disks
export type { BlockImage, Extent, ExtentKind, BackingRef, CheckResult } from './disk/image.js';
export type { DiskFormat, FormatCapabilities, CreateOption, OpenOptions, CacheMode } from './disk/format.js';
export { FORMATS, findFormat, probeFormat } from './disk/registry.js';
export { openImage, createImage, detectFormat, mapChain, chainOf, type MappedExtent, type CreateImageOptions } from './disk/chain.js';
export { createOutput, type Output, type OutputOptions } from './disk/output.js';
export { convert, copy, type ConvertOptions, type ConvertResult } from './disk/convert.js';
export { compareImages, type CompareResult, type CompareOptions } from './disk/compare.js';
export { mapImage, type MapEntry } from './disk/map.js';
export { imageInfo, chainInfo, type ImageInfo } from './disk/info.js';

// VMs
export { VmSpecSchema, validateSpec, emptySpec, type VmSpec, type VmDisk, type VmNic } from './vm/spec.js';
export type { VmCodec, VmPackage, VmSource, SourceDisk, ConversionNote, EncodeInput, EncodeResult, DecodeResult } from './vm/codec.js';
export { CODECS, PACKAGES, findCodec, findPackage } from './vm/registry.js';
export { openVmSource, type OpenVmOptions } from './vm/source.js';
export { convertVm, type ConvertVmOptions, type ConvertVmResult } from './vm/convert.js';

// hosts
export type { HypervisorDriver, DriverCapabilities, DriverOperation, DiskAttachment, VmState } from './hosts/driver.js';
export { QemuDriver, QEMU_CAPABILITIES } from './hosts/qemu/driver.js';
export { XenDriver, XEN_CAPABILITIES, type XenDriverOptions } from './hosts/xen/driver.js';
export { parseXenUri, formatXenUri, type XenHostAddress } from './hosts/xen/uri.js';
export { DRIVERS, type DriverEntry } from './hosts/registry.js';
export { LocalHost, type LocalHostOptions, type ImportOptions } from './hosts/local.js';
export { Store, type StoredVm, type StoredDisk, type StoredHost } from './store/store.js';
export { dataDir } from './store/data-dir.js';
export { serveNbd } from './hosts/nbd/server.js';

// guest inspection and adaptation
export { openGuest, type Guest } from './guest/open.js';
export { inspect, inspectGuest, type GuestReport } from './guest/inspect.js';
export { adaptGuest, type AdaptOptions, type AdaptResult } from './guest/adapt.js';
export { undoAdaptation, readManifest } from './guest/manifest.js';
export type { GuestFs, GuestStat } from './guest/fs.js';
export type { Volume } from './guest/volume.js';
