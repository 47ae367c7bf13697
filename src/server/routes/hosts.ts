/** Hosts: the local engine and the Xen hosts the estate reaches (../../hosts/estate.ts). */
import { LOCAL_HOST } from '../../hosts/local.js';
import { route, type ApiRoute } from '../route.js';
import { HostAddSchema, HostListSchema, HostParamsSchema, HostSchema } from '../schemas.js';

export function hostRoutes(): ApiRoute[] {
  return [
    route({
      method: 'GET',
      url: '/api/hosts',
      operationId: 'listHosts',
      summary: 'the hosts, the local engine first, with how many VMs each has',
      tag: 'hosts',
      access: 'viewer',
      responses: { 200: { description: 'the hosts', schema: HostListSchema } },
      handler: async ({ ctx }) => {
        const counts = ctx.store.countVmsByHost();
        const local = { name: LOCAL_HOST, uri: 'qemu:///local', driver: 'qemu', options: {}, vms: counts.get(LOCAL_HOST) ?? 0 };
        return { items: [local, ...ctx.store.listHosts().map((h) => ({ ...h, vms: counts.get(h.name) ?? 0 }))] };
      },
    }),
    route({
      method: 'POST',
      url: '/api/hosts',
      operationId: 'addHost',
      summary: 'add a Xen host reached over SSH, after checking that its xl toolstack answers (unless check is false)',
      tag: 'hosts',
      access: 'admin',
      body: HostAddSchema,
      responses: { 201: { description: 'the host was added', schema: HostSchema } },
      handler: async ({ body, ctx, reply, audit }) => {
        const { parseXenUri } = await import('../../hosts/xen/uri.js');
        const name = body.name ?? parseXenUri(body.uri).host.replace(/[^A-Za-z0-9._-]/g, '-');
        audit({ name, uri: body.uri });
        const h = await ctx.estate.addHost(name, body.uri, { identityFile: body.identityFile, storageDir: body.storageDir, check: body.check });
        reply.code(201);
        return { ...h, vms: 0 };
      },
    }),
    route({
      method: 'DELETE',
      url: '/api/hosts/:name',
      operationId: 'removeHost',
      summary: 'forget a host (it must have no VMs in the store)',
      tag: 'hosts',
      access: 'admin',
      params: HostParamsSchema,
      responses: { 204: { description: 'the host was removed' } },
      handler: async ({ params, ctx, reply }) => {
        ctx.store.getHost(params.name);
        ctx.store.removeHost(params.name);
        reply.code(204);
      },
    }),
  ];
}
