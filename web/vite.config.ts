/**
 * The web console's build: `npx vite build --config web/vite.config.ts` from the repository
 * root writes dist/web/, which the server serves (src/server/web.ts). POLYVISOR_WEB_OUT
 * overrides the folder (helpers that build into their own dist). `npx vite --config
 * web/vite.config.ts` serves it for development, with /api (and its WebSockets) proxied to
 * a `polyvisor serve` on POLYVISOR_API (default http://127.0.0.1:8460).
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  root: here('.'),
  base: '/',
  plugins: [react()],
  build: {
    outDir: process.env.POLYVISOR_WEB_OUT ?? here('../dist/web'),
    emptyOutDir: true,
    // noVNC awaits at its top level (its H.264 probe): every browser that runs it supports ES2022
    target: 'es2022',
    sourcemap: true,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      '/api': { target: process.env.POLYVISOR_API ?? 'http://127.0.0.1:8460', ws: true },
    },
  },
});
