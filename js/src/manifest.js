/**
 * The bundle manifest, validated as the Python runtime validates it (runtime/manifest.py):
 * format and schema version, the graph entries, the exits 0..K-1 carried in order, and every
 * graph path relative and inside the bundle.
 */
import { BundleError } from './errors.js';
import { inputsOf } from './inputs.js';
import { checkRelative } from './source.js';

export const FORMAT = 'ranet-edge-bundle';
export const SCHEMA_VERSION = 1;
export const MANIFEST = 'manifest.json';

/**
 * @typedef {object} GraphEntry
 * @property {string} path relative to the bundle
 * @property {string} sha256
 * @property {string[]} inputs tensor names it reads
 * @property {string[]} logits one per exit it carries, in exit order
 * @property {string[]} cacheOutputs tensor names it hands on
 * @property {number[]} exits the exit indices it carries
 */

/**
 * @typedef {object} Manifest
 * @property {any} data the raw manifest
 * @property {GraphEntry[]} graphs
 * @property {number} numExits
 * @property {string} inputName the first input's name
 * @property {import('./inputs.js').InputInfo[]} inputs the network inputs (an image bundle: its one image)
 */

/** @param {unknown} v */
const isStringList = (v) => Array.isArray(v) && v.every((s) => typeof s === 'string');

/**
 * @param {string} text the manifest's text
 * @param {string} where its location, for messages
 * @returns {Manifest}
 */
export function parseManifest(text, where) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new BundleError(`${where} is not valid JSON (${/** @type {Error} */ (err).message}); re-export the bundle`);
  }
  if (!data || typeof data !== 'object' || Array.isArray(data) || data.format !== FORMAT) {
    throw new BundleError(`${where} is not a ranet-edge bundle manifest (format != '${FORMAT}')`);
  }
  if (data.schema_version !== SCHEMA_VERSION) {
    throw new BundleError(`${where} has schema_version ${JSON.stringify(data.schema_version ?? null)}; this runtime reads `
      + `version ${SCHEMA_VERSION}: re-export with a matching ranet-edge version`);
  }
  const missing = (/** @type {string} */ field) => new BundleError(`${where} is missing field '${field}'; re-export the bundle`);
  const exits = data.exits;
  if (!Array.isArray(exits)) throw missing('exits');
  if (!Array.isArray(data.graphs)) throw missing('graphs');
  // a bundle of named inputs records them (and no preprocessing); an image bundle, its preprocessing
  if ((data.inputs === undefined || data.inputs === null) && (!data.preprocessing || typeof data.preprocessing.input !== 'string')) {
    throw missing('preprocessing.input');
  }
  const inputs = inputsOf(data, where);
  /** @type {GraphEntry[]} */
  const graphs = data.graphs.map((/** @type {any} */ g) => {
    if (!g || typeof g !== 'object') throw missing('graphs[].path');
    for (const f of ['path', 'sha256', 'inputs', 'logits', 'cache_outputs', 'exits']) {
      if (!(f in g)) throw missing(f);
    }
    if (!isStringList(g.inputs) || !isStringList(g.logits) || !isStringList(g.cache_outputs)
      || !Array.isArray(g.exits) || !g.exits.every(Number.isInteger) || g.logits.length !== g.exits.length) {
      throw new BundleError(`${where}: graph ${JSON.stringify(g.path)} has malformed inputs, logits, cache_outputs or exits; re-export the bundle`);
    }
    return { path: g.path, sha256: String(g.sha256), inputs: g.inputs, logits: g.logits, cacheOutputs: g.cache_outputs, exits: g.exits };
  });
  const carried = graphs.flatMap((g) => g.exits);
  if (exits.length === 0 || carried.length !== exits.length || carried.some((k, i) => k !== i)) {
    throw new BundleError(`${where}: graphs must carry exits 0..${exits.length - 1} in order`);
  }
  for (const g of graphs) checkRelative(g.path, where);
  if (data.monolithic) checkRelative(data.monolithic.path, where);
  return { data, graphs, numExits: exits.length, inputName: inputs[0].name, inputs };
}
