/**
 * predict() as answers that refine (the Python runtime's ExitChain.anytime, runtime/anytime.py):
 * after each graph run, a snapshot of every sample's answer so far. `labels`, `exits` and
 * `confidences` hold each sample's final answer where `final` is 1, else, for the samples this
 * graph ran on (`running`), the argmax of this graph's deepest exit and the confidence there;
 * -1 for none yet. `done` is true on the last snapshot, whose answers are predict()'s. Each
 * graph run queues on its own, so other calls may run between two snapshots.
 */
import { argmaxRow, Results, softmaxRow, Streak, survivors } from './decide.js';

/**
 * @param {import('./chain.js').ExitChain} chain
 * @param {any} x float32 tensor (N, ...inputShape), or named inputs (chain.checkInputs)
 * @param {import('./operating_points.js').ThresholdOptions} [options] default: the bundle's default operating point
 * @returns {AsyncGenerator<import('./index.js').Snapshot>}
 */
export async function* anytime(chain, x, options = {}) {
  const c = /** @type {any} */ (chain);
  const { thresholds, temperatures, rule } = chain.resolveThresholds(options);
  let env = chain.checkInputs(x);
  const given = new Set(env.values());
  const n = env.values().next().value.dims[0];
  const width = Math.max(...chain.exitClasses);
  const results = new Results(n, width);
  let streak = new Streak(n);
  const labels = new Int32Array(n).fill(-1);
  const exits = new Int32Array(n).fill(-1);
  const confidences = new Float32Array(n);
  const final = new Uint8Array(n);
  const p = new Float32Array(width);
  let rows = Int32Array.from({ length: n }, (_, i) => i);
  try {
    for (const [gi, g] of chain.graphs.entries()) {
      const from = env;
      const out = await c._serial(() => c._run(g, from));
      const alive = new Uint8Array(rows.length).fill(1);
      let left = rows.length;
      g.exits.forEach((k, j) => {
        const zk = out[g.logits[j]];
        left = results.decide(zk.data, k, thresholds[k], temperatures[k], rows, alive, rule, streak, zk.dims[1]);
      });
      const k = g.exits[g.exits.length - 1];
      const z = out[g.logits[g.logits.length - 1]].data;
      const C = chain.exitClasses[k];
      const running = new Uint8Array(n);
      for (let r = 0; r < rows.length; r++) {
        const i = rows[r];
        running[i] = 1;
        if (alive[r]) {
          confidences[i] = softmaxRow(z, r * C, C, temperatures[k], p);
          labels[i] = argmaxRow(z, r * C, C);
          exits[i] = k;
        } else {
          final[i] = 1;
          [labels[i], exits[i], confidences[i]] = [results.labels[i], results.exits[i], results.confidences[i]];
        }
      }
      env = c._advance(g, env, out, given);
      yield { graph: gi, exit: k, labels: labels.slice(), exits: exits.slice(), confidences: confidences.slice(),
        running, final: final.slice(), done: left === 0 };
      if (left === 0) break;
      if (left < rows.length) {
        let keep;
        ({ keep, rows, streak } = survivors(rows, alive, left, rule, streak));
        const before = env;
        env = await c._serial(() => c._gatherRows(before, keep, given));
      }
    }
  } finally {
    c._release(env, given);
  }
}
