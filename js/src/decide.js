/**
 * The exit decision, in float32 as the Python runtime computes it (runtime/chain.py): the
 * logits divided by the exit's temperature, e = exp(z - max z), confidence = 1 / sum(e) (the max
 * softmax probability), and a sample leaves at exit k when its confidence reaches the exit's
 * threshold (>=; the last exit's threshold is -Infinity, so it takes every sample left). The
 * threshold is rounded to float32 before the comparison, as runtime/decision.py does for the
 * runtime and calibration alike.
 */

const f32 = Math.fround;

/**
 * Softmax of one row in float32: fills `probs` and returns the max probability (1 / sum e).
 * @param {ArrayLike<number>} z logits (float32 values)
 * @param {number} offset start of the row in z
 * @param {number} classes
 * @param {number} temperature
 * @param {Float32Array} probs out: the row's probabilities
 */
export function softmaxRow(z, offset, classes, temperature, probs) {
  const t = f32(temperature);
  let max = -Infinity;
  for (let c = 0; c < classes; c++) {
    const v = t === 1 ? z[offset + c] : f32(z[offset + c] / t);
    probs[c] = v;
    if (v > max) max = v;
  }
  let total = 0;
  for (let c = 0; c < classes; c++) {
    const e = f32(Math.exp(f32(probs[c] - max)));
    probs[c] = e;
    total = f32(total + e);
  }
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

/** Per-sample results of one predict call, filled exit by exit, in input order. */
export class Results {
  /** @param {number} n @param {number} classes */
  constructor(n, classes) {
    this.labels = new Int32Array(n);
    this.exits = new Int32Array(n);
    this.confidences = new Float32Array(n);
    this.probabilities = new Float32Array(n * classes);
    this.classes = classes;
  }

  /**
   * Record the rows of this batch whose confidence at exit `k` reaches `threshold`.
   * @param {Float32Array} logits (rows.length, classes)
   * @param {number} k exit index
   * @param {number} threshold
   * @param {number} temperature
   * @param {Int32Array} rows input position of each row of this batch
   * @param {Uint8Array} alive 1 for rows that have not left yet; updated in place
   * @returns {number} how many rows are still alive
   */
  decide(logits, k, threshold, temperature, rows, alive) {
    const C = this.classes;
    const p = new Float32Array(C);
    let left = 0;
    for (let r = 0; r < rows.length; r++) {
      if (!alive[r]) continue;
      const conf = softmaxRow(logits, r * C, C, temperature, p);
      if (conf >= f32(threshold)) {
        const i = rows[r];
        this.probabilities.set(p, i * C);
        this.labels[i] = argmax(p);
        this.exits[i] = k;
        this.confidences[i] = conf;
        alive[r] = 0;
      } else {
        left++;
      }
    }
    return left;
  }
}
