/**
 * The graphs of a bundle as ONNX Runtime sessions: bytes read and checked against their
 * sha256, one session per graph checked against the manifest (the Python runtime's
 * runtime/graphs.py).
 */
import { BundleError, ProviderError } from './errors.js';
import { oneLine, sha256Hex } from './source.js';

/** @param {any} ep an execution provider entry @returns {string} */
export const epName = (ep) => (typeof ep === 'string' ? ep : ep && ep.name) || '';

/** One session plus what the chain needs to know about it, computed once. */
export class Graph {
  /** @param {any} session @param {import('./manifest.js').GraphEntry} entry @param {Set<string>} keepAfter */
  constructor(session, entry, keepAfter) {
    this.session = session;
    this.path = entry.path;
    this.inputs = entry.inputs;
    this.exits = entry.exits;
    this.logits = entry.logits;
    /** Tensors any later graph reads. */
    this.keepAfter = keepAfter;
    /** Outputs handed on: those a later graph reads. */
    this.cacheNames = session.outputNames.filter((/** @type {string} */ n) => keepAfter.has(n));
    this.fetches = [...entry.logits, ...this.cacheNames];
  }
}

/**
 * Every graph's bytes, each checked against its sha256 before any session exists (the session
 * is then created from the very bytes that were checked).
 * @param {any} source @param {import('./manifest.js').Manifest} manifest @param {string} where
 * @param {((bytes: Uint8Array) => string | Promise<string>) | undefined} sha256
 */
export async function readVerified(source, manifest, where, sha256) {
  const models = [];
  for (const g of manifest.graphs) {
    const bytes = await source.readBytes(g.path);
    const name = g.path.split('/').pop();
    if (!bytes) throw new BundleError(`graph ${name} listed in ${where} is missing; re-export the bundle`);
    const got = await sha256Hex(bytes, sha256);
    if (got !== g.sha256) {
      throw new BundleError(`graph ${name} fails its sha256 check (manifest ${g.sha256.slice(0, 12)}..., `
        + `file ${got.slice(0, 12)}...): it was modified; re-export the bundle`);
    }
    models.push(bytes);
  }
  return models;
}

/**
 * One session per graph, checked against the manifest: its logits exist, and every input it
 * reads is a network input or an output of an earlier graph. On failure the sessions made so far are
 * released.
 * @param {any} ort @param {import('./manifest.js').Manifest} manifest @param {Uint8Array[]} models @param {string} where
 * @param {{executionProviders: any[] | undefined, onGpu: boolean, deviceIo: boolean, sessionOptions?: Record<string, any>}} how
 */
export async function createGraphs(ort, manifest, models, where, how) {
  /** @type {Graph[]} */
  const graphs = [];
  const produced = new Set(manifest.inputs.map((i) => i.name));
  try {
    for (let i = 0; i < manifest.graphs.length; i++) {
      const entry = manifest.graphs[i];
      const keepAfter = new Set(manifest.graphs.slice(i + 1).flatMap((g) => g.inputs));
      /** @type {Record<string, any>} */
      const so = { graphOptimizationLevel: 'all', ...(how.sessionOptions || {}) };
      if (how.executionProviders) so.executionProviders = how.executionProviders;
      if (how.onGpu && how.deviceIo) {
        // Cached feature maps stay in GPU buffers between graphs; logits come to the CPU.
        so.preferredOutputLocation = Object.fromEntries([
          ...entry.cacheOutputs.filter((n) => keepAfter.has(n)).map((n) => [n, 'gpu-buffer']),
          ...entry.logits.map((n) => [n, 'cpu'])]);
      }
      let session;
      try {
        session = await ort.InferenceSession.create(models[i], so);
      } catch (err) {
        const msg = oneLine(err);
        if (/backend|execution provider/i.test(msg)) {
          throw new ProviderError(`execution providers ${JSON.stringify((how.executionProviders || []).map(epName))} cannot run here (${msg}); `
            + "use ['wasm'] (onnxruntime-web) or ['cpu'] (onnxruntime-node, onnxruntime-react-native)");
        }
        throw new BundleError(`ONNX Runtime cannot load graph ${entry.path} (${msg.slice(0, 160)}); re-export the bundle`);
      }
      graphs.push(new Graph(session, entry, keepAfter));
      for (const name of entry.logits) {
        if (!session.outputNames.includes(name)) throw new BundleError(`graph ${entry.path} has no output '${name}' named in ${where}; re-export the bundle`);
      }
      for (const name of session.inputNames) {
        if (!entry.inputs.includes(name) || !produced.has(name)) {
          throw new BundleError(`graph ${entry.path} reads '${name}', which ${entry.inputs.includes(name) ? 'no earlier graph produces' : `${where} does not list`}; re-export the bundle`);
        }
      }
      session.outputNames.forEach((/** @type {string} */ n) => produced.add(n));
    }
  } catch (err) {
    await Promise.all(graphs.map((g) => g.session.release()));
    throw err;
  }
  return graphs;
}
