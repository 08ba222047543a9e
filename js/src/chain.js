/**
 * ExitChain: a bundle's graphs run in order, chained by tensor names, each sample leaving at
 * the first exit its exit rule takes it at (the Python runtime's ExitChain, runtime/chain.py).
 */
import { anytime } from './anytime.js';
import { Results, Streak, survivors } from './decide.js';
import { BundleError, InputError, ProviderError } from './errors.js';
import { ELEM_TYPES, gatherModel } from './gather.js';
import { checkNamed, describe, isMapping, zeroInputs } from './inputs.js';
import { MANIFEST, parseManifest } from './manifest.js';
import { FILE as POINTS_FILE, parsePoints, resolveThresholds } from './operating_points.js';
import { preprocess, specFrom } from './preprocess.js';
import { oneLine, openSource } from './source.js';
import { createGraphs, epName, readVerified } from './graphs.js';
import { concatRows, onDevice, sliceRows, takeRows } from './tensors.js';

const text = new TextDecoder();

/** onnxruntime-web, when the caller passes no `ort`. */
async function defaultOrt() {
  try {
    return await import('onnxruntime-web');
  } catch (err) {
    throw new ProviderError(`onnxruntime-web cannot be loaded (${oneLine(err)}); npm install onnxruntime-web, `
      + 'or pass {ort} from onnxruntime-node or onnxruntime-react-native to ExitChain.load');
  }
}

/**
 * One queue of runs per onnxruntime namespace: onnxruntime-web's WebAssembly backend corrupts
 * outputs when runs of different sessions interleave, so no two runs overlap, in any chain.
 * @type {WeakMap<object, Promise<unknown>>}
 */
const queues = new WeakMap();

export class ExitChain {
  /** @private */
  constructor(/** @type {any} */ init) {
    Object.assign(this, init);
    /** @type {Map<string, Promise<any>>} */
    this._gather = new Map();
  }

  /**
   * Read manifest.json and thresholds.json, check every graph's sha256, then create one session
   * per graph.
   * @param {string | URL | {readBytes: (rel: string) => Promise<Uint8Array | ArrayBuffer | null>, describe?: string}} bundle
   *   a directory (Node), a URL, or a source object
   * @param {import('./index.js').LoadOptions} [options]
   * @returns {Promise<ExitChain>}
   */
  static async load(bundle, options = {}) {
    const ort = options.ort || (await defaultOrt());
    if (!ort || !ort.InferenceSession || typeof ort.InferenceSession.create !== 'function' || !ort.Tensor) {
      throw new ProviderError('options.ort must be the onnxruntime namespace (onnxruntime-web, onnxruntime-node or onnxruntime-react-native)');
    }
    const source = await openSource(bundle, options);
    const root = source.describe.replace(/\/$/, '');
    const where = `${root}/${MANIFEST}`;
    const raw = await source.readBytes(MANIFEST);
    if (!raw) throw new BundleError(`${source.describe} is not a bundle (no ${MANIFEST}); create one with \`ranet-edge export\``);
    const manifest = parseManifest(text.decode(raw), where);
    // The baseline graph is never read here, but a path leaving the bundle is refused all the same.
    if (manifest.data.monolithic) await source.check(manifest.data.monolithic.path);
    const models = await readVerified(source, manifest, where, options.sha256);
    const pointsRaw = await source.readBytes(POINTS_FILE);
    const points = parsePoints(pointsRaw && text.decode(pointsRaw), `${root}/${POINTS_FILE}`);

    const isWeb = !!(ort.env && ort.env.versions && ort.env.versions.web);
    const executionProviders = options.executionProviders || (isWeb ? ['wasm'] : undefined);
    const onGpu = !!executionProviders && epName(executionProviders[0]) === 'webgpu';
    const deviceIo = options.deviceIo ?? onGpu;
    const graphs = await createGraphs(ort, manifest, models, where, { executionProviders, onGpu, deviceIo, sessionOptions: options.sessionOptions });
    const pre = manifest.data.preprocessing;
    const batch = manifest.data.batch_size;
    const named = manifest.data.inputs !== undefined && manifest.data.inputs !== null;
    const chain = new ExitChain({
      ort, manifest: manifest.data, graphs, executionProviders: executionProviders || null, deviceIo, onGpu,
      operatingPoints: points.points, defaultOperatingPoint: points.default,
      inputs: manifest.inputs, named, inputName: manifest.inputName,
      preprocessSpec: pre ? specFrom(pre) : null,
      inputShape: named ? null : manifest.inputs[0].shape.slice(1).map(Number),
      numExits: manifest.numExits, numClasses: Number(manifest.data.num_classes),
      // each exit's class count (a manifest that records none: num_classes for every exit)
      exitClasses: manifest.data.exits.map((/** @type {any} */ e) => Number(e.num_classes ?? manifest.data.num_classes)),
      classNames: Array.isArray(manifest.data.class_names) ? manifest.data.class_names : null,
      staticBatch: Number.isInteger(batch) && batch > 0 ? batch : null,
    });
    if (options.warmup !== false) await chain.runAll(zeroInputs(ort, chain.inputs, chain.staticBatch || 1));
    return chain;
  }

  // ------------------------------------------------------------------ inputs
  /**
   * Images (ImageData, {data, width, height[, channels]}, or a list of them) to the float32
   * NCHW input tensor, as the manifest's preprocessing says.
   * @param {import('./preprocess.js').Pixels | import('./preprocess.js').Pixels[]} images
   */
  preprocess(images) {
    if (!this.preprocessSpec) {
      throw new InputError(`this bundle takes named inputs, not images (${this.inputs.map((i) => `${i.name}: ${describe(i)}`).join(', ')}); `
        + 'pass them to predict as an object name -> tensor');
    }
    const { data, dims } = preprocess(images, this.preprocessSpec);
    return new this.ort.Tensor('float32', data, dims);
  }

  /**
   * Every input, checked, by name: an image bundle's float32 tensor (see checkInput), or a bundle
   * of named inputs' object (or Map) name -> tensor (see inputs.js).
   * @param {any} x @returns {Map<string, any>}
   */
  checkInputs(x) {
    if (this.named) return checkNamed(this.ort, x, this.inputs);
    if (isMapping(x)) {
      const keys = x instanceof Map ? [...x.keys()] : Object.keys(x);
      if (keys.length !== 1 || keys[0] !== this.inputName) {
        throw new InputError(`this bundle takes one input, ${this.inputName}: float32 (N, ${this.inputShape.join(', ')}); got inputs ${keys.join(', ') || 'none'}`);
      }
      x = x instanceof Map ? x.get(this.inputName) : x[this.inputName];
    }
    return new Map([[this.inputName, this.checkInput(x)]]);
  }

  /** An image bundle's input as a float32 tensor of shape (N, ...inputShape), N >= 1, finite. @param {any} x */
  checkInput(x) {
    if (this.named) return /** @type {any} */ (this.checkInputs(x).values().next().value);
    const fix = 'use chain.preprocess(images)';
    if (!x || typeof x !== 'object' || !('dims' in x)) {
      throw new InputError(`input must be a float32 tensor (ort.Tensor or {data: Float32Array, dims}), got ${x === null ? 'null' : typeof x}; ${fix}`);
    }
    const type = x.type ?? (x.data instanceof Float32Array ? 'float32' : x.data?.constructor?.name);
    if (type !== 'float32') throw new InputError(`input dtype is ${type}, expected float32; ${fix}`);
    const dims = Array.from(x.dims);
    const want = this.inputShape;
    if (dims.length !== 4 || dims[0] < 1 || want.some((d, i) => dims[i + 1] !== d)) {
      throw new InputError(`input shape is (${dims.join(', ')}), expected (N, ${want.join(', ')}) with N >= 1; ${fix}`);
    }
    if (onDevice(x)) return x;
    const data = x.data;
    if (!(data instanceof Float32Array) || data.length !== dims.reduce((a, b) => a * b, 1)) {
      throw new InputError(`input data must be a Float32Array of ${dims.reduce((a, b) => a * b, 1)} values; ${fix}`);
    }
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) throw new InputError('input contains NaN or infinite values; check the preprocessing');
    }
    return x instanceof this.ort.Tensor ? x : new this.ort.Tensor('float32', data, dims);
  }

  /**
   * One threshold (the last is -Infinity) and one temperature per exit, and the exit rule.
   * @param {import('./operating_points.js').ThresholdOptions} [options]
   */
  resolveThresholds(options = {}) {
    return resolveThresholds(this.numExits, this.operatingPoints, this.defaultOperatingPoint, options);
  }

  // ------------------------------------------------------------------ running
  /** Run `fn` after every call already queued on this onnxruntime: runs never overlap. @template T @param {() => Promise<T>} fn */
  _serial(fn) {
    const next = (queues.get(this.ort) || Promise.resolve()).then(fn);
    queues.set(this.ort, next.catch(() => undefined));
    return next;
  }

  /** Run one graph on the tensors it names; static-batch graphs run in padded chunks. @param {import('./graphs.js').Graph} g @param {Map<string, any>} env */
  async _run(g, env) {
    /** @type {Record<string, any>} */
    const feeds = {};
    for (const name of g.inputs) feeds[name] = env.get(name);
    const n = feeds[g.inputs[0]].dims[0];
    const b = this.staticBatch;
    if (!b || n === b) return g.session.run(feeds, g.fetches);
    if (this.deviceIo) throw new InputError(`this bundle has a static batch of ${b}; on a GPU give exactly ${b} images per call`);
    const parts = [];
    const counts = [];
    for (let start = 0; start < n; start += b) {
      const m = Math.min(b, n - start);
      /** @type {Record<string, any>} */
      const chunk = {};
      for (const [name, t] of Object.entries(feeds)) chunk[name] = sliceRows(this.ort, t, start, m, b);
      parts.push(await g.session.run(chunk, g.fetches));
      counts.push(m);
    }
    /** @type {Record<string, any>} */
    const out = {};
    for (const name of g.fetches) out[name] = concatRows(this.ort, parts.map((p) => p[name]), counts);
    return out;
  }

  /** The tensors later graphs read, after graph `g` ran. @param {import('./graphs.js').Graph} g @param {Map<string, any>} env @param {Record<string, any>} out @param {Set<any>} given the caller's tensors (never disposed) */
  _advance(g, env, out, given) {
    const next = new Map();
    for (const [name, t] of env) {
      if (g.keepAfter.has(name)) next.set(name, t);
      else if (!given.has(t) && onDevice(t)) t.dispose();
    }
    for (const name of g.cacheNames) next.set(name, out[name]);
    return next;
  }

  /** Free the device buffers the chain created. @param {Map<string, any>} env @param {Set<any>} given */
  _release(env, given) {
    for (const t of env.values()) if (!given.has(t) && onDevice(t)) t.dispose();
  }

  /** The Gather session for a tensor type (device path). @param {string} type */
  _gatherSession(type) {
    let s = this._gather.get(type);
    if (!s) {
      const elem = /** @type {Record<string, number>} */ (ELEM_TYPES)[type];
      if (!elem) throw new InputError(`cannot gather rows of a ${type} tensor on the device; cached tensors must be one of ${Object.keys(ELEM_TYPES).join(', ')}`);
      /** @type {Record<string, any>} */
      const so = {};
      if (this.executionProviders) so.executionProviders = this.executionProviders;
      if (this.onGpu) so.preferredOutputLocation = 'gpu-buffer';
      s = this.ort.InferenceSession.create(gatherModel(elem), so);
      this._gather.set(type, /** @type {Promise<any>} */ (s));
    }
    return /** @type {Promise<any>} */ (s);
  }

  /** Keep the rows `keep` of every tensor in env -- every input and every cached tensor -- (on the device when deviceIo). @param {Map<string, any>} env @param {Int32Array} keep @param {Set<any>} given */
  async _gatherRows(env, keep, given) {
    const next = new Map();
    const idx = this.deviceIo ? new this.ort.Tensor('int64', BigInt64Array.from(keep, (v) => BigInt(v)), [keep.length]) : null;
    for (const [name, t] of env) {
      if (!idx) {
        next.set(name, takeRows(this.ort, t, keep));
        continue;
      }
      const session = await this._gatherSession(t.type);
      const { y } = await session.run({ x: t, idx });
      if (!given.has(t) && onDevice(t)) t.dispose();
      next.set(name, y);
    }
    return next;
  }

  /**
   * Every exit's logits for every sample (anytime prediction), stage by stage.
   * @param {any} x float32 tensor (N, ...inputShape), or named inputs (see checkInputs)
   * @returns {Promise<any[]>} one CPU tensor (N, classes) per exit
   */
  runAll(x) {
    return this._serial(async () => {
      let env = this.checkInputs(x);
      const given = new Set(env.values());
      const logits = [];
      try {
        for (const g of this.graphs) {
          const out = await this._run(g, env);
          for (const name of g.logits) logits.push(out[name]);
          env = this._advance(g, env, out, given);
        }
      } finally {
        this._release(env, given);
      }
      return logits;
    });
  }

  /**
   * Route each sample through the graphs until its exit rule takes it (options.rule: max_prob,
   * entropy or patience, see decide.js). Only the rows of the samples that go on (with their
   * patience streak) are handed to the next graph; tensors no later graph reads are dropped;
   * results come back in input order. With named inputs, the rows of every input (the ids and
   * the mask alike) follow their samples. When exits differ in class count, `labels` index the
   * classes of the exit taken and `probabilities` rows have the widest exit's width, zero beyond
   * the class count of the exit taken.
   * @param {any} x float32 tensor (N, ...inputShape), or named inputs (see checkInputs)
   * @param {import('./operating_points.js').ThresholdOptions} [options] default: the bundle's default operating point
   * @returns {Promise<import('./index.js').Prediction>}
   */
  async predict(x, options = {}) {
    const { thresholds, temperatures, rule } = this.resolveThresholds(options);
    const width = Math.max(...this.exitClasses);
    return this._serial(async () => {
      let env = this.checkInputs(x);
      const given = new Set(env.values());
      const n = env.values().next().value.dims[0];
      const results = new Results(n, width);
      let rows = Int32Array.from({ length: n }, (_, i) => i);
      let streak = new Streak(n);
      try {
        for (const g of this.graphs) {
          const out = await this._run(g, env);
          const alive = new Uint8Array(rows.length).fill(1);
          let left = rows.length;
          g.exits.forEach((k, j) => {
            const z = out[g.logits[j]];
            if (z.dims[1] !== this.exitClasses[k]) throw new BundleError(`exit ${k} gives ${z.dims[1]} classes, the manifest says ${this.exitClasses[k]}; re-export the bundle`);
            left = results.decide(z.data, k, thresholds[k], temperatures[k], rows, alive, rule, streak, z.dims[1]);
          });
          env = this._advance(g, env, out, given);
          if (left === 0) break;
          if (left < rows.length) {
            let keep;
            ({ keep, rows, streak } = survivors(rows, alive, left, rule, streak));
            env = await this._gatherRows(env, keep, given);
          }
        }
      } finally {
        this._release(env, given);
      }
      return { labels: results.labels, exits: results.exits, confidences: results.confidences,
        probabilities: results.probabilities, numClasses: width };
    });
  }

  /**
   * predict() as answers that refine: after each graph run, yield a snapshot of every sample's
   * answer so far (see anytime.js; the Python runtime's ExitChain.anytime).
   * @param {any} x float32 tensor (N, ...inputShape), or named inputs (see checkInputs)
   * @param {import('./operating_points.js').ThresholdOptions} [options] default: the bundle's default operating point
   * @returns {AsyncGenerator<import('./index.js').Snapshot>}
   */
  anytime(x, options = {}) {
    return anytime(this, x, options);
  }

  /** Release every session. */
  async release() {
    await this._serial(async () => undefined);
    const gathers = await Promise.all(this._gather.values());
    await Promise.all([...this.graphs.map((g) => g.session.release()), ...gathers.map((s) => s.release())]);
  }
}
