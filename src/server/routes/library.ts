/**
 * The library (../library.ts): list it, download, upload (streamed to disk, size-limited),
 * remove, and convert a VM source of the library into a library folder for another
 * hypervisor (a job).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { relative } from 'node:path';
import { PolyvisorError } from '../../errors.js';
import { route, type ApiRoute } from '../route.js';
import { ConvertSchema, JobSchema, LibraryListSchema, LibraryPathParamsSchema, LibraryQuerySchema, UploadQuerySchema, UploadResultSchema } from '../schemas.js';
import { jobView } from '../views.js';

/** Routes whose body is JSON. */
export function libraryRoutes(): ApiRoute[] {
  return [
    route({
      method: 'GET',
      url: '/api/library',
      operationId: 'listLibrary',
      summary: 'the files and folders of the library (or of one folder of it)',
      tag: 'library',
      access: 'viewer',
      query: LibraryQuerySchema,
      responses: { 200: { description: 'the entries, depth first in name order', schema: LibraryListSchema } },
      handler: async ({ query, ctx }) => ctx.library.list(query.under),
    }),
    route({
      method: 'GET',
      url: '/api/library/files/*',
      operationId: 'downloadFile',
      summary: 'download a file of the library',
      tag: 'library',
      access: 'viewer',
      params: LibraryPathParamsSchema,
      responses: { 200: { description: "the file's bytes", contentType: 'application/octet-stream' } },
      handler: async ({ params, ctx, reply }) => {
        const path = await ctx.library.existing(params['*']);
        const st = await stat(path);
        if (!st.isFile()) throw new PolyvisorError('ERR_USAGE', `${params['*']} is a folder`);
        reply.header('content-type', 'application/octet-stream').header('content-length', st.size);
        return createReadStream(path);
      },
    }),
    route({
      method: 'DELETE',
      url: '/api/library/files/*',
      operationId: 'removeFile',
      summary: 'remove a file, or a folder with everything in it',
      tag: 'library',
      access: 'operator',
      params: LibraryPathParamsSchema,
      responses: { 204: { description: 'removed' } },
      handler: async ({ params, ctx, reply }) => {
        await ctx.library.remove(params['*']);
        reply.code(204);
      },
    }),
    route({
      method: 'POST',
      url: '/api/library/convert',
      operationId: 'convertLibrary',
      summary: 'convert a VM (descriptor, package or folder of the library) into a library folder for another hypervisor (a job)',
      tag: 'library',
      access: 'operator',
      body: ConvertSchema,
      responses: { 202: { description: 'the convert job', schema: JobSchema } },
      handler: async ({ body, ctx, user, reply }) => {
        const { findCodec, findPackage, unknownTarget } = await import('../../vm/registry.js');
        if (!findPackage(body.target) && !findCodec(body.target)?.encode) throw unknownTarget(body.target);
        const source = await ctx.library.existing(body.source);
        const outDir = ctx.library.resolve(body.out);
        const job = ctx.jobs.start('convert', body.source, user.name, async (job) => {
          const [{ openVmSource }, { convertVm }] = await Promise.all([import('../../vm/source.js'), import('../../vm/convert.js')]);
          job.log(`converting ${body.source} for ${body.target} into ${body.out}`);
          const src = await openVmSource(source);
          try {
            const r = await convertVm(src, body.target, outDir, { diskFormat: body.diskFormat, descriptorOnly: body.descriptorOnly, force: body.force, signal: job.signal, onProgress: job.progress });
            const files = r.files.map((f) => relative(ctx.library.root, f));
            for (const f of files) job.log(`wrote ${f}`);
            for (const n of r.notes) job.log(`${n.action} ${n.setting}: ${n.reason}`);
            return { target: r.target, files, notes: r.notes };
          } finally {
            await src.close();
          }
        });
        reply.code(202);
        return jobView(job);
      },
    }),
  ];
}

/** The upload route: its body is the file's bytes, streamed, never parsed. */
export function uploadRoutes(): ApiRoute[] {
  return [
    route({
      method: 'PUT',
      url: '/api/library/files/*',
      operationId: 'uploadFile',
      summary: 'upload a file into the library (streamed to disk; at most the server\'s upload limit)',
      tag: 'library',
      access: 'operator',
      params: LibraryPathParamsSchema,
      query: UploadQuerySchema,
      rawBody: { contentType: 'application/octet-stream', description: "the file's bytes" },
      responses: { 201: { description: 'the file is in place', schema: UploadResultSchema } },
      handler: async ({ params, query, ctx, request, reply, audit }) => {
        const length = request.headers['content-length'];
        const declared = length === undefined ? undefined : Number(length);
        if (declared !== undefined && !Number.isSafeInteger(declared)) throw new PolyvisorError('ERR_USAGE', `Content-Length ${JSON.stringify(length)} is not a byte count`);
        const r = await ctx.library.upload(params['*'], request.raw, { declaredLength: declared, overwrite: query.overwrite });
        audit({ size: r.size, sha256: r.sha256 });
        reply.code(201);
        return r;
      },
    }),
  ];
}
