/**
 * The audit log: every request that may change state (any method but GET, HEAD and OPTIONS),
 * allowed or refused, is recorded after its answer with who made it (the token's user, or
 * nobody when it carried none), what (method, declared route, its parameters and what the
 * handler named), when, and the status it got. Reads are not recorded: they change nothing and
 * would bury the log. Secrets (tokens) never reach it: routes add only what they name.
 */
import type { AuditEntry, Store } from '../store/store.js';

const READS = new Set(['GET', 'HEAD', 'OPTIONS']);
/** The longest target text kept per entry. */
const MAX_TARGET = 4096;

export interface AuditRecord {
  user?: string;
  role?: string;
  method: string;
  route: string;
  target: Record<string, unknown>;
  status: number;
  job?: string;
}

export class AuditLog {
  readonly #store: Store;

  constructor(store: Store) {
    this.#store = store;
  }

  /** True for the methods the log records. */
  static records(method: string): boolean {
    return !READS.has(method.toUpperCase());
  }

  record(r: AuditRecord): number {
    let target = JSON.stringify(r.target);
    if (target.length > MAX_TARGET) target = JSON.stringify({ truncated: target.slice(0, MAX_TARGET) });
    return this.#store.addAudit({ at: new Date().toISOString(), user: r.user, role: r.role, method: r.method, route: r.route, target, status: r.status, job: r.job });
  }

  list(q: { before?: number; limit: number; user?: string }): { items: Array<Omit<AuditEntry, 'target'> & { target: Record<string, unknown> }>; next: number | null } {
    const rows = this.#store.listAudit({ ...q, limit: q.limit + 1 });
    const more = rows.length > q.limit;
    const items = rows.slice(0, q.limit).map((e) => ({ ...e, target: parseTarget(e.target) }));
    return { items, next: more ? items[items.length - 1]!.seq : null };
  }
}

function parseTarget(text: string): Record<string, unknown> {
  try {
    const v = JSON.parse(text) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : { value: v };
  } catch {
    return { text };
  }
}
