/**
 * The target's drivers added to each initramfs, beside what it had, so that the disk still
 * boots where it came from.
 *
 * Linux unpacks an initramfs as a sequence of cpio archives, compressed or not, each one's
 * files replacing earlier ones of the same name (Documentation/driver-api/early-userspace/
 * buffer-format.rst; init/initramfs.c). So a gzip-compressed cpio newc segment is appended
 * to the initrd file, holding:
 *
 * - the new modules (the target's storage and network drivers and what modules.dep and
 *   modules.softdep say they need), copied from the guest's own /lib/modules/<version> tree
 *   to where this initramfs keeps its modules (its own symlinks followed: Debian's merged
 *   /usr stores them under usr/lib/modules, and a "lib" entry in the segment would replace
 *   the lib -> usr/lib link with a folder);
 * - modules.dep, modules.alias, modules.symbols, modules.softdep, modules.devname and
 *   modules.order covering the old modules and the new (the initramfs's own lines, then the
 *   tree's lines for the new ones), with the kmod binary indexes made from them (kmod-index.ts):
 *   modprobe and udev read only the .bin files;
 * - initramfs-tools: conf/modules, the list init's load_modules() passes to modprobe
 *   (scripts/functions), with the target's drivers appended; dracut: an
 *   etc/modules-load.d file that systemd-modules-load reads in dracut's initramfs;
 * - udev .link files the network step wrote (initramfs-tools' udev hook copies
 *   /etc/systemd/network/*.link into lib/systemd/network/, so names follow the MAC from the
 *   first udev run), and a resume setting that named a device by position, made stable.
 *
 * Nothing from the guest runs: modules are files copied, indexes are built here. An initramfs
 * that has every needed module already is left alone. The guest's own configuration
 * (/etc/initramfs-tools/modules, /etc/dracut.conf.d) gets the drivers too, so that the next
 * update-initramfs in the guest keeps them.
 */
import { gzipSync } from 'node:zlib';
import { PolyvisorError, isPolyvisorError } from '../errors.js';
import { readInitramfs, writeCpio, type CpioEntry, type CpioInput, type Initramfs } from './initramfs.js';
import { buildModuleIndexes } from './kmod-index.js';
import type { GuestEditor } from './manifest.js';
import { moduleName, readKernelModules, type KernelModules } from './modules.js';
import { readTextFile } from './open.js';
import { rewriteResume, type StableName } from './edit-fstab.js';
import type { Target } from './targets.js';

const MAX_INDEX_TEXT = 64 << 20;
const MAX_SMALL = 1 << 20;
/** Linux's MAXSYMLINKS, for links inside the initramfs */
const MAX_SYMLINKS = 40;

export interface InitramfsPlan {
  version: string;
  /** the initrd file, a guest path */
  initrd: string;
  /** modules appended (load order); empty when the initramfs had them all */
  added: string[];
  generator: string;
}

export interface InitramfsStepResult {
  plans: InitramfsPlan[];
  problems: string[];
  notes: string[];
}

export interface InitramfsOptions {
  target: Target;
  stable: StableName;
  /** .link files to carry into the initramfs: file name -> content */
  links: Map<string, Buffer>;
}

/** Installed kernels that have an initramfs: /boot/vmlinuz-V with initrd.img-V, initramfs-V.img or initrd-V. */
export async function findKernels(editor: GuestEditor): Promise<{ version: string; initrd: string }[]> {
  let entries: { name: string }[];
  try {
    entries = await editor.guest.readdir('/boot');
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return [];
    throw e;
  }
  const names = new Set(entries.map((e) => e.name));
  const out: { version: string; initrd: string }[] = [];
  for (const n of [...names].sort()) {
    const m = /^vmlinu[xz]-(.+)$/.exec(n);
    if (!m) continue;
    const v = m[1]!;
    const initrd = [`initrd.img-${v}`, `initramfs-${v}.img`, `initrd-${v}`].find((c) => names.has(c));
    if (initrd) out.push({ version: v, initrd: `/boot/${initrd}` });
  }
  return out;
}

/** A path inside the initramfs with its symlinks followed, as the kernel's unpacked tree would resolve it. */
function resolveIn(files: Map<string, CpioEntry>, path: string): string {
  let queue = path.split('/').filter((c) => c && c !== '.');
  let stack: string[] = [];
  let hops = 0;
  while (queue.length) {
    const c = queue.shift()!;
    if (c === '..') {
      stack.pop();
      continue;
    }
    const here = '/' + [...stack, c].join('/');
    const e = files.get(here);
    if (e?.type === 'symlink' && e.target) {
      if (++hops > MAX_SYMLINKS) throw new PolyvisorError('ERR_CORRUPT', `${path}: more than ${MAX_SYMLINKS} symbolic links inside the initramfs`);
      if (e.target.startsWith('/')) stack = [];
      queue = [...e.target.split('/').filter((x) => x && x !== '.'), ...queue];
      continue;
    }
    stack.push(c);
  }
  return '/' + stack.join('/');
}

function text(files: Map<string, CpioEntry>, path: string): string | null {
  const e = files.get(path);
  return e?.type === 'file' ? e.data.toString('latin1') : null;
}

const withNewline = (t: string) => (t === '' || t.endsWith('\n') ? t : t + '\n');

/** Lines of a depmod text file whose module (field `field` of the line) is in `names`. */
function linesFor(t: string, names: Set<string>, field: (words: string[]) => string | undefined): string {
  return t
    .split('\n')
    .filter((l) => {
      if (!l.trim() || l.startsWith('#')) return false;
      const w = field(l.trim().split(/\s+/));
      return w !== undefined && names.has(moduleName(w));
    })
    .map((l) => l + '\n')
    .join('');
}

async function guestText(editor: GuestEditor, path: string): Promise<string> {
  try {
    return await readTextFile(editor.guest, path, MAX_INDEX_TEXT);
  } catch (e) {
    if (isPolyvisorError(e, 'ERR_NOT_FOUND')) return '';
    throw e;
  }
}

/** The modules the target needs that this kernel has, in load order, and what it lacks. */
async function neededModules(km: KernelModules, target: Target): Promise<{ load: string[]; top: string[]; missing: string[]; missingOptional: string[] }> {
  /** storage and network drivers: listed for explicit loading; extras only ride along for udev */
  const top: string[] = [];
  const extras: string[] = [];
  const missing: string[] = [];
  const missingOptional: string[] = [];
  for (const [names, required] of [[target.storage, true], [target.network, false], [target.extras, false]] as const) {
    for (const n of names) {
      const s = await km.status(n);
      if (s === 'absent') (required ? missing : missingOptional).push(n);
      else if (s === 'module') (names === target.extras ? extras : top).push(n);
    }
  }
  const load = await km.resolveDeps([...top, ...extras], { softdeps: true });
  return { load, top, missing, missingOptional };
}

/** Builds the segment for one initramfs; null when it has every module already. */
async function buildSegment(editor: GuestEditor, km: KernelModules, ir: Initramfs, load: string[], top: string[], opts: InitramfsOptions, initrdPath: string): Promise<{ segment: Buffer; added: string[] } | null> {
  const version = km.version;
  const present = new Set(ir.modules.filter((m) => m.kernelVersion === version).map((m) => m.name));
  const added = load.filter((n) => !present.has(n));
  if (added.length === 0) return null;

  const files = ir.files;
  const modDir = resolveIn(files, `/lib/modules/${version}`);
  const entries: CpioInput[] = [];
  const dirs = new Set<string>();
  const ensureDir = (dir: string) => {
    const parts = dir.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const d = '/' + parts.slice(0, i).join('/');
      if (dirs.has(d)) continue;
      dirs.add(d);
      const e = files.get(d);
      if (e?.type === 'directory') continue;
      if (e) throw new PolyvisorError('ERR_UNSUPPORTED', `${d} in the initramfs is a ${e.type}; the new modules need a folder there`, { file: initrdPath });
      entries.push({ name: d.slice(1), mode: 0o040755 });
    }
  };
  const addFile = (path: string, data: Buffer, mtime = 0) => {
    ensureDir(path.slice(0, path.lastIndexOf('/')));
    entries.push({ name: path.slice(1), mode: 0o100644, data, mtime });
  };

  // the module files, from the guest's tree
  const addedSet = new Set(added);
  for (const n of added) {
    const rel = km.modules.get(n)!.path;
    const src = `${km.dir}/${rel}`;
    const st = await editor.guest.stat(src);
    addFile(resolveIn(files, `${modDir}/${rel}`), await editor.guest.readFile(src), st.mtime);
  }

  // the depmod files: the initramfs's own lines, then the tree's lines for the new modules
  const tree = (f: string) => guestText(editor, `${km.dir}/${f}`);
  const own = (f: string) => text(files, `${modDir}/${f}`);
  const depLines = added.map((n) => {
    const m = km.modules.get(n)!;
    const deps = m.deps.map((d) => km.modules.get(d)?.path).filter((p): p is string => !!p);
    return `${m.path}:${deps.length ? ' ' + deps.join(' ') : ''}\n`;
  });
  const base = async (f: string, field: (w: string[]) => string | undefined) => {
    const o = own(f);
    if (o !== null) return withNewline(o);
    // no copy of its own: the tree's lines for the modules it has
    return linesFor(await tree(f), present, field);
  };
  const depName = (w: string[]) => w[0]?.replace(/:$/, '');
  const aliasOwner = (w: string[]) => (w[0] === 'alias' ? w[2] : undefined);
  const dep = (await base('modules.dep', depName)) + depLines.join('');
  const alias = (await base('modules.alias', aliasOwner)) + linesFor(await tree('modules.alias'), addedSet, aliasOwner);
  const symbols = (await base('modules.symbols', aliasOwner)) + linesFor(await tree('modules.symbols'), addedSet, aliasOwner);
  const softdepOf = (w: string[]) => (w[0] === 'softdep' ? w[1] : undefined);
  const softdep = (await base('modules.softdep', softdepOf)) + linesFor(await tree('modules.softdep'), addedSet, softdepOf);
  const devname = (await base('modules.devname', (w) => w[0])) + linesFor(await tree('modules.devname'), addedSet, (w) => w[0]);
  const orderOwn = own('modules.order');
  const order = withNewline(orderOwn ?? '') + added.map((n) => km.modules.get(n)!.path).filter((p) => !(orderOwn ?? '').split('\n').includes(p)).map((p) => p + '\n').join('');
  const bins = buildModuleIndexes({ dep, alias, symbols }, `${initrdPath}: ${modDir}/modules.dep`);
  const put = (f: string, s: string | Buffer) => addFile(`${modDir}/${f}`, Buffer.isBuffer(s) ? s : Buffer.from(s, 'latin1'));
  put('modules.dep', dep);
  put('modules.dep.bin', bins.dep);
  put('modules.alias', alias);
  put('modules.alias.bin', bins.alias);
  put('modules.symbols', symbols);
  put('modules.symbols.bin', bins.symbols);
  put('modules.softdep', softdep);
  put('modules.devname', devname);
  put('modules.order', order);

  // what loads them
  if (ir.generator === 'initramfs-tools' || files.has('/conf/modules')) {
    const list = text(files, '/conf/modules') ?? '';
    const listed = new Set(list.split('\n').map((l) => l.trim().split(/\s+/)[0]!.replace(/-/g, '_')).filter(Boolean));
    const more = top.filter((n) => !listed.has(n));
    if (more.length) addFile('/conf/modules', Buffer.from(withNewline(list) + more.map((n) => `${n}\n`).join('')));
  }
  if (ir.generator === 'dracut') {
    addFile(`/etc/modules-load.d/polyvisor-${opts.target.name}.conf`, Buffer.from(`# Polyvisor: drivers for ${opts.target.title}\n${top.join('\n')}\n`));
  }

  // udev naming and the resume device
  if (opts.links.size) {
    const linkDir = resolveIn(files, '/lib/systemd/network');
    for (const [name, data] of opts.links) addFile(`${linkDir}/${name}`, data);
  }
  for (const [path, e] of files) {
    if (!path.startsWith('/conf/conf.d/') || e.type !== 'file' || e.size > MAX_SMALL) continue;
    const r = rewriteResume(e.data.toString('utf8'), opts.stable);
    if (r.changes.length) addFile(path, Buffer.from(r.text));
  }

  const cpio = writeCpio(entries);
  return { segment: gzipSync(cpio, { level: 9 }), added };
}

/** Appends the target's drivers to every initramfs of the guest that lacks some. */
export async function adaptInitramfs(editor: GuestEditor, opts: InitramfsOptions): Promise<InitramfsStepResult> {
  const plans: InitramfsPlan[] = [];
  const problems: string[] = [];
  const notes: string[] = [];
  const kernels = await findKernels(editor);
  if (kernels.length === 0) problems.push('no kernel with an initramfs in /boot (vmlinuz-V with initrd.img-V or initramfs-V.img): no driver could be added');
  const persist = new Set<string>();
  for (const k of kernels) {
    const km = await readKernelModules(editor.guest, k.version);
    for (const w of km.warnings) notes.push(w);
    const need = await neededModules(km, opts.target);
    if (need.missing.length) problems.push(`kernel ${k.version} has no ${need.missing.join(', ')} (neither built in nor a module): it cannot boot on ${opts.target.title}`);
    if (need.missingOptional.length) notes.push(`kernel ${k.version} has no ${need.missingOptional.join(', ')}`);
    for (const n of need.top) persist.add(n);
    const bytes = await editor.read(k.initrd);
    if (!bytes) continue;
    const ir = await readInitramfs(bytes, { name: k.initrd });
    const built = await buildSegment(editor, km, ir, need.load, need.top, opts, k.initrd);
    plans.push({ version: k.version, initrd: k.initrd, added: built?.added ?? [], generator: ir.generator });
    if (!built) continue;
    await editor.appendFile(k.initrd, built.segment, `initramfs of ${k.version}: ${built.added.length} modules for ${opts.target.title} (${built.added.join(', ')}) appended as a gzip cpio segment`);
  }
  await persistDrivers(editor, opts.target, [...persist]);
  return { plans, problems, notes };
}

/** The guest's own initramfs configuration names the drivers, so its next update-initramfs or dracut keeps them. */
async function persistDrivers(editor: GuestEditor, target: Target, names: string[]): Promise<void> {
  if (names.length === 0) return;
  if (await editor.exists('/etc/initramfs-tools')) {
    const path = '/etc/initramfs-tools/modules';
    const old = (await editor.read(path))?.toString('utf8') ?? '';
    const listed = new Set(old.split('\n').map((l) => l.trim().split(/\s+/)[0]!.replace(/-/g, '_')).filter((w) => w && !w.startsWith('#')));
    const more = names.filter((n) => !listed.has(n));
    if (more.length) {
      const add = `# added by Polyvisor for ${target.title}\n${more.map((n) => `${n}\n`).join('')}`;
      await editor.writeFile(path, Buffer.from(withNewline(old) + add), `initramfs-tools: the next update-initramfs keeps ${more.join(', ')}`);
    }
  }
  if (await editor.exists('/etc/dracut.conf.d')) {
    await editor.writeFile(`/etc/dracut.conf.d/polyvisor-${target.name}.conf`, Buffer.from(`# added by Polyvisor for ${target.title}\nadd_drivers+=" ${names.join(' ')} "\n`), `dracut: the next dracut run keeps ${names.join(', ')}`);
  }
}
