/**
 * How the store's records appear in the API: absent values as null (a client tests one shape),
 * and nothing the API does not declare (./schemas.ts).
 */
import type { StoredJob, StoredUser, StoredVm, VmSummary } from '../store/store.js';

export function vmSummaryView(v: VmSummary) {
  return {
    name: v.name,
    uuid: v.uuid,
    host: v.host,
    state: v.state,
    pid: v.pid ?? null,
    sourceKind: v.sourceKind,
    cpus: v.cpus,
    memoryBytes: v.memoryBytes,
    tags: v.tags,
    createdAt: v.createdAt,
    startedAt: v.startedAt ?? null,
  };
}

export function summaryOf(vm: StoredVm, tags: string[]): VmSummary {
  return { name: vm.name, uuid: vm.uuid, host: vm.host, state: vm.state, pid: vm.pid, sourceKind: vm.sourceKind, cpus: vm.spec.cpu.count, memoryBytes: vm.spec.memory.bytes, tags, createdAt: vm.createdAt, startedAt: vm.startedAt };
}

export function vmView(vm: StoredVm, tags: string[]) {
  return { ...vmSummaryView(summaryOf(vm, tags)), source: vm.source, disks: vm.disks, spec: vm.spec };
}

export function jobView(j: StoredJob) {
  return {
    id: j.id,
    kind: j.kind,
    target: j.target,
    state: j.state,
    done: j.done,
    total: j.total,
    createdBy: j.createdBy ?? null,
    createdAt: j.createdAt,
    startedAt: j.startedAt ?? null,
    endedAt: j.endedAt ?? null,
    error: j.error ?? null,
    result: j.result ?? null,
  };
}

export function userView(u: StoredUser) {
  return { name: u.name, role: u.role, createdAt: u.createdAt, createdBy: u.createdBy ?? null };
}
