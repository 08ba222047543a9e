// A bundle of named inputs (a text encoder's int64 input_ids and attention_mask, a dynamic
// sequence axis) whose exits differ in class count (3 at exit 0, 5 after), against the Python
// runtime's answers on the same inputs (js/tools/make_text_vectors.py): logits, predict()
// under the three exit rules at two sequence lengths, anytime() snapshots, the Gather path,
// and the one-line refusals of inputs that do not fit the manifest.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import * as ort from 'onnxruntime-web';

import { ExitChain, InputError } from '../src/index.js';
import { FIXTURES, JS, ROOT, relativeError } from './helpers.js';

ort.env.wasm.numThreads = 1;
const TOL = 1e-5;
const TEXT = JSON.parse(readFileSync(join(FIXTURES, 'text-vectors.json'), 'utf8'));
const BUNDLE = join(ROOT, TEXT.bundle);
const tmp = mkdtempSync(join(tmpdir(), 'ranet-edge-text-'));
/** @type {ExitChain} */ let chain;

/** The named inputs of one vectors set as plain {data: BigInt64Array, dims}. @param {any} set @param {number[]} [rows] */
function inputsOf(set, rows) {
  const pick = rows ?? Array.from({ length: set.n }, (_, i) => i);
  /** @type {Record<string, {data: BigInt64Array, dims: number[]}>} */
  const out = {};
  for (const [name, flat] of Object.entries(set.inputs)) {
    const data = new BigInt64Array(pick.length * set.length);
    pick.forEach((r, j) => { for (let c = 0; c < set.length; c++) data[j * set.length + c] = BigInt(flat[r * set.length + c]); });
    out[name] = { data, dims: [pick.length, set.length] };
  }
  return out;
}

/** predict() options of a vectors key. @param {any} p */
const optionsOf = (p) => (p.patience !== undefined ? { patience: p.patience } : { thresholds: p.thresholds, rule: p.rule });

/** Assert a prediction equals Python's for the samples `rows` (all by default); returns how many were compared. @param {any} res @param {any} p @param {number[]} [rows] */
function assertSame(res, p, rows) {
  const idx = rows ?? p.exits.map((/** @type {number} */ _, /** @type {number} */ i) => i);
  const W = res.numClasses;
  const near = new Set(p.near_threshold);
  let checked = 0;
  idx.forEach((i, j) => {
    if (near.has(i)) return; // within the logit tolerance of a threshold: either exit is right
    const k = p.exits[i];
    assert.equal(res.exits[j], k, `sample ${i}: exit`);
    assert.equal(res.labels[j], p.labels[i], `sample ${i}: label`);
    assert.ok(res.labels[j] < chain.exitClasses[k], 'the label indexes the classes of the exit taken');
    assert.ok(Math.abs(res.confidences[j] - p.confidences[i]) <= TOL, `sample ${i}: confidence`);
    for (let c = 0; c < W; c++) {
      const got = res.probabilities[j * W + c];
      assert.ok(Math.abs(got - p.probabilities[i * W + c]) <= TOL, `sample ${i}: probability ${c}`);
      if (c >= chain.exitClasses[k]) assert.equal(got, 0, `sample ${i}: zero beyond exit ${k}'s classes`);
    }
    checked++;
  });
  return checked;
}

before(async () => {
  chain = await ExitChain.load(BUNDLE, { ort });
});
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('a text bundle against the Python runtime', () => {
  test('the bundle: named int64 inputs with a sequence axis, exits of 3 and 5 classes', () => {
    const manifest = readFileSync(join(BUNDLE, 'manifest.json'));
    assert.equal(createHash('sha256').update(manifest).digest('hex'), TEXT.manifest_sha256, 'regenerate text-vectors.json');
    assert.ok(chain.named);
    assert.deepEqual(chain.inputs.map((i) => [i.name, i.dtype, i.axes]), [
      ['input_ids', 'int64', ['batch', 'sequence']], ['attention_mask', 'int64', ['batch', 'sequence']]]);
    assert.deepEqual(chain.exitClasses, TEXT.exit_classes);
    assert.deepEqual(TEXT.exit_classes, [3, 5, 5, 5, 5]);
    assert.equal(chain.inputShape, null);
  });

  for (const set of TEXT.sets) {
    test(`${set.name}: runAll within 1e-5 relative of Python, every exit`, async () => {
      const logits = await chain.runAll(inputsOf(set));
      const errors = logits.map((t, k) => {
        assert.deepEqual(t.dims, [set.n, TEXT.exit_classes[k]]);
        return relativeError(t.data, set.logits[k]);
      });
      console.log(`# ${set.name}: relative error per exit ${errors.map((e) => e.toExponential(2)).join(' ')}`);
      errors.forEach((e, k) => assert.ok(e <= TOL, `exit ${k}: relative error ${e}`));
    });

    for (const [key, p] of Object.entries(set.predictions)) {
      test(`${set.name} ${key}: predict gives Python's exits, labels and padded probabilities`, async () => {
        const res = await chain.predict(inputsOf(set), optionsOf(p));
        assert.equal(res.numClasses, 5);
        const checked = assertSame(res, p);
        assert.ok(checked >= set.n - 2, 'too many samples near a threshold to compare');
        const counts = TEXT.exit_classes.map((_, k) => res.exits.filter((e) => e === k).length);
        if (!p.near_threshold.length) assert.deepEqual(counts, p.exit_counts);
        if (p.rule !== 'patience') assert.ok(counts.filter((c) => c > 0).length >= 3, `${key}: samples leave at several exits`);
        // one sample at a time: the same answers as in the batch (rows routed per sample)
        for (const i of [0, 5, set.n - 1]) assertSame(await chain.predict(inputsOf(set, [i]), optionsOf(p)), p, [i]);
      });
    }

    test(`${set.name}: anytime snapshots are Python's, the last one predict()'s`, async () => {
      for (const p of Object.values(set.predictions)) {
        const near = new Set(p.near_threshold);
        const snaps = [];
        for await (const s of chain.anytime(inputsOf(set), optionsOf(p))) snaps.push(s);
        assert.deepEqual(snaps.map((s) => s.exit), p.anytime.map((/** @type {any} */ s) => s.exit));
        snaps.forEach((s, g) => {
          const want = p.anytime[g];
          for (let i = 0; i < set.n; i++) {
            if (near.has(i)) continue;
            assert.deepEqual([s.labels[i], s.exits[i], s.final[i]], [want.labels[i], want.exits[i], want.final[i]], `${p.rule} snapshot ${g} sample ${i}`);
          }
        });
      }
    });
  }

  test('an ort.Tensor, a Map, and rows gathered by a Gather session (deviceIo) answer the same', async () => {
    const set = TEXT.sets[1];
    const p = set.predictions.max_prob;
    const plain = inputsOf(set);
    const tensors = Object.fromEntries(Object.entries(plain).map(([k, v]) => [k, new ort.Tensor('int64', v.data, v.dims)]));
    const want = await chain.predict(plain, optionsOf(p));
    const dev = await ExitChain.load(BUNDLE, { ort, deviceIo: true });
    for (const got of [await chain.predict(tensors, optionsOf(p)), await chain.predict(new Map(Object.entries(plain)), optionsOf(p)),
      await dev.predict(plain, optionsOf(p))]) {
      assert.deepEqual(got.exits, want.exits);
      assert.deepEqual(got.labels, want.labels);
      assert.deepEqual(got.probabilities, want.probabilities);
    }
    assert.ok(new Set(want.exits).size >= 3, 'rows dropped between graphs');
    await dev.release();
  });
});

describe('named inputs are checked against the manifest in one line', () => {
  test('name, dtype, rank, shared axes, sizes, and images refused', async () => {
    const good = inputsOf(TEXT.sets[0], [0, 1]);
    const ids = good.input_ids;
    const mask = good.attention_mask;
    /** @type {[any, RegExp][]} */
    const bad = [
      [ids, /this bundle takes 2 named inputs \(input_ids: int64 \(batch, sequence\), attention_mask: int64 \(batch, sequence\)\); pass an object name -> tensor \(\{data: BigInt64Array, dims\}\), got one tensor/],
      [{ input_ids: ids }, /inputs missing attention_mask; this bundle takes input_ids: int64 \(batch, sequence\)/],
      [{ ...good, token_type_ids: ids }, /inputs unknown token_type_ids/],
      [{ ...good, input_ids: { data: Int32Array.from(ids.data, Number), dims: ids.dims } }, /input input_ids has dtype int32, expected int64 \(batch, sequence\); give its values as a BigInt64Array/],
      [{ ...good, input_ids: new ort.Tensor('float32', new Float32Array(ids.data.length), ids.dims) }, /input input_ids has dtype float32, expected int64/],
      [{ ...good, attention_mask: { data: mask.data, dims: [2, 1, 7] } }, /input attention_mask has shape \(2, 1, 7\), expected int64 \(batch, sequence\) with N >= 1/],
      [{ ...good, attention_mask: { data: mask.data.subarray(0, 12), dims: [2, 6] } }, /input attention_mask has sequence 6 but input input_ids has 7: inputs must agree on sequence \(pad to one length and mask the padding\)/],
      [{ ...good, attention_mask: { data: mask.data.subarray(0, 7), dims: [1, 7] } }, /input attention_mask has batch 1 but input input_ids has 2/],
      [{ ...good, input_ids: { data: ids.data.subarray(0, 5), dims: [2, 7] } }, /input input_ids holds 5 values; its dims \(2, 7\) need 14/],
      [{ ...good, input_ids: [1, 2, 3] }, /input input_ids must be a tensor int64 \(batch, sequence\)/],
      [new Float32Array(3), /this bundle takes 2 named inputs .* got Float32Array/],
    ];
    for (const [x, re] of bad) {
      await assert.rejects(chain.predict(x), (/** @type {any} */ e) => {
        assert.ok(e instanceof InputError, String(e));
        assert.match(e.message, re);
        assert.ok(!e.message.includes('\n'));
        return true;
      });
    }
    await assert.rejects(chain.runAll({ input_ids: ids }), InputError);
    await assert.rejects(chain.anytime({ input_ids: ids }).next(), InputError);
    assert.throws(() => chain.preprocess([{ data: new Uint8Array(12), width: 2, height: 2 }]),
      /this bundle takes named inputs, not images \(input_ids: int64 \(batch, sequence\), .*\); pass them to predict/);
  });

  test('a fixed axis in the manifest is enforced; a malformed inputs entry is a BundleError', async () => {
    const dir = join(tmp, 'fixed');
    cpSync(BUNDLE, dir, { recursive: true });
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    for (const i of m.inputs) [i.shape, i.axes] = [[null, 7], ['batch', null]];
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
    const fixed = await ExitChain.load(dir, { ort });
    const long = inputsOf(TEXT.sets[1], [0]);
    await assert.rejects(fixed.predict(long), /input input_ids has shape \(1, 19\), expected int64 \(batch, 7\): axis 1 must be 7/);
    assert.deepEqual((await fixed.predict(inputsOf(TEXT.sets[0], [3]), { thresholds: 0.5 })).labels.length, 1);
    await fixed.release();
    m.inputs[0].dtype = 'string';
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
    await assert.rejects(ExitChain.load(dir, { ort }), /inputs\[0\] needs a name, a dtype .*; re-export the bundle/);
  });

  test('the CLI refuses a text bundle in one line', async () => {
    const run = promisify(execFile)(process.execPath, ['bin/ranet-edge.js', 'predict', BUNDLE, 'test/fixtures/images/grey.png'], { cwd: JS });
    await assert.rejects(run, (/** @type {any} */ e) => {
      assert.equal(e.code, 2);
      assert.match(e.stderr, /^error: this bundle takes named inputs, not images \(input_ids: int64 \(batch, sequence\), attention_mask: int64 \(batch, sequence\)\); pass them to predict/);
      assert.equal(e.stderr.trim().split('\n').length, 1);
      return true;
    });
  });
});

test('an image bundle also takes {image: tensor}, and refuses other names in one line', async () => {
  const { BUNDLE: IMAGES, shippedImages } = await import('./helpers.js');
  const images = await ExitChain.load(IMAGES, { ort });
  const x = images.preprocess(shippedImages().slice(0, 4));
  assert.equal(images.named, false);
  assert.deepEqual(images.inputs, [{ name: 'image', dtype: 'float32', shape: [null, 3, 32, 32], axes: ['batch', null, null, null] }]);
  const want = await images.predict(x, { thresholds: 0.9 });
  for (const mapped of [{ image: x }, new Map([['image', x]])]) {
    assert.deepEqual((await images.predict(mapped, { thresholds: 0.9 })).labels, want.labels);
  }
  await assert.rejects(images.predict({ pixels: x }), /this bundle takes one input, image: float32 \(N, 3, 32, 32\); got inputs pixels/);
  await images.release();
});

test('examples/text.mjs prints predict()\'s answers; the guide shows it verbatim', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['examples/text.mjs', BUNDLE], { cwd: JS });
  const dims = [2, 5];
  const ids = BigInt64Array.from([2, 17, 5, 33, 9, 2, 9, 0, 0, 0], BigInt);
  const mask = BigInt64Array.from([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], BigInt);
  const want = await chain.predict({ input_ids: { data: ids, dims }, attention_mask: { data: mask, dims } }, { rule: 'entropy', thresholds: 0.8 });
  assert.deepEqual(Array.from(want.exits), [0, 1], 'the two texts leave at exits of 3 and 5 classes');
  assert.deepEqual(stdout.trim().split('\n'), [0, 1].map((i) => `text ${i}: class ${want.labels[i]} of exit ${want.exits[i]}'s `
    + `${chain.exitClasses[want.exits[i]]}, confidence ${want.confidences[i].toFixed(3)}`));
  const guide = readFileSync(join(ROOT, 'docs', 'guides', 'javascript.md'), 'utf8');
  assert.ok(guide.includes(readFileSync(join(JS, 'examples', 'text.mjs'), 'utf8')), 'docs/guides/javascript.md shows js/examples/text.mjs');
});
