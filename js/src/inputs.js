/**
 * A call's inputs checked against what the bundle declares (the Python runtime's
 * runtime/inputs.py and runtime/tensors.py).
 *
 * An image bundle takes one float32 (N, C, H, W) tensor, as it always has. A bundle of named
 * inputs (a text encoder's int64 `input_ids` and `attention_mask`) takes an object (or a Map)
 * from input name to tensor -- an ort.Tensor or a plain {data, dims} whose data is the dtype's
 * typed array (BigInt64Array for int64) -- or one tensor when it has a single input. Each input
 * is checked against the manifest (name, dtype, rank, every fixed axis), and inputs must agree
 * on their batch and on every dynamic axis they share a name for (the sequence); a mismatch is
 * one InputError line naming the input and what was expected.
 */
import { BundleError, InputError } from './errors.js';
import { onDevice } from './tensors.js';

/**
 * @typedef {object} InputInfo one network input, as the manifest records it
 * @property {string} name
 * @property {string} dtype numpy name: float32, int64, ...
 * @property {(number | null)[]} shape null on a dynamic axis
 * @property {(string | null)[]} axes the name of each dynamic axis ('batch', 'sequence'), null on a fixed one
 */

/** The typed array that holds each dtype's values (onnxruntime's for float16 and bool). */
export const ARRAYS = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array,
  uint8: Uint8Array, bool: Uint8Array,
};

/** The dtype a plain typed array stands for, where nothing else says. @param {any} data @param {string} want */
function dtypeOf(data, want) {
  if (data instanceof Uint8Array && (want === 'bool' || want === 'uint8')) return want;
  const hit = Object.entries(ARRAYS).find(([, T]) => data instanceof T);
  if (hit) return hit[0];
  if (typeof globalThis.Float16Array === 'function' && data instanceof globalThis.Float16Array) return 'float16';
  return data?.constructor?.name ?? typeof data;
}

/** The axis name, or the fixed size, of each axis. @param {InputInfo} info */
export function describe(info) {
  const parts = info.shape.map((d, i) => info.axes[i] ?? String(d));
  return `${info.dtype} (${parts.join(', ')})`;
}

/**
 * The bundle's inputs: the manifest's `inputs`, or for a bundle that records none (an image
 * bundle, written before `inputs` existed) the one float32 image `preprocessing` describes.
 * @param {any} data the raw manifest @param {string} where for messages
 * @returns {InputInfo[]}
 */
export function inputsOf(data, where) {
  const bad = (/** @type {string} */ why) => new BundleError(`${where}: ${why}; re-export the bundle`);
  if (data.inputs === undefined || data.inputs === null) {
    const pre = data.preprocessing;
    if (!pre || typeof pre.input !== 'string') throw bad('it records neither inputs nor preprocessing.input');
    const shape = Array.isArray(pre.shape) ? pre.shape.map((/** @type {any} */ d) => (d === null ? null : Number(d)))
      : [null, 3, Number(pre.size), Number(pre.size)];
    return [{ name: pre.input, dtype: pre.dtype ?? 'float32', shape, axes: shape.map((d, i) => (i === 0 && d === null ? 'batch' : null)) }];
  }
  if (!Array.isArray(data.inputs) || data.inputs.length === 0) throw bad('inputs must be a non-empty list of input objects');
  const out = data.inputs.map((/** @type {any} */ e, /** @type {number} */ i) => {
    const ok = e && typeof e.name === 'string' && e.name && e.dtype in ARRAYS && Array.isArray(e.shape) && e.shape.length >= 1
      && Array.isArray(e.axes) && e.axes.length === e.shape.length
      && e.shape.every((/** @type {any} */ d, /** @type {number} */ j) => (d === null) === (typeof e.axes[j] === 'string') && (d === null || (Number.isInteger(d) && d >= 1)));
    if (!ok) throw bad(`inputs[${i}] needs a name, a dtype (${Object.keys(ARRAYS).join(', ')}), and a shape whose every axis is a size or a named axis`);
    return { name: e.name, dtype: e.dtype, shape: e.shape, axes: e.axes };
  });
  if (new Set(out.map((/** @type {InputInfo} */ i) => i.name)).size !== out.length) throw bad('inputs names a tensor twice');
  return out;
}

/** Whether `x` is one tensor ({data, dims} or ort.Tensor). @param {any} x */
const isTensor = (x) => !!x && typeof x === 'object' && 'dims' in x && !(x instanceof Map);

/** Whether `x` is a mapping of named tensors (a Map, or a plain object that is no tensor). @param {any} x */
export const isMapping = (x) => x instanceof Map
  || (!!x && typeof x === 'object' && !isTensor(x) && !Array.isArray(x) && !ArrayBuffer.isView(x));

/**
 * `x` checked against `inputs`, as ort.Tensors by name in the manifest's order.
 * @param {any} ort the onnxruntime namespace
 * @param {any} x a tensor, or an object or Map from name to tensor
 * @param {InputInfo[]} inputs
 * @returns {Map<string, any>}
 * @throws {InputError} a missing or unknown name, or a tensor of another type, dtype, rank or size
 */
export function checkNamed(ort, x, inputs) {
  const want = inputs.map((i) => `${i.name}: ${describe(i)}`).join(', ');
  if (!isMapping(x)) {
    if (inputs.length !== 1) {
      const got = x === null ? 'null' : isTensor(x) ? 'one tensor' : x?.constructor?.name ?? typeof x;
      throw new InputError(`this bundle takes ${inputs.length} named inputs (${want}); pass an object name -> tensor `
        + `({data: ${ARRAYS[/** @type {keyof ARRAYS} */ (inputs[0].dtype)].name}, dims}), got ${got}`);
    }
    x = { [inputs[0].name]: x };
  }
  const given = x instanceof Map ? x : new Map(Object.entries(x));
  const missing = inputs.filter((i) => !given.has(i.name)).map((i) => i.name);
  const unknown = [...given.keys()].filter((k) => !inputs.some((i) => i.name === k));
  if (missing.length || unknown.length) {
    throw new InputError(`inputs ${missing.length ? `missing ${missing.join(', ')}` : `unknown ${unknown.join(', ')}`}; this bundle takes ${want}`);
  }
  /** @type {Map<string, [number, string]>} axis name -> [size, the input that set it] */
  const sizes = new Map();
  const out = new Map();
  for (const info of inputs) out.set(info.name, checkOne(ort, given.get(info.name), info, sizes));
  return out;
}

/** @param {any} ort @param {any} t @param {InputInfo} info @param {Map<string, [number, string]>} sizes */
function checkOne(ort, t, info, sizes) {
  const { name } = info;
  const expected = describe(info);
  const T = ARRAYS[/** @type {keyof ARRAYS} */ (info.dtype)];
  if (!isTensor(t)) throw new InputError(`input ${name} must be a tensor ${expected} (ort.Tensor or {data: ${T.name}, dims}), got ${t === null ? 'null' : typeof t}`);
  const type = typeof t.type === 'string' ? t.type : dtypeOf(t.data, info.dtype);
  if (type !== info.dtype) throw new InputError(`input ${name} has dtype ${type}, expected ${expected}; give its values as a ${T.name}${info.dtype === 'int64' ? ' (BigInt64Array.from(values, BigInt))' : ''}`);
  const dims = Array.from(t.dims, Number);
  const shape = `(${dims.join(', ')})`;
  if (dims.length !== info.shape.length || !(dims[0] >= 1)) throw new InputError(`input ${name} has shape ${shape}, expected ${expected} with N >= 1`);
  for (let axis = 0; axis < dims.length; axis++) {
    const size = info.shape[axis];
    if (size !== null && dims[axis] !== size) throw new InputError(`input ${name} has shape ${shape}, expected ${expected}: axis ${axis} must be ${size}`);
    const key = info.axes[axis] ?? (axis === 0 ? 'batch' : null);
    if (key === null) continue;
    const seen = sizes.get(key) ?? [dims[axis], name];
    sizes.set(key, seen);
    if (seen[0] !== dims[axis]) {
      throw new InputError(`input ${name} has ${key} ${dims[axis]} but input ${seen[1]} has ${seen[0]}: inputs must agree on ${key} (pad to one length and mask the padding)`);
    }
  }
  if (onDevice(t)) return t;
  const count = dims.reduce((a, b) => a * b, 1);
  if (!t.data || t.data.length !== count) throw new InputError(`input ${name} holds ${t.data?.length ?? 0} values; its dims ${shape} need ${count}`);
  if (info.dtype.startsWith('float') && info.dtype !== 'float16') {
    for (let i = 0; i < count; i++) if (!Number.isFinite(t.data[i])) throw new InputError(`input ${name} contains NaN or infinite values`);
  }
  return t instanceof ort.Tensor ? t : new ort.Tensor(info.dtype, t.data, dims);
}

/**
 * A batch of zeros of every input (`dynamic` on each dynamic axis but the batch), for warm-up.
 * @param {any} ort @param {InputInfo[]} inputs @param {number} batch @param {number} [dynamic]
 */
export function zeroInputs(ort, inputs, batch, dynamic = 8) {
  return new Map(inputs.map((i) => {
    const dims = [batch, ...i.shape.slice(1).map((d) => d ?? dynamic)];
    const T = ARRAYS[/** @type {keyof ARRAYS} */ (i.dtype)];
    return [i.name, new ort.Tensor(i.dtype, new T(dims.reduce((a, b) => a * b, 1)), dims)];
  }));
}
