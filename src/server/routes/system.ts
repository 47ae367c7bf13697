/** The routes every client starts with: health (public), the OpenAPI document (public), who am I. */
import { route, type ApiRoute } from '../route.js';
import { HealthSchema, MeSchema } from '../schemas.js';

export function systemRoutes(document: () => Record<string, unknown>): ApiRoute[] {
  return [
    route({
      method: 'GET',
      url: '/api/health',
      operationId: 'health',
      summary: 'whether the server answers (no token needed)',
      tag: 'system',
      access: 'public',
      responses: { 200: { description: 'the server runs', schema: HealthSchema } },
      handler: async ({ ctx }) => ({ status: 'ok', version: ctx.version }),
    }),
    route({
      method: 'GET',
      url: '/api/openapi.json',
      operationId: 'openapi',
      summary: 'this API, as an OpenAPI 3.1 document (no token needed)',
      tag: 'system',
      access: 'public',
      responses: { 200: { description: 'the OpenAPI document', contentType: 'application/json' } },
      handler: async () => document(),
    }),
    route({
      method: 'GET',
      url: '/api/me',
      operationId: 'me',
      summary: "the token's user and role",
      tag: 'system',
      access: 'viewer',
      responses: { 200: { description: 'the caller', schema: MeSchema } },
      handler: async ({ user }) => ({ name: user.name, role: user.role }),
    }),
  ];
}
