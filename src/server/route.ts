/**
 * A route of the REST API, declared once: method, path, the least role that may call it, the
 * zod schemas of its parameters, query and body, and its responses. The same declaration
 * registers the Fastify route, validates requests, enforces the role (./auth.ts) and writes
 * the route's operation in the OpenAPI document (./openapi.ts), so none of them can drift.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type * as z from 'zod';
import type { Role } from '../store/store.js';
import type { Principal } from './auth.js';
import type { ServerContext } from './context.js';

export type Access = Role | 'public';

export interface ResponseDecl {
  description: string;
  /** a JSON body; absent for 204 and for streams */
  schema?: z.ZodType;
  /** default application/json */
  contentType?: string;
}

export interface RouteInput<P, Q, B> {
  params: P;
  query: Q;
  body: B;
  /** who called (undefined only on public routes) */
  user: Principal;
  request: FastifyRequest;
  reply: FastifyReply;
  ctx: ServerContext;
  /** adds to what the audit log records of this request (never a secret) */
  audit(detail: Record<string, unknown>): void;
}

export interface ApiRoute<P extends z.ZodType = z.ZodType, Q extends z.ZodType = z.ZodType, B extends z.ZodType = z.ZodType> {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Fastify's form: /api/vms/:name; a trailing * takes the rest of the path */
  url: string;
  operationId: string;
  summary: string;
  tag: string;
  access: Access;
  params?: P;
  query?: Q;
  body?: B;
  /** a request body that is not JSON: streamed to the handler, never parsed (uploads) */
  rawBody?: { contentType: string; description: string };
  responses: Record<number, ResponseDecl>;
  handler(input: RouteInput<z.output<P>, z.output<Q>, z.output<B>>): Promise<unknown>;
}

/** Declares a route with its handler typed from its schemas. */
export function route<P extends z.ZodType = z.ZodType, Q extends z.ZodType = z.ZodType, B extends z.ZodType = z.ZodType>(r: ApiRoute<P, Q, B>): ApiRoute {
  return r as unknown as ApiRoute;
}

/** The OpenAPI path of a Fastify URL: /api/vms/:name → /api/vms/{name}, a trailing * → {path}. */
export function openApiPath(url: string): string {
  return url.replace(/:([A-Za-z_]+)/g, '{$1}').replace(/\*$/, '{path}');
}
