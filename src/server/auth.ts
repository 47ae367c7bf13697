/**
 * Who may call the API. There is no anonymous access: every route but the health check and
 * the OpenAPI document takes a bearer token (RFC 6750 §2.1, `Authorization: Bearer TOKEN`).
 *
 * Tokens are 32 random bytes; the store keeps only their SHA-256 (a token of that entropy
 * cannot be found from its hash, so no slow password hash is needed), so a copy of the database
 * opens nothing. The first start of a server on an empty store creates the user `admin` and
 * prints its token once, on a line of its own: `admin token: TOKEN`.
 *
 * Roles are ordered: a viewer reads, an operator also changes VMs, disks and jobs, an admin
 * also manages hosts and users and reads the audit log. Each route declares the least role it
 * needs (./route.ts); a lower one is refused with 403.
 */
import { createHash, randomBytes } from 'node:crypto';
import { PolyvisorError } from '../errors.js';
import { ROLES, type Role, type Store, type StoredUser } from '../store/store.js';
import { ServerError } from './http-errors.js';

export interface Principal {
  name: string;
  role: Role;
}

/** The name of the user created on first start. */
export const FIRST_ADMIN = 'admin';
/** How long a console token stays valid: long enough to open a console, too short to keep. */
export const CONSOLE_TOKEN_TTL_MS = 60_000;

const TOKEN_PREFIX = 'pv_';

export function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** True when `role` is at least `needed`. */
export function allows(role: Role, needed: Role): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

export class Auth {
  readonly #store: Store;

  constructor(store: Store) {
    this.#store = store;
  }

  /**
   * On an empty store: creates the first admin and returns its token (the caller prints it,
   * once). Undefined when users exist already.
   */
  bootstrap(): string | undefined {
    if (this.#store.countUsers() > 0) return undefined;
    const token = newToken();
    try {
      this.#store.addUser({ name: FIRST_ADMIN, role: 'admin' }, { hash: tokenHash(token), kind: 'api' });
    } catch (e) {
      // another server on the same store bootstrapped first: it printed the token
      if (e instanceof PolyvisorError && e.code === 'ERR_EXISTS') return undefined;
      throw e;
    }
    return token;
  }

  /** The caller of a request, from its Authorization header; throws ERR_AUTH (401). */
  authenticate(header: string | undefined): Principal {
    if (!header) throw new ServerError('ERR_AUTH', 'this API needs a token: send Authorization: Bearer TOKEN');
    const m = /^Bearer\s+([A-Za-z0-9_-]{1,128})\s*$/i.exec(header);
    if (!m) throw new ServerError('ERR_AUTH', 'the Authorization header must read: Bearer TOKEN');
    const user = this.#store.userOfToken(tokenHash(m[1]!));
    if (!user) throw new ServerError('ERR_AUTH', 'unknown token');
    return { name: user.name, role: user.role };
  }

  /** Throws ERR_FORBIDDEN (403) unless `who` has at least `needed`. */
  require(who: Principal, needed: Role): void {
    if (!allows(who.role, needed)) throw new ServerError('ERR_FORBIDDEN', `${who.name} is a ${who.role}; this needs the ${needed} role`);
  }

  /** Creates a user and its first token (returned once). */
  createUser(name: string, role: Role, by: string): { user: StoredUser; token: string } {
    const token = newToken();
    const user = this.#store.addUser({ name, role, createdBy: by }, { hash: tokenHash(token), kind: 'api' });
    return { user, token };
  }

  /** A short-lived, single-use token that opens the console of `vm` (see useConsoleToken). */
  consoleToken(who: Principal, vm: string, now = Date.now()): { token: string; expiresAt: string } {
    this.#store.pruneTokens(new Date(now).toISOString());
    const token = newToken();
    const expiresAt = new Date(now + CONSOLE_TOKEN_TTL_MS).toISOString();
    this.#store.addToken({ hash: tokenHash(token), kind: 'console', user: who.name, vm, expiresAt });
    return { token, expiresAt };
  }

  /**
   * Spends a console token: the user it was issued to when it is for `vm`, unexpired and
   * unused; undefined otherwise (a second use, another VM, too late).
   */
  useConsoleToken(token: string, vm: string, now = Date.now()): Principal | undefined {
    const name = this.#store.useConsoleToken(tokenHash(token), vm, new Date(now).toISOString());
    if (!name) return undefined;
    const user = this.#store.findUser(name);
    return user && { name: user.name, role: user.role };
  }
}
