// anytime(): answers that refine, one snapshot per graph run, on the shipped bundle (the
// Python runtime's ExitChain.anytime): the last snapshot's answers are predict()'s, sample by
// sample, and every answer that is not final yet is runAll()'s argmax at the snapshot's exit.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { before, test } from 'node:test';
import { promisify } from 'node:util';

import * as ort from 'onnxruntime-web';

import { ExitChain, InputError } from '../src/index.js';
import { readImage } from '../src/node.js';
import { BUNDLE, JS, ROOT, shippedImages } from './helpers.js';

ort.env.wasm.numThreads = 1;
const SPREAD = { thresholds: [0.95, 0.95, 0.97, 0.97, 0.99] }; // samples leave at many exits
/** @type {ExitChain} */ let chain;
/** @type {any} */ let x;

before(async () => {
  chain = await ExitChain.load(BUNDLE, { ort });
  x = chain.preprocess(shippedImages().slice(0, 16));
});

/** Index of the largest of `classes` values from `offset` (numpy's argmax). @param {Float32Array} z @param {number} offset @param {number} classes */
function argmax(z, offset, classes) {
  let best = 0;
  for (let c = 1; c < classes; c++) if (z[offset + c] > z[offset + best]) best = c;
  return best;
}

test('the last snapshot is predict(), and running answers are runAll() at their exit', async () => {
  const want = await chain.predict(x, SPREAD);
  assert.ok(new Set(want.exits).size >= 3, 'the thresholds spread the samples over the exits');
  const logits = (await chain.runAll(x)).map((t) => t.data);
  const n = want.labels.length;
  const C = chain.numClasses;
  const snaps = [];
  for await (const s of chain.anytime(x, SPREAD)) snaps.push(s);
  assert.deepEqual(snaps.map((s) => s.exit), Array.from({ length: Math.max(...want.exits) + 1 }, (_, i) => i));
  assert.deepEqual(snaps.map((s) => s.done), snaps.map((_, i) => i === snaps.length - 1));
  const last = snaps[snaps.length - 1];
  assert.deepEqual(last.labels, want.labels);
  assert.deepEqual(last.exits, want.exits);
  assert.deepEqual(last.confidences, want.confidences);
  let before = null;
  for (const s of snaps) {
    for (let i = 0; i < n; i++) {
      assert.equal(s.final[i], want.exits[i] <= s.exit ? 1 : 0, `sample ${i} final at exit ${s.exit}`);
      assert.equal(s.running[i], want.exits[i] >= s.exit ? 1 : 0);
      if (s.running[i] && !s.final[i]) {
        assert.equal(s.exits[i], s.exit);
        assert.equal(s.labels[i], argmax(logits[s.exit], i * C, C), `sample ${i} at exit ${s.exit}`);
      }
      if (before && before.final[i]) assert.equal(s.labels[i], before.labels[i]);
    }
    before = s;
  }
});

test('one sample under the default point; a consumer that stops early; bad input', async () => {
  const one = chain.preprocess(shippedImages().slice(3, 4));
  const want = await chain.predict(one);
  const snaps = [];
  for await (const s of chain.anytime(one)) snaps.push(s);
  assert.equal(snaps.length, want.exits[0] + 1);
  assert.equal(snaps[snaps.length - 1].labels[0], want.labels[0]);
  for await (const s of chain.anytime(x, SPREAD)) { // break after the first: the chain goes on serving
    assert.equal(s.exit, 0);
    break;
  }
  assert.deepEqual((await chain.predict(one)).labels, want.labels);
  await assert.rejects(chain.anytime(new Float32Array(3)).next(), InputError);
});

test('examples/anytime.mjs prints each exit, the last one predict()\'s; the guide shows it verbatim', async () => {
  const image = 'test/fixtures/images/val103-exit3-bird.png';
  const { stdout } = await promisify(execFile)(process.execPath, ['examples/anytime.mjs', relative(JS, BUNDLE), image], { cwd: JS });
  const want = await chain.predict(chain.preprocess([await readImage(join(JS, image))]), { operatingPoint: 'p0.5' });
  const lines = stdout.trim().split('\n');
  assert.equal(lines.length, want.exits[0] + 1);
  assert.deepEqual(lines.map((l) => Number(/^exit (\d+):/.exec(l)?.[1])), lines.map((_, i) => i));
  assert.equal(lines[lines.length - 1], `exit ${want.exits[0]}: ${chain.classNames[want.labels[0]]}, confidence ${want.confidences[0].toFixed(3)} (final)`);
  const guide = readFileSync(join(ROOT, 'docs', 'guides', 'javascript.md'), 'utf8');
  assert.ok(guide.includes(readFileSync(join(JS, 'examples', 'anytime.mjs'), 'utf8')), 'docs/guides/javascript.md shows js/examples/anytime.mjs');
});
