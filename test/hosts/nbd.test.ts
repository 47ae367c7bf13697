/**
 * The NBD server, with real clients as the oracle: qemu-img / qemu-io (QEMU's NBD client)
 * and nbdinfo (libnbd) read exports of images Polyvisor opened, and compare what they see
 * through NBD with what qemu-img reads directly (or, for a VHDX differencing chain qemu
 * cannot open, with the expected bytes). A raw-socket client plays the hostile peer.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { createImage, openImage } from '../../src/disk/chain.js';
import type { BlockImage } from '../../src/disk/image.js';
import { serveNbd, type NbdServer } from '../../src/hosts/nbd/server.js';
import * as P from '../../src/hosts/nbd/protocol.js';
import { patternBytes, qemuImg, qemuIo, tempDir } from '../helpers.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

/** 16 MiB with data at [0, 256k) and [4M, 5M) and zeroes elsewhere. */
function sourceBytes(): Buffer {
  const b = Buffer.alloc(SIZE);
  patternBytes(256 * 1024, 1).copy(b, 0);
  patternBytes(MiB, 2).copy(b, 4 * MiB);
  return b;
}

/**
 * Runs a client without blocking the event loop (the server under test lives in this very
 * process, so spawnSync, and thus helpers' qemuImgStatus, would deadlock) and returns its
 * status instead of throwing.
 */
function tool(cmd: string, ...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ status: code, stdout, stderr });
    });
  });
}

function hasTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

/** A deliberately minimal NBD client over a raw socket, to say what QEMU never would. */
class RawClient {
  #buf = Buffer.alloc(0);
  #wait: (() => void) | null = null;
  closed: Promise<void>;
  isClosed = false;
  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#wait?.();
    });
    socket.on('error', () => {});
    this.closed = new Promise((r) =>
      socket.on('close', () => {
        this.isClosed = true;
        this.#wait?.();
        r();
      }),
    );
  }
  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      if (this.isClosed) throw new Error(`connection closed while waiting for ${n} bytes`);
      await new Promise<void>((r) => (this.#wait = r));
      this.#wait = null;
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }
  write(b: Buffer): void {
    this.socket.write(b);
  }
  async handshake(clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): Promise<void> {
    const g = await this.read(18);
    assert.equal(g.readBigUInt64BE(0), P.NBD_MAGIC);
    assert.equal(g.readBigUInt64BE(8), P.NBD_IHAVEOPT);
    assert.equal(g.readUInt16BE(16), P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES);
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags >>> 0);
    this.write(f);
  }
  sendOption(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.NBD_IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(declaredLength >>> 0, 12);
    this.write(Buffer.concat([h, data]));
  }
  /** Reads option replies up to the final one (ACK or an error). */
  async optionReplies(option: number): Promise<Array<{ type: number; data: Buffer }>> {
    const out: Array<{ type: number; data: Buffer }> = [];
    for (;;) {
      const h = await this.read(20);
      assert.equal(h.readBigUInt64BE(0), P.NBD_REP_MAGIC);
      assert.equal(h.readUInt32BE(8), option);
      const type = h.readUInt32BE(12);
      const data = await this.read(h.readUInt32BE(16));
      out.push({ type, data });
      if (type === P.NBD_REP_ACK || type >= 0x80000000) return out;
    }
  }
  async go(name: string): Promise<{ size: number; flags: number }> {
    const n = Buffer.from(name);
    const d = Buffer.alloc(4 + n.length + 2);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    this.sendOption(P.NBD_OPT_GO, d);
    const replies = await this.optionReplies(P.NBD_OPT_GO);
    assert.equal(replies.at(-1)!.type, P.NBD_REP_ACK);
    const info = replies.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === P.NBD_INFO_EXPORT)!;
    return { size: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10) };
  }
  request(type: number, offset: bigint | number, length: number, cookie = 7n, flags = 0, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length >>> 0, 24);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }
  async simpleReply(): Promise<{ error: number; cookie: bigint }> {
    const r = await this.read(16);
    assert.equal(r.readUInt32BE(0), P.NBD_SIMPLE_REPLY_MAGIC);
    return { error: r.readUInt32BE(4), cookie: r.readBigUInt64BE(8) };
  }
  close(): void {
    this.socket.destroy();
  }
}

describe('NBD server', () => {
  let dir: string;
  let server: NbdServer;
  const images: BlockImage[] = [];
  const errors: Error[] = [];
  let expectedChain: Buffer;

  before(async () => {
    dir = await tempDir();
    const src = sourceBytes();
    await writeFile(join(dir, 'src.raw'), src);
    await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'src.raw'), join(dir, 'd.qcow2'));
    await qemuImg('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', join(dir, 'src.raw'), join(dir, 'd.vhd'));
    await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(dir, 'src.raw'), join(dir, 'd.vmdk'));

    // A VHDX differencing chain written by Polyvisor itself (qemu cannot read differencing VHDX).
    const base = await createImage(join(dir, 'base.vhdx'), 'vhdx', SIZE, { options: 'block_size=1M' });
    // only the data runs, so that the rest stays unallocated in the base too
    await base.write(src.subarray(0, 256 * 1024), 0);
    await base.write(src.subarray(4 * MiB, 5 * MiB), 4 * MiB);
    await base.close();
    const child = await createImage(join(dir, 'child.vhdx'), 'vhdx', undefined, { backingFile: 'base.vhdx' });
    const over = patternBytes(512 * 1024, 3);
    await child.write(over, 128 * 1024); // overlaps the base's first data run and a hole
    await child.writeZeroes?.(4 * MiB + 256 * 1024, 256 * 1024);
    await child.close();
    expectedChain = Buffer.from(src);
    over.copy(expectedChain, 128 * 1024);
    if (child.writeZeroes) expectedChain.fill(0, 4 * MiB + 256 * 1024, 4 * MiB + 512 * 1024);

    for (const f of ['d.qcow2', 'd.vhd', 'd.vmdk', 'child.vhdx']) images.push(await openImage(join(dir, f)));
    server = await serveNbd({
      socketPath: join(dir, 'nbd.sock'),
      exports: { qcow2: { image: images[0]! }, vhd: { image: images[1]! }, vmdk: { image: images[2]! }, chain: { image: images[3]! } },
    });
    server.on('error', (e) => errors.push(e));
  });

  after(async () => {
    await server.close();
    for (const i of images) await i.close();
    assert.equal(existsSync(join(dir, 'nbd.sock')), false, 'close() removes the socket file');
    spawnSync('rm', ['-rf', dir]);
  });

  it('uri() is what QEMU accepts, and qemu-img info sees the size', async () => {
    assert.equal(server.uri('qcow2'), `nbd+unix:///qcow2?socket=${join(dir, 'nbd.sock')}`);
    const info = JSON.parse(await qemuImg('info', '--output=json', server.uri('qcow2')));
    assert.equal(info['virtual-size'], SIZE);
  });

  for (const [name, file, fmt] of [
    ['qcow2', 'd.qcow2', 'qcow2'],
    ['vhd', 'd.vhd', 'vpc'],
    ['vmdk', 'd.vmdk', 'vmdk'],
  ] as const) {
    it(`${name}: qemu-img compare through NBD equals qemu reading the file directly`, async () => {
      const r = await tool('qemu-img', 'compare', '-f', 'raw', '-F', fmt, server.uri(name), join(dir, file));
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /identical/);
    });
  }

  it('VHDX differencing chain: qemu-img convert through NBD gives the expected bytes', async () => {
    const out = join(dir, 'chain.raw');
    await qemuImg('convert', '-f', 'raw', '-O', 'raw', server.uri('chain'), out);
    assert.ok((await readFile(out)).equals(expectedChain));
  });

  it('qemu-img map through NBD shows the holes (base:allocation block status)', async () => {
    for (const name of ['qcow2', 'chain']) {
      const map: Array<{ start: number; length: number; data: boolean; zero: boolean }> = JSON.parse(
        await qemuImg('map', '--output=json', '-f', 'raw', server.uri(name)),
      );
      const at = (off: number) => map.find((e) => e.start <= off && off < e.start + e.length)!;
      assert.equal(at(0).data, true, `${name}: data at 0`);
      assert.equal(at(4 * MiB).data, true, `${name}: data at 4M`);
      assert.deepEqual([at(2 * MiB).data, at(2 * MiB).zero], [false, true], `${name}: hole at 2M`);
      assert.deepEqual([at(SIZE - 1).data, at(SIZE - 1).zero], [false, true], `${name}: hole at the end`);
      assert.equal(map.reduce((s, e) => s + e.length, 0), SIZE);
    }
  });

  it('nbdinfo (libnbd) lists exports, sees the context and the map', async () => {
    assert.ok(hasTool('nbdinfo'), 'nbdinfo is missing: apt-get install libnbd-bin (.ci/run does)');
    const list = await tool('nbdinfo', '--list', '--json', server.uri('qcow2'));
    assert.equal(list.status, 0, list.stderr);
    const names = JSON.parse(list.stdout).exports.map((e: { 'export-name': string }) => e['export-name']).sort();
    assert.deepEqual(names, ['chain', 'qcow2', 'vhd', 'vmdk']);
    const info = JSON.parse((await tool('nbdinfo', '--json', server.uri('vmdk'))).stdout);
    const e = info.exports[0];
    assert.equal(e['export-size'], SIZE);
    assert.equal(e.is_read_only, true);
    assert.ok(e.contexts.includes('base:allocation'));
    assert.equal(info.protocol, 'newstyle-fixed');
    const map = await tool('nbdinfo', '--map', server.uri('chain'));
    assert.equal(map.status, 0, map.stderr);
    assert.match(map.stdout, /hole,zero/);
  });

  it('a read-only export refuses writes cleanly and keeps its data', async () => {
    // QEMU sees NBD_FLAG_READ_ONLY and refuses to open the export for writing.
    const r = await tool('qemu-io', '-f', 'raw', '-c', 'write -P 0x11 0 4k', server.uri('qcow2'));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /Permission denied|read-only/i);
    const cmp = await tool('qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', server.uri('qcow2'), join(dir, 'd.qcow2'));
    assert.equal(cmp.status, 0, cmp.stdout);
  });

  it('a writable export of a Polyvisor qcow2 overlay takes writes that qemu-img check accepts', async () => {
    const overlayPath = join(dir, 'overlay.qcow2');
    const overlay = await createImage(overlayPath, 'qcow2', undefined, { backingFile: 'd.qcow2' });
    const wsrv = await serveNbd({ socketPath: join(dir, 'w.sock'), exports: { disk: { image: overlay, writable: true } } });
    try {
      const uri = wsrv.uri('disk');
      await qemuIo(uri, 'raw', 'write -P 0xcd 1M 64k', 'write -z 4M 64k', 'read -P 0xcd 1M 64k', 'read -P 0 4M 64k', 'flush');
      const r = await tool('qemu-io', '-f', 'raw', '-c', 'read -P 0 4M 64k', uri);
      assert.doesNotMatch(r.stdout, /fail|mismatch/i, r.stdout);
    } finally {
      await wsrv.close();
      await overlay.close();
    }
    const check = await tool('qemu-img', 'check', overlayPath);
    assert.equal(check.status, 0, check.stdout + check.stderr);
    await qemuIo(overlayPath, 'qcow2', 'read -P 0xcd 1M 64k', 'read -P 0 4M 64k');
    // the rest still reads through to the backing file
    const expected = sourceBytes();
    expected.fill(0xcd, MiB, MiB + 64 * 1024);
    expected.fill(0, 4 * MiB, 4 * MiB + 64 * 1024);
    await qemuImg('convert', '-O', 'raw', overlayPath, join(dir, 'overlay.raw'));
    assert.ok((await readFile(join(dir, 'overlay.raw'))).equals(expected));
  });

  it('TCP on 127.0.0.1: a 12 MiB read through QEMU (served as 4 MiB structured data chunks)', async () => {
    const rawPath = join(dir, 'full.raw');
    await writeFile(rawPath, Buffer.alloc(12 * MiB, 0x5a));
    const img = await openImage(rawPath, { format: 'raw' });
    const tsrv = await serveNbd({ socketPath: join(dir, 't.sock'), tcpPort: 0, exports: { full: { image: img } } });
    try {
      const uri = tsrv.tcpUri('full')!;
      assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/full$/);
      // -r: the export is read-only, and qemu-io opens for writing unless told
      const r = await tool('qemu-io', '-r', '-f', 'raw', '-c', 'read -P 0x5a 0 12M', uri);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /read 12582912\/12582912 bytes/);
      assert.doesNotMatch(r.stdout, /mismatch|fail/i);
    } finally {
      await tsrv.close();
      await img.close();
    }
  });

  describe('hostile clients', () => {
    const sock = () => join(dir, 'nbd.sock');

    it('bad option magic: disconnected', async () => {
      const c = await RawClient.connect(sock());
      await c.handshake();
      c.write(Buffer.from('GARBAGE!GARBAGE!'));
      await c.closed;
    });

    it('unknown client flags: disconnected', async () => {
      const c = await RawClient.connect(sock());
      await c.handshake(0xffffffff);
      await c.closed;
    });

    it('garbage bytes: disconnected', async () => {
      const c = await RawClient.connect(sock());
      c.write(patternBytes(8192, 9));
      await c.closed;
    });

    it('huge option length: NBD_REP_ERR_TOO_BIG, then disconnected', async () => {
      const c = await RawClient.connect(sock());
      await c.handshake();
      c.sendOption(P.NBD_OPT_GO, Buffer.alloc(0), 0xfffffff0);
      const [r] = await c.optionReplies(P.NBD_OPT_GO);
      assert.equal(r!.type, P.NBD_REP_ERR_TOO_BIG);
      await c.closed;
    });

    it('bad option data and unknown options get error replies; the session goes on', async () => {
      const c = await RawClient.connect(sock());
      await c.handshake();
      c.sendOption(0x4242, Buffer.from('whatever'));
      assert.equal((await c.optionReplies(0x4242))[0]!.type, P.NBD_REP_ERR_UNSUP);
      c.sendOption(P.NBD_OPT_STARTTLS);
      assert.equal((await c.optionReplies(P.NBD_OPT_STARTTLS))[0]!.type, P.NBD_REP_ERR_UNSUP);
      // NBD_OPT_GO whose name length runs past the data
      const bad = Buffer.alloc(10);
      bad.writeUInt32BE(1000, 0);
      c.sendOption(P.NBD_OPT_GO, bad);
      assert.equal((await c.optionReplies(P.NBD_OPT_GO))[0]!.type, P.NBD_REP_ERR_INVALID);
      // SET_META_CONTEXT before structured replies
      c.sendOption(P.NBD_OPT_SET_META_CONTEXT, Buffer.alloc(8));
      assert.equal((await c.optionReplies(P.NBD_OPT_SET_META_CONTEXT))[0]!.type, P.NBD_REP_ERR_INVALID);
      // an unknown export
      const n = Buffer.from('nope');
      const d = Buffer.alloc(4 + n.length + 2);
      d.writeUInt32BE(n.length, 0);
      n.copy(d, 4);
      c.sendOption(P.NBD_OPT_INFO, d);
      assert.equal((await c.optionReplies(P.NBD_OPT_INFO))[0]!.type, P.NBD_REP_ERR_UNKNOWN);
      c.sendOption(P.NBD_OPT_LIST);
      const list = await c.optionReplies(P.NBD_OPT_LIST);
      assert.deepEqual(
        list.filter((r) => r.type === P.NBD_REP_SERVER).map((r) => r.data.toString('utf8', 4)).sort(),
        ['chain', 'qcow2', 'vhd', 'vmdk'],
      );
      c.sendOption(P.NBD_OPT_ABORT);
      assert.equal((await c.optionReplies(P.NBD_OPT_ABORT))[0]!.type, P.NBD_REP_ACK);
      await c.closed;
    });

    it('out-of-range, oversized, unknown and forbidden requests get errors; good ones still work', async () => {
      const c = await RawClient.connect(sock());
      await c.handshake();
      const { size, flags } = await c.go('qcow2');
      assert.equal(size, SIZE);
      assert.ok(flags & P.NBD_FLAG_READ_ONLY);
      c.request(P.NBD_CMD_READ, SIZE - 512, 1024, 1n);
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EINVAL, cookie: 1n });
      c.request(P.NBD_CMD_READ, 0xffffffffffffff00n, 512, 2n);
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EINVAL, cookie: 2n });
      c.request(P.NBD_CMD_READ, 0, 1024 * MiB, 3n);
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EOVERFLOW, cookie: 3n });
      c.request(99, 0, 512, 4n);
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EINVAL, cookie: 4n });
      c.request(P.NBD_CMD_WRITE, 0, 512, 5n, 0, Buffer.alloc(512, 0x55));
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EPERM, cookie: 5n });
      c.request(P.NBD_CMD_BLOCK_STATUS, 0, 512, 6n);
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EINVAL, cookie: 6n }, 'no meta context negotiated');
      c.request(P.NBD_CMD_READ, 0, 4096, 7n, P.NBD_CMD_FLAG_REQ_ONE);
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EINVAL, cookie: 7n }, 'flag not valid for READ');
      c.request(P.NBD_CMD_READ, 4 * MiB, 4096, 8n);
      assert.deepEqual(await c.simpleReply(), { error: 0, cookie: 8n });
      assert.ok((await c.read(4096)).equals(patternBytes(MiB, 2).subarray(0, 4096)));
      // a 1 GiB write cannot be skipped: an error, then a hard disconnect
      c.request(P.NBD_CMD_WRITE, 0, 1024 * MiB, 9n);
      assert.deepEqual(await c.simpleReply(), { error: P.NBD_EOVERFLOW, cookie: 9n });
      await c.closed;
    });

    it('NBD_OPT_EXPORT_NAME (old clients) and a structured read of a hole', async () => {
      const c = await RawClient.connect(sock());
      await c.handshake();
      c.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
      assert.equal((await c.optionReplies(P.NBD_OPT_STRUCTURED_REPLY))[0]!.type, P.NBD_REP_ACK);
      c.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('vhd'));
      const r = await c.read(10); // NO_ZEROES negotiated: no 124-byte padding
      assert.equal(Number(r.readBigUInt64BE(0)), SIZE);
      c.request(P.NBD_CMD_READ, 2 * MiB, 8192, 11n);
      const h = await c.read(20);
      assert.equal(h.readUInt32BE(0), P.NBD_STRUCTURED_REPLY_MAGIC);
      assert.equal(h.readUInt16BE(6), P.NBD_REPLY_TYPE_OFFSET_HOLE);
      const p = await c.read(h.readUInt32BE(16));
      assert.deepEqual([Number(p.readBigUInt64BE(0)), p.readUInt32BE(8)], [2 * MiB, 8192]);
      const done = await c.read(20);
      assert.equal(done.readUInt16BE(4) & P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_FLAG_DONE);
      c.request(P.NBD_CMD_READ, SIZE, 512, 12n);
      const e = await c.read(20);
      assert.equal(e.readUInt16BE(6), P.NBD_REPLY_TYPE_ERROR);
      const ep = await c.read(e.readUInt32BE(16));
      assert.equal(ep.readUInt32BE(0), P.NBD_EINVAL);
      c.request(P.NBD_CMD_DISC, 0, 0, 13n);
      await c.closed;
    });

    it('after all that, the server still serves QEMU, and it reported the violations', async () => {
      const r = await tool('qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', server.uri('qcow2'), join(dir, 'd.qcow2'));
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.ok(errors.some((e) => /magic/.test(e.message)), errors.map((e) => e.message).join('\n'));
    });
  });
});
