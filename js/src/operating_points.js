/**
 * Named operating points stored beside the manifest (thresholds.json), and the rule that turns
 * a caller's thresholds, rule and patience into one threshold and one temperature per exit and
 * an exit rule, as the Python runtime does (runtime/operating_points.py, resolve_rule).
 */
import { RULES } from './decide.js';
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
 * @property {string} rule the exit rule the thresholds are for (max_prob when the file says none)
 */

const NEVER = 1e8; // stored for "nobody leaves here"
/** What a finite threshold is, per rule. */
const RANGES = { max_prob: 'in [0, 1]', entropy: 'a max entropy >= 0', patience: 'a whole number >= 1' };
/** @type {Record<string, (t: number) => boolean>} */
const VALID = { max_prob: (t) => t >= 0 && t <= 1, entropy: (t) => t >= 0, patience: (t) => t >= 1 && Number.isInteger(t) };

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
    const rule = d.rule ?? 'max_prob';
    if (!RULES.includes(rule)) {
      throw new BundleError(`${where}: operating point '${name}' has rule ${JSON.stringify(rule)} (valid: ${RULES.join(', ')}); delete it and calibrate again`);
    }
    // null: the last exit (-Infinity); 1e8 (or more): nobody leaves, compared as Infinity by every rule
    const never = (/** @type {number} */ t) => (rule === 'max_prob' ? t > 1 : t >= NEVER);
    points[name] = { ...d, rule, temperatures: d.temperatures ?? null,
      thresholds: d.thresholds.map((/** @type {any} */ t) => (t === null ? -Infinity : (never(t) ? Infinity : t))) };
  }
  const def = typeof data.default === 'string' ? data.default : null;
  return { points, default: def };
}

/**
 * @typedef {object} ThresholdOptions
 * @property {number | number[]} [thresholds] one value for every exit but the last, or one per
 *   exit (K-1 or K values; the last exit always accepts). Infinity means nobody leaves there.
 * @property {string} [operatingPoint] a name stored in thresholds.json
 * @property {string} [rule] 'max_prob' (default), 'entropy' (thresholds are max entropies) or
 *   'patience'; default: the operating point's rule
 * @property {number} [patience] PABEE's t (rule 'patience'): leave once the label equals that of
 *   the t exits before
 */

/**
 * One threshold (the last is -Infinity) and one temperature per exit, and the exit rule.
 * @param {number} k number of exits
 * @param {Record<string, OperatingPoint>} points
 * @param {string | null} defaultName
 * @param {ThresholdOptions} [options]
 * @returns {{thresholds: Float64Array, temperatures: Float32Array, rule: string}}
 */
export function resolveThresholds(k, points, defaultName, options = {}) {
  const temperatures = new Float32Array(k).fill(1);
  let { thresholds, operatingPoint, rule, patience } = options;
  if (thresholds !== undefined && operatingPoint !== undefined) {
    throw new CalibrationError('give thresholds or operatingPoint, not both');
  }
  if (rule !== undefined && !RULES.includes(rule)) {
    throw new CalibrationError(`unknown exit rule ${JSON.stringify(rule)}; use one of ${RULES.join(', ')}`);
  }
  if (patience !== undefined) {
    if (rule !== undefined && rule !== 'patience') throw new CalibrationError(`patience=${patience} goes with rule='patience', not '${rule}'`);
    if (thresholds !== undefined || operatingPoint !== undefined) throw new CalibrationError('give patience=t or patience thresholds, not both');
    if (!Number.isInteger(patience) || patience < 1) throw new CalibrationError(`patience=${JSON.stringify(patience)} must be a whole number >= 1 (PABEE's t)`);
    rule = 'patience';
    thresholds = new Array(k - 1).fill(patience);
  }
  if (thresholds === undefined && operatingPoint === undefined) {
    if (defaultName == null) {
      if (rule === 'patience') throw new CalibrationError("rule='patience' needs patience=t (a whole number >= 1)");
      const t = new Float64Array(k).fill(Infinity);
      t[k - 1] = -Infinity;
      return { thresholds: t, temperatures, rule: rule ?? 'max_prob' };
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
    if (rule !== undefined && rule !== point.rule) {
      throw new CalibrationError(`operating point '${operatingPoint}' is for the '${point.rule}' rule, not '${rule}'; give ${rule} thresholds or name a point stored for ${rule}`);
    }
    rule = point.rule;
    given = point.thresholds;
  }
  const r = rule ?? 'max_prob';
  if (typeof given === 'number') {
    given = new Array(k - 1).fill(given);
  } else if (!Array.isArray(given) && !ArrayBuffer.isView(given)) {
    throw new CalibrationError(`threshold ${JSON.stringify(given)} must be a number ${RANGES[r]}`);
  }
  const list = Array.from(/** @type {ArrayLike<unknown>} */ (given));
  if (list.length !== k - 1 && list.length !== k) {
    throw new CalibrationError(`give ${k - 1} or ${k} thresholds (one per exit, the last always accepts), got ${list.length}`);
  }
  const head = list.slice(0, k - 1);
  if (!head.every((v) => typeof v === 'number')) {
    throw new CalibrationError(`thresholds ${JSON.stringify(list)} must be numbers ${RANGES[r]}`);
  }
  const nums = /** @type {number[]} */ (head);
  if (nums.some((v) => Number.isNaN(v) || (Number.isFinite(v) && !VALID[r](v)))) {
    throw new CalibrationError(r === 'max_prob' ? `thresholds must lie in [0, 1], got [${nums.join(', ')}]`
      : `thresholds of the ${r} rule must each be ${RANGES[r]} (or Infinity: nobody leaves there), got [${nums.join(', ')}]`);
  }
  const t = new Float64Array(k);
  t.set(nums);
  t[k - 1] = -Infinity;
  return { thresholds: t, temperatures, rule: r };
}
