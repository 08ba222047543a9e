/** Paths and readers the tests share: the shipped bundle and images, the Python vectors. */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateRawSync } from 'node:zlib';

export const JS = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = join(JS, '..');
export const BUNDLE = join(ROOT, 'ranet_edge', 'assets', 'default-bundle');
export const FIXTURES = join(JS, 'test', 'fixtures');
export const VECTORS = JSON.parse(readFileSync(join(FIXTURES, 'vectors.json'), 'utf8'));

/** Every exit's Python logits: [exit] -> Float32Array (images * classes). */
export function pythonLogits() {
  const [k, n, c] = VECTORS.logits.shape;
  const buf = readFileSync(join(FIXTURES, VECTORS.logits.file));
  const all = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  return Array.from({ length: k }, (_, e) => all.subarray(e * n * c, (e + 1) * n * c));
}

/** Parse one .npy array (uint8 or int64 little-endian, C order). @param {Buffer} b */
function parseNpy(b) {
  const major = b[6];
  const len = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = b.subarray(start, start + len).toString('latin1');
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? '').split(',').filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error('fortran-ordered npy');
  const body = b.subarray(start + len);
  const copy = body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength);
  if (descr === '|u1') return { shape, data: new Uint8Array(copy) };
  if (descr === '<i8') return { shape, data: new BigInt64Array(copy) };
  return { shape, data: null, descr };
}

/** Arrays of a .npz file (zip, stored or deflated), by name. @param {string} path */
export function readNpz(path) {
  const b = readFileSync(path);
  let eocd = b.length - 22;
  while (eocd >= 0 && b.readUInt32LE(eocd) !== 0x06054b50) eocd--;
  const count = b.readUInt16LE(eocd + 10);
  let p = b.readUInt32LE(eocd + 16);
  /** @type {Record<string, {shape: number[], data: any}>} */
  const out = {};
  for (let i = 0; i < count; i++) {
    const method = b.readUInt16LE(p + 10);
    const size = b.readUInt32LE(p + 20);
    const nameLen = b.readUInt16LE(p + 28);
    const skip = nameLen + b.readUInt16LE(p + 30) + b.readUInt16LE(p + 32);
    const name = b.subarray(p + 46, p + 46 + nameLen).toString('utf8');
    const local = b.readUInt32LE(p + 42);
    const dataAt = local + 30 + b.readUInt16LE(local + 26) + b.readUInt16LE(local + 28);
    const raw = b.subarray(dataAt, dataAt + size);
    out[name.replace(/\.npy$/, '')] = parseNpy(method === 8 ? inflateRawSync(raw) : raw);
    p += 46 + skip;
  }
  return out;
}

/** The shipped validation images as {data, width, height} RGB pixels. */
export function shippedImages() {
  const { x } = readNpz(join(ROOT, VECTORS.images.path));
  const [n, h, w, c] = x.shape;
  return Array.from({ length: n }, (_, i) => ({ data: x.data.subarray(i * h * w * c, (i + 1) * h * w * c), width: w, height: h, channels: c }));
}

/** Largest |a - b| over max |b| (the export validation's relative error). @param {ArrayLike<number>} a @param {ArrayLike<number>} b */
export function relativeError(a, b) {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

/** The predict() options of a vectors key ('p0.5', '0.9', '0.95,0.9,...', 'entropy:0.5', 'patience:2'). @param {any} p */
export function optionsOf(p) {
  if (p.patience !== undefined) return { patience: p.patience };
  const given = p.operating_point !== undefined ? { operatingPoint: p.operating_point } : { thresholds: p.thresholds };
  return p.rule && p.rule !== 'max_prob' ? { ...given, rule: p.rule } : given;
}

// The bundle contract as JSON Schema, the very files the Python package ships
// (ranet_edge/schemas), compiled once with ajv (draft 2020-12).
import Ajv2020 from 'ajv/dist/2020.js';

export const SCHEMAS = join(ROOT, 'ranet_edge', 'schemas');
const ajv = new Ajv2020({ allErrors: true, strict: true, strictTuples: false }) // shape: a batch axis (null: dynamic), then sizes;
const compiled = {
  manifest: ajv.compile(JSON.parse(readFileSync(join(SCHEMAS, 'manifest.schema.json'), 'utf8'))),
  thresholds: ajv.compile(JSON.parse(readFileSync(join(SCHEMAS, 'thresholds.schema.json'), 'utf8'))),
};

/**
 * The schema's errors for one parsed manifest.json or thresholds.json ([] when it follows the contract).
 * @param {'manifest' | 'thresholds'} kind @param {unknown} data
 */
export function contractErrors(kind, data) {
  const validate = compiled[kind];
  return validate(data) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}`);
}

/** Throw unless the bundle directory's manifest.json (and thresholds.json, if any) follow the contract. @param {string} dir */
export function assertContract(dir) {
  for (const [kind, file] of /** @type {const} */ ([['manifest', 'manifest.json'], ['thresholds', 'thresholds.json']])) {
    let text;
    try { text = readFileSync(join(dir, file), 'utf8'); } catch { if (kind === 'thresholds') continue; throw new Error(`${dir} has no ${file}`); }
    const errors = contractErrors(kind, JSON.parse(text));
    if (errors.length) throw new Error(`${join(dir, file)} breaks ${kind}.schema.json: ${errors.slice(0, 5).join('; ')}`);
  }
}
