/**
 * What every route handler reaches: the estate (hosts and VMs, the same library calls as the
 * CLI), its store, and the server's own parts. One instance per server.
 */
import type { Estate } from '../hosts/estate.js';
import type { Store } from '../store/store.js';
import type { AuditLog } from './audit.js';
import type { Auth } from './auth.js';
import type { Jobs } from './jobs.js';
import type { Library } from './library.js';
import type { VmLocks } from './vm-locks.js';

export interface ServerContext {
  dataDir: string;
  estate: Estate;
  store: Store;
  auth: Auth;
  audit: AuditLog;
  jobs: Jobs;
  library: Library;
  locks: VmLocks;
  version: string;
}
