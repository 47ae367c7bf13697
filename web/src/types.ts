/**
 * The API's shapes as the console uses them (the server's OpenAPI document, components
 * Vm, VmSummary, Job, JobLogLine, LibraryEntry, Inspection, is the reference).
 */
export type Role = 'viewer' | 'operator' | 'admin';
export type VmState = 'stopped' | 'running' | 'paused' | string;
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface Me {
  name: string;
  role: Role;
}

export interface Host {
  name: string;
  uri: string;
  driver: string;
  vms: number;
}

export interface VmSummary {
  name: string;
  uuid: string;
  host: string;
  state: VmState;
  pid: number | null;
  sourceKind: string;
  cpus: number;
  memoryBytes: number;
  tags: string[];
  createdAt: string;
  startedAt: string | null;
}

export interface VmDiskSpec {
  device: string;
  bus: string;
  file?: string;
  format?: string;
  capacity?: number;
  controllerModel?: string;
  target?: string;
  readOnly?: boolean;
}

export interface VmSpec {
  name: string;
  uuid?: string;
  description?: string;
  firmware: { type: string; secureBoot?: boolean; tpm?: boolean };
  virtualization: string;
  cpu: { count: number; sockets?: number; cores?: number; threads?: number };
  memory: { bytes: number; maxBytes?: number };
  disks: VmDiskSpec[];
  nics: Array<{ model?: string; mac?: string; network?: string }>;
  consoles: Array<{ type: string }>;
  graphics: Array<{ type: string; listen?: string }>;
  os: { family: string; variant?: string };
  boot?: { kernel?: string; cmdline?: string; bootloader?: string; order?: string[] };
  extra: Record<string, Record<string, unknown>>;
}

export interface StoredDisk {
  index: number;
  label: string;
  mode: string;
  path: string;
  format: string;
  source?: string;
}

export interface Vm extends VmSummary {
  source: string;
  disks: StoredDisk[];
  spec: VmSpec;
}

export interface Job {
  id: string;
  kind: string;
  target: string;
  state: JobState;
  done: number;
  total: number;
  createdBy: string | null;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  error: { code: string; message: string } | null;
  result: any;
}

export interface JobLogLine {
  seq: number;
  at: string;
  line: string;
}

export interface JobEventHandlers {
  state?: (job: Job) => void;
  progress?: (done: number, total: number) => void;
  log?: (line: JobLogLine) => void;
}

export interface ConversionNote {
  setting: string;
  action: 'dropped' | 'changed' | 'kept';
  from?: unknown;
  to?: unknown;
  reason: string;
}

export interface Inspection {
  source: string;
  kind: string;
  spec: VmSpec;
  disks: Array<{ index: number; file: string; format: string | null; virtualSize: number | null; error: string | null }>;
  notes: ConversionNote[];
  target: string;
  targetNotes: ConversionNote[] | null;
}

export interface LibraryEntry {
  path: string;
  type: 'file' | 'folder';
  size: number;
  modifiedAt: string;
}

export const ENDED: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);
