/**
 * Copying disks and files to and from a host over one SSH channel each, sparse both ways.
 *
 * Upload: the disk is read through Polyvisor's disk engine (any format it opens, with its
 * backing chain) and arrives on the host as a raw file, the one format every Xen block
 * backend reads (blkback and qdisk alike). Only data travels: the allocation map (mapChain)
 * skips holes and zero clusters, and chunks of data that read as zeroes are skipped too. The
 * stream is a run of frames, each a text line "OFFSET LENGTH" followed by LENGTH bytes,
 * ended by a line "end"; a small POSIX sh script on the host writes each frame in place with
 * GNU dd (coreutils), so the host needs nothing but a shell and coreutils. `head -c` and the
 * shell's `read` take exactly the bytes they are asked for from a pipe (read(1p) reads one
 * byte at a time from non-seekable input), so frames never run into each other.
 *
 * Download: the file streams back with `cat`, and blocks that read as zeroes are left as
 * holes in the local raw file, which appears atomically (createOutput) once complete.
 */
import { PolyvisorError } from '../../errors.js';
import { mapChain } from '../../disk/chain.js';
import type { BlockImage } from '../../disk/image.js';
import { isZero } from '../../disk/io.js';
import { createOutput } from '../../disk/output.js';
import { shellScript } from './shell.js';
import type { SshSession } from './ssh.js';

export type Progress = (done: number, total: number) => void;

/** read unit, and the most data one frame carries (one `head | dd` on the host per frame) */
const CHUNK = 4 << 20;
const MAX_FRAME = 32 << 20;
/** the unit of hole detection when writing a download */
const BLOCK = 64 * 1024;

const UPLOAD_SCRIPT = `set -e
f=$1
size=$2
: > "$f"
last=
while IFS=' ' read -r off len; do
  last=$off
  [ "$off" = end ] && break
  head -c "$len" | dd of="$f" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none
done
[ "$last" = end ] || { echo "the stream ended before its last frame" >&2; exit 3; }
truncate -s "$size" "$f"
[ "$(stat -c %s "$f")" = "$size" ] || { echo "the file is not $size bytes" >&2; exit 4; }
`;

/** The frames for the data of `image`: only non-zero chunks, adjacent ones joined. */
async function* frames(image: BlockImage, onProgress?: Progress): AsyncGenerator<Buffer> {
  let runStart = 0;
  let run: Buffer[] = [];
  let runBytes = 0;
  const flush = function* () {
    if (runBytes === 0) return;
    yield Buffer.from(`${runStart} ${runBytes}\n`, 'ascii');
    yield* run;
    run = [];
    runBytes = 0;
  };
  for await (const e of mapChain(image)) {
    if (e.kind === 'zero') {
      yield* flush();
      onProgress?.(e.offset + e.length, image.virtualSize);
      continue;
    }
    for (let pos = e.offset; pos < e.offset + e.length; ) {
      const n = Math.min(CHUNK - (pos % CHUNK), e.offset + e.length - pos);
      const buf = Buffer.alloc(n);
      await image.read(buf, pos);
      if (isZero(buf)) yield* flush();
      else {
        if (runBytes > 0 && (runStart + runBytes !== pos || runBytes + n > MAX_FRAME)) yield* flush();
        if (runBytes === 0) runStart = pos;
        run.push(buf);
        runBytes += n;
      }
      pos += n;
      onProgress?.(pos, image.virtualSize);
    }
  }
  yield* flush();
  yield Buffer.from('end\n', 'ascii');
}

/** Writes the guest content of `image` to `remotePath` on the host as a raw file. */
export async function uploadImage(ssh: SshSession, image: BlockImage, remotePath: string, onProgress?: Progress): Promise<void> {
  const argv = shellScript(UPLOAD_SCRIPT, [remotePath, String(image.virtualSize)]);
  const r = await ssh.run(argv, { input: frames(image, onProgress) });
  if (r.status !== 0) throw ssh.failure(argv, r, `writing ${remotePath}`);
}

/** Writes `data` to `remotePath` on the host (a configuration, a kernel). */
export async function uploadBytes(ssh: SshSession, data: Buffer | string | AsyncIterable<Buffer>, remotePath: string): Promise<void> {
  const argv = shellScript('cat > "$1"', [remotePath]);
  const r = await ssh.run(argv, { input: data });
  if (r.status !== 0) throw ssh.failure(argv, r, `writing ${remotePath}`);
}

/** Copies the host's `remotePath` to a new local raw file `localPath`, zero blocks left as holes. */
export async function downloadFile(ssh: SshSession, remotePath: string, localPath: string, onProgress?: Progress, force = false): Promise<number> {
  const sizeText = (await ssh.exec(['stat', '-L', '-c', '%s', '--', remotePath])).trim();
  if (!/^\d{1,16}$/.test(sizeText)) throw new PolyvisorError('ERR_HOST', `host ${ssh.uri}: stat ${remotePath} printed ${JSON.stringify(sizeText.slice(0, 80))}, not a size`);
  const size = Number(sizeText);
  const out = await createOutput(localPath, 'raw', size, { force });
  try {
    let pos = 0;
    let pending: Buffer = Buffer.alloc(0);
    const writeBlocks = async (buf: Buffer) => {
      if (pos + buf.length > size) throw new PolyvisorError('ERR_HOST', `host ${ssh.uri}: ${remotePath} grew past ${size} bytes while it was copied`);
      for (let off = 0; off < buf.length; off += BLOCK) {
        const piece = buf.subarray(off, Math.min(buf.length, off + BLOCK));
        if (!isZero(piece)) await out.image.write(piece, pos + off);
      }
      pos += buf.length;
      onProgress?.(pos, size);
    };
    const argv = ['cat', '--', remotePath];
    const r = await ssh.run(argv, {
      onStdout: async (chunk) => {
        pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
        if (pending.length >= CHUNK) {
          await writeBlocks(pending);
          pending = Buffer.alloc(0);
        }
      },
    });
    if (r.status !== 0) throw ssh.failure(argv, r, `reading ${remotePath}`);
    await writeBlocks(pending);
    if (pos !== size) throw new PolyvisorError('ERR_HOST', `host ${ssh.uri}: ${remotePath} gave ${pos} bytes, not the ${size} that stat reported`);
    await out.commit();
    return size;
  } catch (e) {
    await out.abort();
    throw e;
  }
}
