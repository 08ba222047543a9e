/**
 * The exit decision, in float32 as the Python runtime computes it (runtime/decision.py), by one
 * of three rules:
 * - `max_prob`: the logits divided by the exit's temperature, e = exp(z - max z), confidence =
 *   1 / sum(e) (the max softmax probability); a sample leaves when its confidence reaches the
 *   exit's threshold (>=).
 * - `entropy` (DeeBERT): it leaves when the softmax entropy log(S) - sum(e * d) / S, with
 *   d = z - max z and S = sum(e), is at most the threshold (<=).
 * - `patience` (PABEE): it leaves when its label equals that of the `t` exits before it (`t` is
 *   the threshold); the count of agreeing exits is carried per sample (a Streak), and restarts
 *   at an exit whose class count differs from the previous exit's.
 * In every rule a threshold of Infinity means nobody leaves there and -Infinity (the last
 * exit's) everybody. The threshold is rounded to float32 before the comparison, as
 * runtime/decision.py does for the runtime and calibration alike.
 */

const f32 = Math.fround;

/** The exit rules, in the order the Python runtime lists them (decision.RULES). */
export const RULES = ['max_prob', 'entropy', 'patience'];

/**
 * Softmax of one row in float32: fills `probs` and returns the max probability (1 / sum e).
 * With `out`, also sets `out.entropy` (the entropy rule's value).
 * @param {ArrayLike<number>} z logits (float32 values)
 * @param {number} offset start of the row in z
 * @param {number} classes
 * @param {number} temperature
 * @param {Float32Array} probs out: the row's probabilities
 * @param {{entropy: number}} [out]
 */
export function softmaxRow(z, offset, classes, temperature, probs, out) {
  const t = f32(temperature);
  let max = -Infinity;
  for (let c = 0; c < classes; c++) {
    const v = t === 1 ? z[offset + c] : f32(z[offset + c] / t);
    probs[c] = v;
    if (v > max) max = v;
  }
  let total = 0;
  let ed = 0;
  for (let c = 0; c < classes; c++) {
    const d = f32(probs[c] - max);
    const e = f32(Math.exp(d));
    probs[c] = e;
    total = f32(total + e);
    if (out) ed = f32(ed + f32(e * d));
  }
  if (out) out.entropy = f32(f32(Math.log(total)) - f32(ed / total));
  for (let c = 0; c < classes; c++) probs[c] = f32(probs[c] / total);
  return f32(1 / total);
}

/** Index of the first largest value (numpy's argmax). @param {Float32Array} p */
export function argmax(p) {
  let best = 0;
  for (let c = 1; c < p.length; c++) if (p[c] > p[best]) best = c;
  return best;
}

/** Index of the first largest logit of one row (numpy's argmax over the row). @param {ArrayLike<number>} z @param {number} offset @param {number} classes */
export function argmaxRow(z, offset, classes) {
  let best = 0;
  for (let c = 1; c < classes; c++) if (z[offset + c] > z[offset + best]) best = c;
  return best;
}

/**
 * The patience rule's state of the rows of one batch: the label each got at the last exit it
 * passed, for how many exits before that one in a row its label was the same, and that exit's
 * class count.
 */
export class Streak {
  /** @param {number} n */
  constructor(n) {
    this.labels = new Int32Array(n).fill(-1);
    this.count = new Int32Array(n);
    this.classes = -1;
  }

  /** The state of the rows `keep` (positions), for the rows that go on. @param {Int32Array} keep */
  take(keep) {
    const s = new Streak(keep.length);
    keep.forEach((r, j) => { s.labels[j] = this.labels[r]; s.count[j] = this.count[r]; });
    s.classes = this.classes;
    return s;
  }
}

/** Per-sample results of one predict call, filled exit by exit, in input order. */
export class Results {
  /** @param {number} n @param {number} classes the widest exit's class count (probabilities' row width) */
  constructor(n, classes) {
    this.labels = new Int32Array(n);
    this.exits = new Int32Array(n);
    this.confidences = new Float32Array(n);
    this.probabilities = new Float32Array(n * classes); // zero beyond the class count of the exit taken
    this.classes = classes;
  }

  /**
   * Record the rows of this batch that exit `k`'s rule takes.
   * @param {Float32Array} logits (rows.length, C)
   * @param {number} k exit index
   * @param {number} threshold
   * @param {number} temperature
   * @param {Int32Array} rows input position of each row of this batch
   * @param {Uint8Array} alive 1 for rows that have not left yet; updated in place
   * @param {string} [rule] one of RULES (default max_prob)
   * @param {Streak} [streak] patience: the rows' state so far, updated in place
   * @param {number} [C] this exit's class count (default: the widest)
   * @returns {number} how many rows are still alive
   */
  decide(logits, k, threshold, temperature, rows, alive, rule = 'max_prob', streak, C = this.classes) {
    if (!RULES.includes(rule)) throw new Error(`unknown exit rule ${JSON.stringify(rule)}; use one of ${RULES.join(', ')}`);
    const W = this.classes;
    const p = new Float32Array(C);
    const thr = f32(threshold);
    const out = { entropy: 0 };
    const patience = rule === 'patience';
    if (patience && !streak) throw new Error('the patience rule needs a Streak');
    const reset = patience && /** @type {Streak} */ (streak).classes !== C;
    let left = 0;
    for (let r = 0; r < rows.length; r++) {
      if (!alive[r] && !patience) continue;
      const conf = softmaxRow(logits, r * C, C, temperature, p, rule === 'entropy' ? out : undefined);
      let take;
      if (rule === 'max_prob') take = conf >= thr || thr === -Infinity;
      else if (rule === 'entropy') take = (out.entropy <= thr && thr !== Infinity) || thr === -Infinity;
      else {
        const s = /** @type {Streak} */ (streak);
        const label = argmax(p);
        s.count[r] = !reset && label === s.labels[r] ? s.count[r] + 1 : 0;
        s.labels[r] = label;
        take = s.count[r] >= thr || thr === -Infinity;
      }
      if (!alive[r]) continue;
      if (take) {
        const i = rows[r];
        this.probabilities.set(p, i * W);
        this.labels[i] = argmax(p);
        this.exits[i] = k;
        this.confidences[i] = conf;
        alive[r] = 0;
      } else {
        left++;
      }
    }
    if (patience) /** @type {Streak} */ (streak).classes = C;
    return left;
  }
}

/**
 * The rows still running after a graph, handed to the next: `keep` (their places among `rows`),
 * the rows themselves, and with the patience rule their streaks. `alive[r]` marks them and `left`
 * counts them.
 */
export function survivors(rows, alive, left, rule, streak) {
  const keep = new Int32Array(left);
  for (let r = 0, j = 0; r < rows.length; r++) if (alive[r]) keep[j++] = r;
  return { keep, rows: keep.map((r) => rows[r]), streak: rule === 'patience' ? streak.take(keep) : streak };
}
