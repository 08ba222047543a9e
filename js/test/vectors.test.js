// Cross-checks with the Python runtime: the same bundle and images must give the same input
// tensor (bit for bit), logits within 1e-5 relative, and identical exits and labels at every
// operating point, on onnxruntime-web's WebAssembly backend in Node.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-web';

import { ExitChain } from '../src/index.js';
import { Results, Streak } from '../src/decide.js';
import { BUNDLE, FIXTURES, VECTORS, optionsOf, pythonLogits, relativeError, shippedImages } from './helpers.js';

ort.env.wasm.numThreads = 1;
const TOL = 1e-5;

/** @type {ExitChain} */ let chain;
/** @type {any} */ let x;
const images = shippedImages();
const refLogits = pythonLogits();

before(async () => {
  chain = await ExitChain.load(BUNDLE, { ort });
  x = chain.preprocess(images);
});

/** Assert exits and labels equal Python's, confidences within TOL; returns the exit counts. @param {any} res @param {any} p @param {number[]} [subset] */
function assertSame(res, p, subset) {
  const idx = subset ?? p.exits.map((/** @type {number} */ _, /** @type {number} */ i) => i);
  const near = new Set(p.near_threshold);
  let checked = 0;
  idx.forEach((i, j) => {
    if (near.has(i)) return; // within the logit tolerance of a threshold: either exit is right
    assert.equal(res.exits[j], p.exits[i], `image ${i}: exit`);
    assert.equal(res.labels[j], p.labels[i], `image ${i}: label`);
    assert.ok(Math.abs(res.confidences[j] - p.confidences[i]) <= TOL, `image ${i}: confidence ${res.confidences[j]} vs ${p.confidences[i]}`);
    checked++;
  });
  return checked;
}

describe('against the Python runtime', () => {
  test('the shipped images are the ones the vectors were made from', () => {
    const { path } = VECTORS.images;
    const all = Buffer.concat(images.map((im) => Buffer.from(im.data)));
    assert.equal(createHash('sha256').update(all).digest('hex'), VECTORS.images.pixels_sha256, `${path} changed: regenerate the vectors`);
    assert.equal(createHash('sha256').update(readFileSync(join(BUNDLE, 'manifest.json'))).digest('hex'), VECTORS.manifest_sha256);
  });

  test('preprocess gives the Python input tensor bit for bit', () => {
    assert.deepEqual(x.dims, [images.length, 3, 32, 32]);
    const bytes = Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength);
    assert.equal(createHash('sha256').update(bytes).digest('hex'), VECTORS.input_sha256);
  });

  test('runAll: every exit within 1e-5 relative of Python, batch 500', async () => {
    const logits = await chain.runAll(x);
    assert.equal(logits.length, 6);
    const errors = logits.map((t, k) => {
      assert.deepEqual(t.dims, [images.length, 10]);
      return relativeError(t.data, refLogits[k]);
    });
    console.log(`# relative error per exit: ${errors.map((e) => e.toExponential(2)).join(' ')}`);
    errors.forEach((e, k) => assert.ok(e <= TOL, `exit ${k}: relative error ${e}`));
  });

  test('runAll at batch 1 gives the batch results', async () => {
    const all = await chain.runAll(x);
    for (const i of [0, 7, 123, 499]) {
      const one = await chain.runAll(chain.preprocess(images[i]));
      one.forEach((t, k) => assert.ok(relativeError(t.data, all[k].data.subarray(i * 10, i * 10 + 10)) <= TOL));
    }
  });

  for (const [key, p] of Object.entries(VECTORS.predictions)) {
    test(`predict at ${key}: identical exits and labels for all ${VECTORS.images.count} images`, async () => {
      const res = await chain.predict(x, optionsOf(p));
      const checked = assertSame(res, p);
      assert.equal(checked, images.length - p.near_threshold.length);
      assert.ok(checked >= images.length - 5, 'too many samples near a threshold to compare');
      const counts = Array.from({ length: 6 }, (_, k) => res.exits.filter((e) => e === k).length);
      assert.deepEqual(counts, p.exit_counts);
      // probabilities: a distribution whose max is the confidence, at the label
      for (let i = 0; i < 5; i++) {
        const row = res.probabilities.subarray(i * 10, i * 10 + 10);
        assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-5);
        assert.ok(Math.abs(row[res.labels[i]] - res.confidences[i]) < 1e-6);
      }
    });
  }

  test('the default operating point is the stored default', async () => {
    const few = chain.preprocess(images.slice(0, 100));
    const res = await chain.predict(few);
    assertSame(res, VECTORS.predictions[VECTORS.default_operating_point], Array.from({ length: 100 }, (_, i) => i));
  });

  test('predict one image at a time gives the batch answers', async () => {
    const p = VECTORS.predictions['p0.5'];
    const subset = [0, 1, 4, 5, 21, 103, 250, 499];
    for (const i of subset) {
      const res = await chain.predict(chain.preprocess(images[i]), { operatingPoint: 'p0.5' });
      assertSame(res, p, [i]);
    }
  });

  test('the JS exit rule on the Python logits reproduces every Python decision', () => {
    for (const [key, p] of Object.entries(VECTORS.predictions)) {
      const { thresholds, temperatures, rule } = chain.resolveThresholds(optionsOf(p));
      assert.equal(rule, p.rule, key);
      const n = images.length;
      const results = new Results(n, 10);
      const rows = Int32Array.from({ length: n }, (_, i) => i);
      const alive = new Uint8Array(n).fill(1);
      const streak = new Streak(n);
      refLogits.forEach((z, k) => results.decide(z, k, thresholds[k], temperatures[k], rows, alive, rule, streak));
      assert.deepEqual(Array.from(results.exits), p.exits, key);
      assert.deepEqual(Array.from(results.labels), p.labels, key);
      // numpy's vectorised float32 exp (a few units in the last place) and pairwise sum round
      // differently from Math.exp and a running sum: confidences agree within ~5 float32 ulps
      // (3e-7 seen with temperature scaling), not bit for bit; exits and labels are identical.
      p.confidences.forEach((/** @type {number} */ c, /** @type {number} */ i) => assert.ok(Math.abs(results.confidences[i] - c) <= 1e-6, `${key} image ${i}: ${results.confidences[i]} vs ${c}`));
    }
  });

  test('deviceIo (rows gathered by a Gather session) gives the same answers', async () => {
    const dev = await ExitChain.load(BUNDLE, { ort, deviceIo: true });
    const few = chain.preprocess(images.slice(0, 200));
    for (const key of ['p0.5', 'iso-accuracy-t']) {
      // both chains at once: runs of different chains must not interleave inside onnxruntime-web
      const [a, b] = await Promise.all([dev.predict(few, { operatingPoint: key }), chain.predict(few, { operatingPoint: key })]);
      assert.deepEqual(a.exits, b.exits);
      assert.deepEqual(a.labels, b.labels);
      assert.deepEqual(a.probabilities, b.probabilities);
    }
    await dev.release();
  });
});

test('fixture files: decoded and fitted as Python does', async () => {
  const { readImage } = await import('../src/node.js');
  const { fitImage, specFrom } = await import('../src/preprocess.js');
  const spec = specFrom(JSON.parse(readFileSync(join(BUNDLE, 'manifest.json'), 'utf8')).preprocessing);
  for (const [name, f] of Object.entries(VECTORS.files)) {
    const im = await readImage(join(FIXTURES, 'images', name));
    assert.deepEqual([im.height, im.width, 3], f.decoded_shape, name);
    const fitted = fitImage(im, spec);
    const ref = Buffer.from(f.fitted_rgb_base64, 'base64');
    const meanDiff = (/** @type {Uint8Array} */ a) => a.reduce((s, v, i) => s + Math.abs(v - ref[i]), 0) / ref.length;
    if (name.endsWith('.jpg')) {
      // jpeg-js is not libjpeg-turbo: its IDCT and chroma upsampling differ by a few levels.
      const mean = meanDiff(fitted);
      console.log(`# ${name}: mean |jpeg-js - OpenCV| = ${mean.toFixed(2)} levels`);
      assert.ok(mean < 3, `${name}: mean difference ${mean}`);
      if (name.startsWith('exif')) {
        // turned upright as OpenCV turns it: the image upside down is far off
        const { orient } = await import('../src/orientation.js');
        assert.ok(meanDiff(fitImage(orient(im, 3), spec)) > 5 * mean);
      }
      continue;
    }
    const sha = createHash('sha256').update(im.data).digest('hex');
    assert.equal(sha, f.decoded_sha256, `${name}: decoded pixels`);
    assert.deepEqual(Buffer.from(fitted), ref, `${name}: resized/fitted pixels`);
  }
});
