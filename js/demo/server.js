#!/usr/bin/env node
/**
 * A tiny static server for the demo page, on localhost only:
 *
 *   node demo/server.js [--bundle DIR] [--port N]
 *
 * serves the page (/), the package sources (/src/), the JavaScript guide's examples (/examples/),
 * onnxruntime-web's files from node_modules (/ort/) and the bundle (/bundle/). Pages are cross-origin isolated (COOP/COEP), so
 * onnxruntime-web may use WebAssembly threads if asked to.
 */
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const JS = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const DEFAULT_BUNDLE = join(JS, '..', 'ranet_edge', 'assets', 'default-bundle');

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream', '.ort': 'application/octet-stream', '.png': 'image/png', '.jpg': 'image/jpeg',
};

/**
 * Start the server. @param {{bundle?: string, port?: number, host?: string}} [options]
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export async function startServer({ bundle = DEFAULT_BUNDLE, port = 0, host = '127.0.0.1' } = {}) {
  /** @type {[string, string][]} URL prefix -> directory */
  const mounts = [
    ['/bundle/', resolve(bundle)],
    ['/ort/', join(JS, 'node_modules', 'onnxruntime-web', 'dist')],
    ['/src/', join(JS, 'src')],
    ['/examples/', join(JS, 'examples')],
    ['/', join(JS, 'demo')],
  ];
  const server = createServer(async (req, res) => {
    const send = (/** @type {number} */ code, /** @type {string} */ msg) => {
      res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(msg);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'GET only');
    let path;
    try {
      path = decodeURIComponent(new URL(req.url || '/', 'http://localhost').pathname);
    } catch {
      return send(400, 'bad path');
    }
    if (path === '/') path = '/index.html';
    if (path.includes('\0') || path.split('/').includes('..')) return send(403, 'forbidden');
    const mount = mounts.find(([prefix]) => path.startsWith(prefix));
    if (!mount) return send(404, 'not found');
    const [prefix, dir] = mount;
    const file = join(dir, path.slice(prefix.length));
    try {
      const real = await realpath(file);
      const root = await realpath(dir);
      const rel = relative(root, real);
      if (rel.startsWith(`..${sep}`) || rel === '..') return send(403, 'forbidden');
      const info = await stat(real);
      if (!info.isFile()) return send(404, 'not found');
      res.writeHead(200, {
        'Content-Type': TYPES[/** @type {keyof TYPES} */ (extname(real))] || 'application/octet-stream',
        'Content-Length': info.size, 'Cache-Control': 'no-store',
        'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
      });
      if (req.method === 'HEAD') return res.end();
      createReadStream(real).pipe(res);
    } catch {
      send(404, 'not found');
    }
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok(undefined));
  });
  const addr = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    url: `http://${host}:${addr.port}/`,
    close: () => new Promise((ok) => {
      server.closeAllConnections();
      server.close(() => ok(undefined));
    }),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (/** @type {string} */ name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const port = Number(opt('--port') ?? 8080);
  startServer({ bundle: opt('--bundle') ?? DEFAULT_BUNDLE, port }).then(
    ({ url }) => console.log(`demo: ${url} (Ctrl-C stops it)`),
    (err) => {
      console.error(`error: cannot serve on port ${port} (${err.message}); pick another with --port`);
      process.exit(2);
    },
  );
}
