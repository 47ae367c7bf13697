/**
 * `polyvisor disk ...`: qemu-img's verbs and flags wherever the same idea exists, so that
 * its users feel at home. Each action parses, calls the library, and prints; no disk logic
 * lives here.
 */
import { Command, Option } from 'commander';
import { PolyvisorError } from '../errors.js';
import { openImage } from '../disk/chain.js';
import { compareImages } from '../disk/compare.js';
import { convert } from '../disk/convert.js';
import { createOutput } from '../disk/output.js';
import type { BlockImage } from '../disk/image.js';
import { chainInfo, imageInfo, type ImageInfo } from '../disk/info.js';
import { mapImage } from '../disk/map.js';
import { FORMATS } from '../disk/registry.js';
import { formatSize, parseSize } from '../util/size.js';
import { createProgress } from './progress.js';
import { out, withSignal } from './run.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

const formatList = () => FORMATS.map((f) => (f.aliases.length ? `${f.name} (${f.aliases.join(', ')})` : f.name)).join(', ');

function jsonOption(): Option {
  return new Option('--json', 'print machine-readable JSON (numbers are bytes)');
}

/** `--output=json` as qemu-img spells it, accepted as a synonym of --json. */
function outputOption(): Option {
  return new Option('--output <fmt>', 'output format, as qemu-img').choices(['human', 'json']).default('human');
}

const wantsJson = (o: { json?: boolean; output?: string }) => !!o.json || o.output === 'json';

function allowOption(): Option {
  return new Option('--allow-outside-paths', "follow backing files outside the referring image's folder");
}

async function withImage<T>(path: string, opts: Parameters<typeof openImage>[1], fn: (img: BlockImage) => Promise<T>): Promise<T> {
  const img = await openImage(path, opts);
  try {
    return await fn(img);
  } finally {
    await img.close();
  }
}

export function diskCommand(): Command {
  const disk = new Command('disk').description('inspect, create, convert, check, compare and map disk images');
  disk.addHelpText('after', `\nFormats: ${formatList()}\nSizes take K, M, G, T suffixes (binary). Numbers in --json output are bytes.`);

  disk
    .command('info')
    .description('show what an image is: format, sizes, backing file, format-specific facts')
    .argument('<file>', 'image file')
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .option('--backing-chain', 'show every image of the backing chain, top first')
    .addOption(jsonOption())
    .addOption(outputOption())
    .addOption(allowOption())
    .action(async (file: string, o) => {
      const chain = !!o.backingChain;
      await withImage(file, { format: o.format, noBacking: !chain, allowOutsidePaths: o.allowOutsidePaths }, async (img) => {
        const infos = chain ? await chainInfo(img) : [await imageInfo(img)];
        if (wantsJson(o)) out(JSON.stringify(chain ? infos : infos[0], null, 2));
        else out(infos.map(humanInfo).join('\n'));
      });
    });

  disk
    .command('create')
    .description('create a new, empty image (or an overlay over a backing file)')
    .argument('<file>', 'image to create')
    .argument('[size]', 'virtual size, e.g. 10G (default: the backing file\'s)')
    .requiredOption('-f, --format <fmt>', `output format: ${FORMATS.map((f) => f.name).join(', ')}`)
    .option('-o, --options <key=value,...>', 'format options (repeatable); "-o help" lists them', collect, [])
    .option('-b, --backing <file>', 'backing file to record (relative to the new image\'s folder)')
    .option('-F, --backing-format <fmt>', 'format of the backing file (default: probe)')
    .option('--force', 'replace an existing file')
    .option('-q, --quiet', 'print nothing on success')
    .addOption(jsonOption())
    .addOption(allowOption())
    .action(async (file: string, sizeText: string | undefined, o) => {
      if (o.options.includes('help')) return out(optionHelp(o.format));
      const size = sizeText === undefined ? undefined : parseSize(sizeText);
      const output = await createOutput(file, o.format, size, {
        options: o.options,
        backingFile: o.backing,
        backingFormat: o.backingFormat,
        allowOutsidePaths: o.allowOutsidePaths,
        force: o.force,
      });
      try {
        const result = { filename: file, format: output.image.format, 'virtual-size': output.image.virtualSize, 'backing-filename': o.backing, files: output.files() };
        await output.commit();
        if (o.json) out(JSON.stringify(result, null, 2));
        else if (!o.quiet) {
          const extra = o.backing ? ` backing_file=${o.backing}` : '';
          out(`Formatting '${file}', fmt=${result.format} size=${result['virtual-size']}${extra}`);
          if (size !== undefined && result['virtual-size'] !== size) {
            out(`note: the ${result.format} size was rounded to ${result['virtual-size']} bytes (${formatSize(result['virtual-size'])})`);
          }
        }
      } catch (e) {
        await output.abort();
        throw e;
      }
    });

  disk
    .command('convert')
    .description('copy an image into another format, reading only allocated data')
    .argument('<src>', 'source image (its backing chain is followed)')
    .argument('<dst>', 'destination image (written under a temporary name, renamed when complete)')
    .option('-f, --format <fmt>', 'source format (default: probe)')
    .option('-O, --output-format <fmt>', 'output format', 'raw')
    .option('-o, --options <key=value,...>', 'output format options (repeatable); "-o help" lists them', collect, [])
    .option('-c, --compress', 'compress the output data (qcow2)')
    .option('-p, --progress', 'show a progress bar')
    .option('-S, --sparse-size <size>', 'zero runs at least this long are left unallocated; 0 writes every byte', '4k')
    .addOption(
      new Option('-t, --cache <mode>', 'writeback: the output is on disk (fdatasync) before it is renamed into place; unsafe: skip fdatasync, as qemu-img convert does by default')
        .choices(['writeback', 'unsafe'])
        .default('writeback'),
    )
    .option('--force', 'replace an existing destination')
    .option('-q, --quiet', 'print nothing on success')
    .addOption(jsonOption())
    .addOption(allowOption())
    .action(async (src: string, dst: string, o) => {
      if (o.options.includes('help')) return out(optionHelp(o.outputFormat));
      const started = Date.now();
      await withImage(src, { format: o.format, allowOutsidePaths: o.allowOutsidePaths }, async (img) => {
        const progress = await createProgress(!!o.progress, 'convert');
        try {
          const result = await withSignal((signal) =>
            convert(img, dst, o.outputFormat, {
              options: o.options,
              compress: !!o.compress,
              force: !!o.force,
              sparseSize: parseSize(o.sparseSize, '-S'),
              cache: o.cache,
              signal,
              onProgress: (d, t) => progress.update(d, t),
            }),
          );
          progress.stop();
          const seconds = (Date.now() - started) / 1000;
          if (o.json) out(JSON.stringify({ source: src, 'source-format': img.format, ...result, seconds }, null, 2));
          else if (!o.quiet) {
            out(
              `converted ${src} (${img.format}) to ${dst} (${result.format}): ${formatSize(result.virtualSize)} virtual, ` +
                `${formatSize(result.bytesWritten)} data written, ${formatSize(result.bytesZero)} left sparse, in ${seconds.toFixed(1)} s`,
            );
          }
        } finally {
          progress.stop();
        }
      });
    });

  disk
    .command('check')
    .description('check an image\'s metadata for consistency (exit 0 clean, 2 corrupt, 3 leaks, 63 no check for this format, 1 error)')
    .argument('<file>', 'image file')
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .addOption(jsonOption())
    .addOption(outputOption())
    .action(async (file: string, o) => {
      // qemu-img check: 1 = could not check, 2 = corruptions, 3 = leaks only, 63 = not supported.
      process.exitCode = 1;
      await withImage(file, { format: o.format, noBacking: true }, async (img) => {
        if (!img.check) {
          if (wantsJson(o)) out(JSON.stringify({ filename: file, format: img.format, 'check-errors': 0, supported: false }, null, 2));
          else process.stderr.write(`polyvisor: ${file}: the ${img.format} format has no consistency check\n`);
          process.exitCode = 63;
          return;
        }
        const r = await img.check();
        if (wantsJson(o)) {
          out(
            JSON.stringify(
              {
                filename: file,
                format: img.format,
                'check-errors': 0,
                corruptions: r.corruptions,
                leaks: r.leaks,
                messages: r.messages,
                'allocated-clusters': r.allocatedClusters,
                'total-clusters': r.totalClusters,
                'compressed-clusters': r.compressedClusters,
                'fragmented-clusters': r.fragmentedClusters,
                'image-end-offset': r.imageEndOffset,
              },
              null,
              2,
            ),
          );
        } else {
          for (const m of r.messages) out(m);
          if (r.corruptions === 0 && r.leaks === 0) out('No errors were found on the image.');
          else {
            if (r.corruptions) out(`\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.`);
            if (r.leaks) out(`\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.`);
          }
          if (r.totalClusters) {
            const pct = (n = 0) => ((n / r.totalClusters!) * 100).toFixed(2);
            out(
              `${r.allocatedClusters ?? 0}/${r.totalClusters} = ${pct(r.allocatedClusters)}% allocated, ` +
                `${pct(r.fragmentedClusters)}% fragmented, ${pct(r.compressedClusters)}% compressed clusters`,
            );
          }
          if (r.imageEndOffset !== undefined) out(`Image end offset: ${r.imageEndOffset}`);
        }
        process.exitCode = r.corruptions ? 2 : r.leaks ? 3 : 0;
      });
    });

  disk
    .command('compare')
    .description('compare the guest contents of two images (exit 0 identical, 1 different, 2 error)')
    .argument('<a>', 'first image')
    .argument('<b>', 'second image')
    .option('-f, --format <fmt>', 'format of the first image (default: probe)')
    .option('-F, --format-b <fmt>', 'format of the second image (default: probe)')
    .option('-s, --strict', 'images of different sizes are different')
    .option('-p, --progress', 'show a progress bar')
    .option('-q, --quiet', 'print nothing; the exit status tells')
    .addOption(jsonOption())
    .addOption(allowOption())
    .action(async (a: string, b: string, o) => {
      process.exitCode = 2; // any error from here on is "2", as qemu-img compare
      await withImage(a, { format: o.format, allowOutsidePaths: o.allowOutsidePaths }, (ia) =>
        withImage(b, { format: o.formatB, allowOutsidePaths: o.allowOutsidePaths }, async (ib) => {
          const progress = await createProgress(!!o.progress, 'compare');
          const r = await withSignal((signal) => compareImages(ia, ib, { strict: !!o.strict, signal, onProgress: (d, t) => progress.update(d, t) }));
          progress.stop();
          if (o.json) out(JSON.stringify(r, null, 2));
          else if (!o.quiet) {
            if (r.sizeMismatch) out('Warning: Image size mismatch!');
            out(r.identical ? 'Images are identical.' : `Content mismatch at offset ${r.mismatchOffset}!`);
          }
          process.exitCode = r.identical ? 0 : 1;
        }),
      );
    });

  disk
    .command('map')
    .description('show where each guest range of an image (and its backing chain) is stored')
    .argument('<file>', 'image file')
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .addOption(jsonOption())
    .addOption(outputOption())
    .addOption(allowOption())
    .action(async (file: string, o) => {
      await withImage(file, { format: o.format, allowOutsidePaths: o.allowOutsidePaths }, async (img) => {
        const json = wantsJson(o);
        if (json) out('[');
        else out(`${'Offset'.padEnd(20)}${'Length'.padEnd(20)}${'Mapped to'.padEnd(20)}File`);
        let first = true;
        for await (const e of mapImage(img)) {
          if (json) {
            out((first ? '' : ',\n').concat(JSON.stringify(e)), false);
            first = false;
          } else if (e.data) {
            const mapped = e.offset === undefined ? '-' : '0x' + e.offset.toString(16);
            out(`${('0x' + e.start.toString(16)).padEnd(20)}${('0x' + e.length.toString(16)).padEnd(20)}${mapped.padEnd(20)}${e.filename ?? ''}`);
          }
        }
        if (json) out(first ? ']' : '\n]');
      });
    });

  return disk;
}

function humanInfo(i: ImageInfo): string {
  const lines = [
    `image: ${i.filename}`,
    `file format: ${i.format}`,
    `virtual size: ${formatSize(i['virtual-size'])} (${i['virtual-size']} bytes)`,
    `disk size: ${formatSize(i['actual-size'])}`,
  ];
  if (i['cluster-size'] !== undefined) lines.push(`cluster_size: ${i['cluster-size']}`);
  if (i['backing-filename']) {
    const full = i['full-backing-filename'] ? ` (actual path: ${i['full-backing-filename']})` : '';
    lines.push(`backing file: ${i['backing-filename']}${full}`);
    if (i['backing-filename-format']) lines.push(`backing file format: ${i['backing-filename-format']}`);
  }
  const fs = i['format-specific'];
  if (fs) {
    lines.push('Format specific information:');
    for (const [k, v] of Object.entries(fs.data)) lines.push(`    ${k}: ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`);
  }
  return lines.join('\n') + '\n';
}

function optionHelp(formatName: string): string {
  const f = FORMATS.find((x) => x.name === formatName || x.aliases.includes(formatName));
  if (!f) throw new PolyvisorError('ERR_FORMAT_UNKNOWN', `unknown format "${formatName}"`);
  const lines = [`Supported options for ${f.name}:`];
  for (const o of f.createOptions) {
    const vals = o.values ? ` (${o.values.join('|')})` : '';
    const dflt = o.default !== undefined ? ` [default: ${o.default}]` : '';
    lines.push(`  ${o.name.padEnd(20)} <${o.type}>${vals} ${o.description}${dflt}`);
  }
  if (f.createOptions.length === 0) lines.push('  (none)');
  return lines.join('\n');
}
