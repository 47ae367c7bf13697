/** Users and the audit log: admins only. */
import { PolyvisorError } from '../../errors.js';
import { route, type ApiRoute } from '../route.js';
import { AuditListSchema, AuditQuerySchema, UserAddSchema, UserCreatedSchema, UserListSchema, UserParamsSchema } from '../schemas.js';
import { userView } from '../views.js';

export function userRoutes(): ApiRoute[] {
  return [
    route({
      method: 'GET',
      url: '/api/users',
      operationId: 'listUsers',
      summary: 'the users and their roles',
      tag: 'users',
      access: 'admin',
      responses: { 200: { description: 'the users', schema: UserListSchema } },
      handler: async ({ ctx }) => ({ items: ctx.store.listUsers().map(userView) }),
    }),
    route({
      method: 'POST',
      url: '/api/users',
      operationId: 'addUser',
      summary: 'add a user with a role; the answer carries its token, shown this once',
      tag: 'users',
      access: 'admin',
      body: UserAddSchema,
      responses: { 201: { description: 'the user and its token', schema: UserCreatedSchema } },
      handler: async ({ body, ctx, user, reply, audit }) => {
        audit({ name: body.name, role: body.role });
        const r = ctx.auth.createUser(body.name, body.role, user.name);
        reply.code(201);
        return { user: userView(r.user), token: r.token };
      },
    }),
    route({
      method: 'DELETE',
      url: '/api/users/:name',
      operationId: 'removeUser',
      summary: 'remove a user and its tokens (not the last admin)',
      tag: 'users',
      access: 'admin',
      params: UserParamsSchema,
      responses: { 204: { description: 'removed' } },
      handler: async ({ params, ctx, reply }) => {
        if (!ctx.store.findUser(params.name)) throw new PolyvisorError('ERR_NOT_FOUND', `no user named ${params.name}`);
        ctx.store.removeUser(params.name);
        reply.code(204);
      },
    }),
    route({
      method: 'GET',
      url: '/api/audit',
      operationId: 'listAudit',
      summary: 'the audit log, newest first: every state-changing request, who made it, what, when, and its status',
      tag: 'audit',
      access: 'admin',
      query: AuditQuerySchema,
      responses: { 200: { description: 'a page of entries', schema: AuditListSchema } },
      handler: async ({ query, ctx }) => {
        const r = ctx.audit.list(query);
        return { items: r.items.map((e) => ({ ...e, user: e.user ?? null, role: e.role ?? null, job: e.job ?? null })), next: r.next };
      },
    }),
  ];
}
