/** Who is signed in: the token's user and role, and what the role allows the console to show. */
import { createContext, useContext } from 'react';
import type { Me, Role } from './types';

const ORDER: Role[] = ['viewer', 'operator', 'admin'];

export interface Session {
  me: Me;
  /** true when the user's role is at least `role` (the server enforces the same order) */
  can(role: Role): boolean;
  signOut(): void;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error('useSession outside the signed-in app');
  return s;
}

export function makeSession(me: Me, signOut: () => void): Session {
  return { me, signOut, can: (role) => ORDER.indexOf(me.role) >= ORDER.indexOf(role) };
}
