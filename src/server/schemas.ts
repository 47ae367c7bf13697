/**
 * The REST API's shapes, as zod schemas: requests are validated with them, and the OpenAPI
 * document (./openapi.ts) is generated from them (zod's JSON Schema output is draft 2020-12,
 * the dialect of OpenAPI 3.1), so the document cannot drift from what the server accepts and
 * sends. Schemas registered in `API_SCHEMAS` become named components.
 */
import * as z from 'zod';
import { JOB_STATES, ROLES, StoredDiskSchema, VM_NAME, VM_STATES } from '../store/store.js';
import { VmSpecSchema } from '../vm/spec.js';

/** Named components of the OpenAPI document: what the server sends (zod's output side). */
export const API_SCHEMAS = z.registry<{ id: string; description?: string }>();
/** Named request bodies (zod's input side: a field with a default may be left out). */
export const REQUEST_SCHEMAS = z.registry<{ id: string; description?: string }>();

/** `z.core.$ZodType`: the VM model's schemas are written with zod's mini API (../vm/spec.ts) */
function named<T extends z.core.$ZodType>(id: string, schema: T, description?: string): T {
  API_SCHEMAS.add(schema, { id, description });
  return schema;
}

function request<T extends z.ZodType>(id: string, schema: T, description?: string): T {
  REQUEST_SCHEMAS.add(schema, { id, description });
  return schema;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const nameField = (what: string) => z.string().regex(NAME, `a ${what} name: letters, digits, '.', '_' and '-', starting with a letter or digit (at most 64)`);
const timestamp = z.string().describe('ISO 8601 time');

// ---------- errors ----------

export const ErrorBodySchema = named(
  'Error',
  z.object({
    error: z.object({
      code: z.string().describe('a stable code: the table in docs, shared with the CLI'),
      message: z.string(),
      field: z.string().optional().describe('the request field that failed validation, as body.cpu.count'),
    }),
  }),
  'every failure: a stable code and a message that names what failed',
);

// ---------- system ----------

export const HealthSchema = named('Health', z.object({ status: z.literal('ok'), version: z.string() }));
export const MeSchema = named('Me', z.object({ name: z.string(), role: z.enum(ROLES) }));

// ---------- hosts ----------

export const HostSchema = named(
  'Host',
  z.object({
    name: z.string(),
    uri: z.string(),
    driver: z.string(),
    options: z.object({ identityFile: z.string().optional(), storageDir: z.string().optional() }),
    addedAt: timestamp.optional().describe('absent for the local engine, which is always there'),
    vms: z.number().int().min(0),
  }),
);
export const HostListSchema = named('HostList', z.object({ items: z.array(HostSchema) }));
export const HostAddSchema = request('HostAdd',
  z.strictObject({
    uri: z.string().startsWith('xen+ssh://', 'a Xen host URI: xen+ssh://[user@]host[:port]').max(1024),
    name: nameField('host').optional().describe("default: the URI's host name"),
    identityFile: z.string().max(4096).optional().describe('the SSH private key, a path on the server'),
    storageDir: z.string().max(4096).optional().describe('the folder on the host for VMs (default /var/lib/polyvisor)'),
    check: z.boolean().default(true).describe('connect and run xl before adding it'),
  }),
);
export const HostParamsSchema = z.strictObject({ name: z.string().max(64) });

// ---------- VMs ----------

export const VmSummarySchema = named(
  'VmSummary',
  z.object({
    name: z.string(),
    uuid: z.string(),
    host: z.string(),
    state: z.enum(VM_STATES),
    pid: z.number().int().nullable(),
    sourceKind: z.string(),
    cpus: z.number().int().min(0),
    memoryBytes: z.number().int().min(0),
    tags: z.array(z.string()),
    createdAt: timestamp,
    startedAt: timestamp.nullable(),
  }),
);
export const VmListSchema = named(
  'VmList',
  z.object({
    items: z.array(VmSummarySchema),
    total: z.number().int().min(0).describe('VMs matching the filters, on every page'),
    next: z.string().nullable().describe('pass as `after` for the next page; null on the last one'),
  }),
);
export const VmListQuerySchema = z.strictObject({
  host: z.string().max(64).optional(),
  state: z.enum(VM_STATES).optional(),
  tag: z.string().max(64).optional(),
  after: z.string().max(64).optional().describe('the last name of the previous page'),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});
named('VmSpec', VmSpecSchema, 'the neutral VM model every descriptor codec reads and writes');
named('StoredDisk', StoredDiskSchema, 'how one disk of a stored VM reaches its host');
export const VmSchema = named(
  'Vm',
  VmSummarySchema.extend({
    source: z.string(),
    disks: z.array(StoredDiskSchema),
    spec: VmSpecSchema,
  }),
);
export const VmParamsSchema = z.strictObject({ name: z.string().regex(VM_NAME, 'a VM name') });
export const VmImportSchema = request('VmImport',
  z.strictObject({
    source: z.string().min(1).max(4096).describe('a descriptor, package or folder in the library, relative to it'),
    name: nameField('VM').optional().describe('default: from the descriptor'),
    host: z.string().max(64).optional().describe('default: the local engine'),
    copy: z.boolean().default(false).describe('convert every disk into the store'),
    persist: z.boolean().default(false).describe('the guest writes to the source disks themselves'),
    adapt: z.boolean().default(true).describe('adapt a Linux guest from another hypervisor for KVM'),
  }),
);
export const VmStopSchema = request('VmStop',
  z.strictObject({ timeoutSeconds: z.number().min(0).max(600).default(30).describe('how long the guest gets to power off before it is forced off') }),
);
export const VmStopResultSchema = named('VmStopResult', z.object({ name: z.string(), stop: z.enum(['graceful', 'forced']), vm: VmSummarySchema }));
export const VmRemoveQuerySchema = z.strictObject({ force: z.enum(['true', 'false']).default('false').transform((v) => v === 'true') });
export const VmMoveSchema = request('VmMove', z.strictObject({ to: z.string().min(1).max(64).describe('the host ("local" is the local engine)') }));
export const VmExportSchema = request('VmExport',
  z.strictObject({
    target: z.string().min(1).max(32).describe('xl, libvirt, vmx, ovf, hyperv, ova, xva'),
    out: z.string().min(1).max(4096).optional().describe('a library folder (default exports/NAME-TARGET)'),
    diskFormat: z.string().max(32).optional(),
    force: z.boolean().default(false).describe('replace files in the folder'),
  }),
);
export const VmVerifySchema = request('VmVerify',
  z.strictObject({
    expect: z.string().min(1).max(1024).optional().describe('text the serial console must show (default: a login prompt)'),
    timeoutSeconds: z.number().min(1).max(3600).default(120),
  }),
);
export const VmTagsSchema = request('VmTags', z.strictObject({ tags: z.array(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$/, 'a tag: letters, digits and . _ : = -')).max(64) }));
export const ConsoleTokenSchema = named(
  'ConsoleToken',
  z.object({ vm: z.string(), token: z.string(), expiresAt: timestamp, singleUse: z.literal(true) }),
  'a short-lived token that opens one console session of one VM, once',
);

// ---------- library ----------

export const LibraryEntrySchema = named(
  'LibraryEntry',
  z.object({ path: z.string().describe('relative to the library'), type: z.enum(['file', 'folder']), size: z.number().int().min(0), modifiedAt: timestamp }),
);
export const LibraryListSchema = named('LibraryList', z.object({ items: z.array(LibraryEntrySchema), truncated: z.boolean() }));
export const LibraryQuerySchema = z.strictObject({ under: z.string().max(4096).optional() });
export const LibraryPathParamsSchema = z.strictObject({ '*': z.string().min(1).max(4096) });
export const UploadQuerySchema = z.strictObject({ overwrite: z.enum(['true', 'false']).default('false').transform((v) => v === 'true') });
export const UploadResultSchema = named('Upload', z.object({ path: z.string(), size: z.number().int().min(0), sha256: z.string() }));
export const ConvertSchema = request('Convert',
  z.strictObject({
    source: z.string().min(1).max(4096).describe('a descriptor, package or folder in the library'),
    target: z.string().min(1).max(32),
    out: z.string().min(1).max(4096).describe('a library folder'),
    diskFormat: z.string().max(32).optional(),
    descriptorOnly: z.boolean().default(false),
    force: z.boolean().default(false),
  }),
);

// ---------- jobs ----------

export const JobSchema = named(
  'Job',
  z.object({
    id: z.string(),
    kind: z.string(),
    target: z.string(),
    state: z.enum(JOB_STATES),
    done: z.number().min(0),
    total: z.number().min(0),
    createdBy: z.string().nullable(),
    createdAt: timestamp,
    startedAt: timestamp.nullable(),
    endedAt: timestamp.nullable(),
    error: z.object({ code: z.string(), message: z.string() }).nullable(),
    result: z.unknown().describe('what the operation returned (kind-specific)'),
  }),
);
export const JobLogLineSchema = named('JobLogLine', z.object({ seq: z.number().int(), at: timestamp, line: z.string() }));
export const JobDetailSchema = named('JobDetail', JobSchema.extend({ log: z.array(JobLogLineSchema) }));
export const JobListSchema = named('JobList', z.object({ items: z.array(JobSchema), next: z.string().nullable() }));
export const JobListQuerySchema = z.strictObject({
  state: z.enum(JOB_STATES).optional(),
  before: z.string().max(64).optional().describe('the createdAt of the last job of the previous page'),
  limit: z.coerce.number().int().min(1).max(500).default(50),
});
export const JobParamsSchema = z.strictObject({ id: z.string().regex(/^[0-9a-f-]{36}$/, 'a job id (a UUID)') });

// ---------- users and audit ----------

export const UserSchema = named('User', z.object({ name: z.string(), role: z.enum(ROLES), createdAt: timestamp, createdBy: z.string().nullable() }));
export const UserListSchema = named('UserList', z.object({ items: z.array(UserSchema) }));
export const UserAddSchema = request('UserAdd', z.strictObject({ name: nameField('user'), role: z.enum(ROLES) }));
export const UserCreatedSchema = named('UserCreated', z.object({ user: UserSchema, token: z.string().describe('shown once: the server keeps only its SHA-256') }));
export const UserParamsSchema = z.strictObject({ name: z.string().max(64) });
export const AuditEntrySchema = named(
  'AuditEntry',
  z.object({
    seq: z.number().int(),
    at: timestamp,
    user: z.string().nullable(),
    role: z.string().nullable(),
    method: z.string(),
    route: z.string(),
    target: z.record(z.string(), z.unknown()),
    status: z.number().int(),
    job: z.string().nullable(),
  }),
);
export const AuditListSchema = named('AuditList', z.object({ items: z.array(AuditEntrySchema), next: z.number().int().nullable() }));
export const AuditQuerySchema = z.strictObject({
  before: z.coerce.number().int().min(1).optional(),
  user: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});
