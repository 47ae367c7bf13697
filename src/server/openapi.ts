/**
 * The OpenAPI 3.1 document of the REST API, served at /api/openapi.json. It is generated from
 * the route declarations (./route.ts) and their zod schemas (./schemas.ts): zod writes JSON
 * Schema draft 2020-12, which is OpenAPI 3.1's own schema dialect (OpenAPI 3.1 §4.8.24), so
 * the schemas go in unchanged. The server's tests validate every response they get against
 * this document.
 */
import * as z from 'zod';
import { openApiPath, type ApiRoute } from './route.js';
import { API_SCHEMAS, REQUEST_SCHEMAS } from './schemas.js';

type Json = Record<string, unknown>;

const REF = (id: string) => `#/components/schemas/${id}`;

function clean(schema: Json): Json {
  // each component is embedded in the document: its own $schema and $id would start a new resource
  const { $schema: _s, $id: _i, ...rest } = schema;
  return rest;
}

/**
 * A body's schema: a $ref to its named component. Every body is one (zod would give an unnamed
 * schema its own $defs, whose local references do not resolve inside the document).
 */
function bodySchema(schema: z.ZodType, io: 'input' | 'output', where: string): Json {
  const registry = io === 'input' ? REQUEST_SCHEMAS : API_SCHEMAS;
  const id = registry.get(schema)?.id;
  if (!id) throw new Error(`${where}: the body schema is not a named component (src/server/schemas.ts)`);
  return { $ref: REF(id) };
}

function parameters(schema: z.ZodType | undefined, where: 'path' | 'query'): Json[] {
  if (!schema) return [];
  const js = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as { properties?: Record<string, Json>; required?: string[] };
  return Object.entries(js.properties ?? {}).map(([name, s]) => {
    const { description, ...rest } = s;
    return {
      name: where === 'path' && name === '*' ? 'path' : name,
      in: where,
      required: where === 'path' || (js.required ?? []).includes(name),
      ...(description ? { description } : {}),
      schema: rest,
    };
  });
}

export function openApiDocument(routes: ApiRoute[], version: string): Json {
  const components: Record<string, Json> = {};
  for (const [registry, io] of [
    [API_SCHEMAS, 'output'],
    [REQUEST_SCHEMAS, 'input'],
  ] as const) {
    const out = z.toJSONSchema(registry, { io, uri: REF, unrepresentable: 'any' }) as { schemas: Record<string, Json> };
    for (const [id, s] of Object.entries(out.schemas)) components[id] = clean(s);
  }
  const paths: Record<string, Record<string, Json>> = {};
  for (const r of routes) {
    const responses: Record<string, Json> = {};
    for (const [status, d] of Object.entries(r.responses)) {
      responses[status] = d.schema || d.contentType
        ? { description: d.description, content: { [d.contentType ?? 'application/json']: { schema: d.schema ? bodySchema(d.schema, 'output', `${r.operationId} ${status}`) : d.contentType === 'application/json' ? { type: 'object' } : { type: 'string' } } } }
        : { description: d.description };
    }
    responses.default = { description: 'a failure: 400 malformed request, 401 no or unknown token, 403 role too low, 404, 409 state conflict, 413 too large, 422 content Polyvisor cannot take, 5xx', content: { 'application/json': { schema: { $ref: REF('Error') } } } };
    const op: Json = {
      operationId: r.operationId,
      summary: r.summary,
      tags: [r.tag],
      'x-polyvisor-role': r.access,
      security: r.access === 'public' ? [] : [{ bearer: [] }],
      parameters: [...parameters(r.params, 'path'), ...parameters(r.query, 'query')],
      responses,
    };
    if (r.body) op.requestBody = { required: true, content: { 'application/json': { schema: bodySchema(r.body, 'input', r.operationId) } } };
    if (r.rawBody) op.requestBody = { required: true, description: r.rawBody.description, content: { [r.rawBody.contentType]: { schema: { type: 'string', contentMediaType: r.rawBody.contentType } } } };
    (paths[openApiPath(r.url)] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Polyvisor',
      version,
      description: 'Hosts, VMs, the library of disks and images, and jobs. Every route but this document and /api/health takes a bearer token; each states the least role it needs (x-polyvisor-role: viewer < operator < admin).',
    },
    jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
    security: [{ bearer: [] }],
    paths,
    components: { schemas: components, securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'a Polyvisor API token' } } },
  };
}
