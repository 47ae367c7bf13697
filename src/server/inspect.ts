/**
 * `POST /api/library/inspect`: what `polyvisor vm inspect` shows of a VM source in the library
 * (its kind, VmSpec, disks with format and size, and the notes of reading it), and what a
 * target would not carry as it is: the local engine's notes (its QEMU command line built
 * without running it) or a descriptor target's (its encoder run without writing). The import
 * page of the web console shows both before anything is imported. Nothing is written.
 *
 * A package target (ova, xva) is answered with the notes of the descriptor it carries (OVF for
 * OVA); XVA's own are known only when it is written, and are listed by the export job.
 */
import { sep } from 'node:path';
import * as z from 'zod';
import { LOCAL_HOST } from '../hosts/local.js';
import type { ConversionNote } from '../vm/codec.js';
import { VmSpecSchema } from '../vm/spec.js';
import { route, type ApiRoute } from './route.js';
import { API_SCHEMAS, REQUEST_SCHEMAS } from './schemas.js';

const NoteSchema = z.object({
  setting: z.string(),
  action: z.enum(['dropped', 'changed', 'kept']),
  from: z.unknown().optional(),
  to: z.unknown().optional(),
  reason: z.string(),
});
API_SCHEMAS.add(NoteSchema, { id: 'ConversionNote', description: 'a setting a reader or target could not carry as it was' });

export const InspectSchema = z.strictObject({
  source: z.string().min(1).max(4096).describe('a descriptor, package or folder in the library'),
  target: z.string().min(1).max(32).default(LOCAL_HOST).describe('"local" (the local engine), or a descriptor or package target: xl, libvirt, vmx, ovf, hyperv, ova, xva'),
});
REQUEST_SCHEMAS.add(InspectSchema, { id: 'Inspect' });

export const InspectionSchema = z.object({
  source: z.string(),
  kind: z.string().describe('the codec or package that read it'),
  spec: VmSpecSchema,
  disks: z.array(
    z.object({
      index: z.number().int(),
      file: z.string(),
      format: z.string().nullable(),
      virtualSize: z.number().int().min(0).nullable(),
      error: z.string().nullable().describe('why the disk could not be opened'),
    }),
  ),
  notes: z.array(NoteSchema).describe('what reading the source could not place in the model'),
  target: z.string(),
  targetNotes: z.array(NoteSchema).nullable().describe('what the target would not carry as it is; null when only writing tells (xva)'),
});
API_SCHEMAS.add(InspectionSchema, { id: 'Inspection' });

const note = (n: ConversionNote) => ({ setting: n.setting, action: n.action, reason: n.reason, ...(n.from === undefined ? {} : { from: n.from }), ...(n.to === undefined ? {} : { to: n.to }) });

export function inspectRoutes(): ApiRoute[] {
  return [
    route({
      method: 'POST',
      url: '/api/library/inspect',
      operationId: 'inspectLibrary',
      summary: 'what a VM source of the library holds (as `vm inspect` shows it) and what a target would not carry; writes nothing',
      tag: 'library',
      access: 'viewer',
      body: InspectSchema,
      responses: { 200: { description: 'the inspection', schema: InspectionSchema } },
      handler: async ({ body, ctx }) => {
        const [{ openVmSource }, { findCodec, findPackage, unknownTarget }] = await Promise.all([import('../vm/source.js'), import('../vm/registry.js')]);
        const target = body.target;
        const codec = target === LOCAL_HOST ? undefined : findCodec(target === 'ova' ? 'ovf' : target);
        if (target !== LOCAL_HOST && !findPackage(target) && !codec?.encode) throw unknownTarget(target);
        const path = await ctx.library.existing(body.source);
        const src = await openVmSource(path);
        try {
          // a disk's label names the package it is in: as a library path, never the server's own
          const label = (l: string) => l.split(ctx.library.root + sep).join('');
          const disks: Array<{ index: number; file: string; format: string | null; virtualSize: number | null; error: string | null }> = [];
          for (const d of src.disks) {
            try {
              const img = await d.open();
              disks.push({ index: d.index, file: label(d.label), format: img.format, virtualSize: img.virtualSize, error: null });
              await img.close();
            } catch (e) {
              disks.push({ index: d.index, file: label(d.label), format: null, virtualSize: null, error: (e as Error).message });
            }
          }
          let targetNotes: ConversionNote[] | null = null;
          if (target === LOCAL_HOST) {
            const { buildQemuArgv } = await import('../hosts/qemu/argv.js');
            const attachments = src.spec.disks.map((_d, i) => {
              const info = disks.find((x) => x.index === i);
              return info?.format ? { path: `/nonexistent/disk${i}`, format: info.format } : undefined;
            });
            // accel given: the builder probes nothing; the paths are never opened
            targetNotes = buildQemuArgv(src.spec, attachments, { qmpSocket: '/nonexistent/q', serialSocket: '/nonexistent/s', uefiVars: '/nonexistent/v' }, { accel: 'tcg' }).notes;
          } else if (codec?.encode) {
            const diskFiles = src.spec.disks.map((_d, i) => {
              const info = disks.find((x) => x.index === i);
              return info ? { file: `${src.spec.name}-disk${i}`, format: codec.defaultDiskFormat, capacity: info.virtualSize ?? 0 } : undefined;
            });
            targetNotes = codec.encode({ spec: src.spec, diskFiles, name: src.spec.name }).notes;
          }
          return { source: body.source, kind: src.kind, spec: src.spec, disks, notes: src.notes.map(note), target, targetNotes: targetNotes?.map(note) ?? null };
        } finally {
          await src.close();
        }
      },
    }),
  ];
}
