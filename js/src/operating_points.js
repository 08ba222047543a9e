/**
 * Named operating points stored beside the manifest (thresholds.json), and the rule that turns
 * a caller's thresholds into one threshold and one temperature per exit, as the Python runtime
 * does (runtime/operating_points.py, ExitChain.resolve_thresholds).
 */
import { BundleError, CalibrationError } from './errors.js';

export const FILE = 'thresholds.json';
export const FORMAT = 'ranet-edge-operating-points';

/**
 * @typedef {object} OperatingPoint
 * @property {number[]} thresholds one per exit; the last is -Infinity (accept everything)
 * @property {number[] | null} temperatures per-exit softmax temperatures, if fitted
 * @property {string} method how it was chosen
 * @property {number} val_accuracy on the split it was fitted on (fraction)
 * @property {number} expected_flops per image
 * @property {number | null} expected_ms per image, where it was measured (`provider`)
 * @property {string | null} provider
 */

/**
 * @param {string | null} text the file's text, or null when the bundle has none
 * @param {string} where
 * @returns {{points: Record<string, OperatingPoint>, default: string | null}}
 */
export function parsePoints(text, where) {
  if (text == null) return { points: {}, default: null };
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new BundleError(`${where} is not valid JSON (${/** @type {Error} */ (err).message}); delete it and calibrate again`);
  }
  if (!data || data.format !== FORMAT || !data.points || typeof data.points !== 'object' || Array.isArray(data.points)) {
    throw new BundleError(`${where} is not a ranet-edge operating points file; delete it and calibrate again`);
  }
  /** @type {Record<string, OperatingPoint>} */
  const points = {};
  for (const [name, d] of Object.entries(data.points)) {
    if (!d || !Array.isArray(d.thresholds)) {
      throw new BundleError(`${where}: operating point '${name}' has no thresholds list; delete it and calibrate again`);
    }
    points[name] = { ...d, thresholds: d.thresholds.map((/** @type {any} */ t) => (t === null ? -Infinity : t)),
      temperatures: d.temperatures ?? null };
  }
  const def = typeof data.default === 'string' ? data.default : null;
  return { points, default: def };
}

/**
 * @typedef {object} ThresholdOptions
 * @property {number | number[]} [thresholds] one value for every exit but the last, or one per
 *   exit (K-1 or K values; the last exit always accepts). Infinity means nobody leaves there.
 * @property {string} [operatingPoint] a name stored in thresholds.json
 */

/**
 * One threshold (the last is -Infinity) and one temperature per exit.
 * @param {number} k number of exits
 * @param {Record<string, OperatingPoint>} points
 * @param {string | null} defaultName
 * @param {ThresholdOptions} [options]
 * @returns {{thresholds: Float64Array, temperatures: Float32Array}}
 */
export function resolveThresholds(k, points, defaultName, options = {}) {
  const temperatures = new Float32Array(k).fill(1);
  let { thresholds, operatingPoint } = options;
  if (thresholds !== undefined && operatingPoint !== undefined) {
    throw new CalibrationError('give thresholds or operatingPoint, not both');
  }
  if (thresholds === undefined && operatingPoint === undefined) {
    if (defaultName == null) {
      const t = new Float64Array(k).fill(Infinity);
      t[k - 1] = -Infinity;
      return { thresholds: t, temperatures };
    }
    operatingPoint = defaultName;
  }
  /** @type {unknown} */
  let given = thresholds;
  if (operatingPoint !== undefined) {
    const point = typeof operatingPoint === 'string' ? points[operatingPoint] : undefined;
    if (!point || !Object.prototype.hasOwnProperty.call(points, String(operatingPoint))) {
      const names = Object.keys(points).sort().join(', ') || 'none (run `ranet-edge calibrate`)';
      throw new CalibrationError(`unknown operating point ${JSON.stringify(operatingPoint)}; stored: ${names}`);
    }
    if (point.temperatures) {
      if (!Array.isArray(point.temperatures) || point.temperatures.length !== k
        || !point.temperatures.every((t) => typeof t === 'number' && t > 0 && Number.isFinite(t))) {
        throw new CalibrationError(`operating point '${operatingPoint}' needs ${k} positive temperatures; calibrate it again`);
      }
      temperatures.set(point.temperatures);
    }
    given = point.thresholds;
  }
  if (typeof given === 'number') {
    given = new Array(k - 1).fill(given);
  } else if (!Array.isArray(given) && !ArrayBuffer.isView(given)) {
    throw new CalibrationError(`threshold ${JSON.stringify(given)} must be a number in [0, 1]`);
  }
  const list = Array.from(/** @type {ArrayLike<unknown>} */ (given));
  if (list.length !== k - 1 && list.length !== k) {
    throw new CalibrationError(`give ${k - 1} or ${k} thresholds (one per exit, the last always accepts), got ${list.length}`);
  }
  const head = list.slice(0, k - 1);
  if (!head.every((v) => typeof v === 'number')) {
    throw new CalibrationError(`thresholds ${JSON.stringify(list)} must be numbers in [0, 1]`);
  }
  const nums = /** @type {number[]} */ (head);
  if (nums.some((v) => Number.isNaN(v) || (Number.isFinite(v) && (v < 0 || v > 1)))) {
    throw new CalibrationError(`thresholds must lie in [0, 1], got [${nums.join(', ')}]`);
  }
  const t = new Float64Array(k);
  t.set(nums);
  t[k - 1] = -Infinity;
  return { thresholds: t, temperatures };
}
