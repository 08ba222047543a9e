/**
 * Where a bundle's files come from: a directory (Node), a URL (browser, Node, React Native), or
 * any object with `readBytes(rel)` (React Native file systems, archives). Every relative path is
 * checked to stay inside the bundle before anything is read.
 */
import { BundleError } from './errors.js';

const SCHEME = /^[a-zA-Z][a-zA-Z0-9+.-]*:/;

/** True in Node (not in browsers or React Native). */
export const isNode = typeof process !== 'undefined' && !!process.versions && !!process.versions.node;

/**
 * Refuse a manifest path that is not a plain relative path (the Python runtime's rule, plus URL
 * schemes, which a URL bundle would otherwise follow off the bundle's origin).
 * @param {unknown} rel
 * @param {string} where the manifest's location, for the message
 * @returns {string}
 */
export function checkRelative(rel, where) {
  if (typeof rel !== 'string' || rel === '' || rel.startsWith('/') || rel.startsWith('\\') || SCHEME.test(rel)) {
    throw new BundleError(`graph path ${JSON.stringify(rel)} in ${where} must be relative to the bundle`);
  }
  return rel;
}

/** @param {unknown} status @param {string} url */
function httpMissing(status, url) {
  return status === 404 || status === 410 ? `HTTP ${status} at ${url}` : null;
}

class UrlSource {
  /** @param {URL} base @param {typeof fetch} fetchFn */
  constructor(base, fetchFn) {
    this.base = base;
    this.fetch = fetchFn;
    this.describe = base.href;
  }

  /** @param {string} rel */
  resolve(rel) {
    // Each segment is percent-encoded, so '?', '#' and '\\' stay part of a file name (as on a
    // POSIX file system); '..' segments stay '..' and are caught by the containment check.
    const encoded = rel.split('/').map((s) => (s === '..' || s === '.' ? s : encodeURIComponent(s))).join('/');
    const url = new URL(encoded, this.base);
    if (url.origin !== this.base.origin || !url.pathname.startsWith(this.base.pathname)) {
      throw new BundleError(`graph path ${JSON.stringify(rel)} escapes the bundle ${this.base.href}; refusing to load it`);
    }
    return url;
  }

  /** Refuse `rel` if it leaves the bundle. @param {string} rel */
  async check(rel) {
    this.resolve(rel);
  }

  /** @param {string} rel @returns {Promise<Uint8Array | null>} null when the file does not exist */
  async readBytes(rel) {
    const url = this.resolve(rel);
    let res;
    try {
      res = await this.fetch(url.href);
    } catch (err) {
      throw new BundleError(`cannot fetch ${url.href} (${oneLine(err)}); check the bundle URL and that the server is up`);
    }
    if (!res.ok) {
      if (httpMissing(res.status, url.href)) return null;
      throw new BundleError(`fetching ${url.href} failed with HTTP ${res.status}; check the server`);
    }
    return new Uint8Array(await res.arrayBuffer());
  }
}

class DirectorySource {
  /** @param {string} root @param {any} fs node:fs/promises @param {any} path node:path */
  constructor(root, fs, path) {
    this.root = path.resolve(root);
    this.fs = fs;
    this.path = path;
    this.describe = root;
  }

  /** @param {string} child @param {string} root */
  inside(child, root) {
    const r = this.path.relative(root, child);
    return r === '' || (!r.startsWith('..') && !this.path.isAbsolute(r));
  }

  /**
   * The real path of `rel` inside the bundle, null when it does not exist; refuses a path that
   * leaves the bundle, following symbolic links first as Python's Path.resolve() does.
   * @param {string} rel
   */
  async check(rel) {
    const { fs, path } = this;
    const file = path.resolve(this.root, rel);
    const escapes = () => new BundleError(`graph path ${JSON.stringify(rel)} escapes the bundle directory ${this.describe}; refusing to load it`);
    if (!this.inside(file, this.root)) throw escapes();
    let real;
    try {
      real = await fs.realpath(file);
    } catch {
      return null;
    }
    if (!this.inside(real, await fs.realpath(this.root))) throw escapes();
    return real;
  }

  /** @param {string} rel @returns {Promise<Uint8Array | null>} */
  async readBytes(rel) {
    const real = await this.check(rel);
    if (real === null) return null;
    const { fs } = this;
    const stat = await fs.stat(real);
    if (!stat.isFile()) return null;
    return new Uint8Array(await fs.readFile(real));
  }
}

/** A caller's own source: `{ readBytes(rel) => Promise<Uint8Array|ArrayBuffer|null>, describe? }`. */
class CustomSource {
  /** @param {{readBytes: (rel: string) => Promise<Uint8Array | ArrayBuffer | null>, describe?: string}} src */
  constructor(src) {
    this.src = src;
    this.describe = src.describe || 'bundle';
  }

  /** Refuse `rel` if it leaves the bundle. @param {string} rel */
  async check(rel) {
    if (rel.split(/[/\\]/).includes('..')) {
      throw new BundleError(`graph path ${JSON.stringify(rel)} escapes the bundle ${this.describe}; refusing to load it`);
    }
  }

  /** @param {string} rel */
  async readBytes(rel) {
    await this.check(rel);
    const out = await this.src.readBytes(rel);
    return out == null ? null : out instanceof Uint8Array ? out : new Uint8Array(out);
  }
}

/**
 * @param {string | URL | {readBytes: Function, describe?: string}} bundle
 * @param {{fetch?: typeof fetch}} [options]
 */
export async function openSource(bundle, options = {}) {
  if (bundle && typeof bundle === 'object' && !(bundle instanceof URL) && typeof bundle.readBytes === 'function') {
    return new CustomSource(/** @type {any} */ (bundle));
  }
  const asUrl = bundle instanceof URL || (typeof bundle === 'string' && SCHEME.test(bundle) && !/^[a-zA-Z]:[\\/]/.test(bundle));
  if (isNode && (!asUrl || String(bundle).startsWith('file:'))) {
    const [{ default: fs }, { default: path }, { fileURLToPath }] = await Promise.all([
      import('node:fs/promises'), import('node:path'), import('node:url')]);
    const dir = asUrl ? fileURLToPath(String(bundle)) : String(bundle);
    return new DirectorySource(dir, fs, path);
  }
  if (typeof bundle !== 'string' && !(bundle instanceof URL)) {
    throw new BundleError(`a bundle is a URL, a directory or an object with readBytes(path), got ${typeof bundle}`);
  }
  const here = typeof location !== 'undefined' && location.href ? location.href : undefined;
  let base;
  try {
    base = new URL(String(bundle), here);
  } catch {
    throw new BundleError(`bundle location ${JSON.stringify(String(bundle))} is not a valid URL; give an absolute URL`);
  }
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  base.search = '';
  base.hash = '';
  const fetchFn = options.fetch || globalThis.fetch;
  if (typeof fetchFn !== 'function') {
    throw new BundleError('no fetch() here to read a bundle URL; pass {fetch} to ExitChain.load or a readBytes source');
  }
  return new UrlSource(base, fetchFn.bind(globalThis));
}

/** The first line of an error's message. @param {unknown} err */
export function oneLine(err) {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0].slice(0, 200);
}

/**
 * SHA-256 of `bytes` as lower-case hex: WebCrypto where there is one (browsers on https or
 * localhost, Node), node:crypto otherwise in Node, or the caller's function.
 * @param {Uint8Array} bytes
 * @param {((bytes: Uint8Array) => string | Promise<string>) | undefined} custom
 */
export async function sha256Hex(bytes, custom) {
  if (custom) return String(await custom(bytes)).toLowerCase();
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (subtle) {
    const digest = new Uint8Array(await subtle.digest('SHA-256', bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
  }
  if (isNode) {
    const { createHash } = await import('node:crypto');
    return createHash('sha256').update(bytes).digest('hex');
  }
  throw new BundleError('no SHA-256 here to verify the graphs (WebCrypto needs https or localhost); '
    + 'serve the page over https or pass {sha256: bytes => hex} to ExitChain.load');
}
