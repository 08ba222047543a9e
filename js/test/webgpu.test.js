// WebGPU for real, opt-in (RANET_EDGE_WEBGPU=1): headless Chromium's WebGPU on SwiftShader
// (software Vulkan) runs the demo page with ?ep=webgpu. Cached tensors must live in GPU buffers
// and the answers must equal Python's. It takes minutes (shader compilation in software), so it
// is not part of `make test-js`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startServer } from '../demo/server.js';
import { chromiumMissing, launchChromium } from '../tools/chromium.js';
import { VECTORS, pythonLogits, relativeError, shippedImages } from './helpers.js';

const why = process.env.RANET_EDGE_WEBGPU !== '1' ? 'set RANET_EDGE_WEBGPU=1 to run it (about 5 minutes)' : chromiumMissing();
if (why) console.log(`# SKIP the WebGPU test: ${why}`);

/** @type {any} */ let server;
/** @type {any} */ let browser;
before(async () => {
  if (why) return;
  server = await startServer();
  browser = await launchChromium(['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan']);
});
after(async () => {
  await browser?.close();
  await server?.close();
});

test('WebGPU: feature maps stay in GPU buffers, answers equal Python', { skip: why || false, timeout: 900_000 }, async () => {
  const page = await browser.context.newPage();
  page.setDefaultTimeout(0);
  await page.goto(`${server.url}?ep=webgpu`);
  const pick = [0, 1, 4, 5, 21, 103, 2, 3, 6, 7, 8, 9]; // they leave at exits 0 to 3 at p0.5
  const all = shippedImages();
  const packed = Buffer.concat(pick.map((i) => Buffer.from(all[i].data))).toString('base64');
  const got = await page.evaluate(async ({ packed, n }) => {
    const chain = await /** @type {any} */ (window).ranetDemo.ready;
    const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
    const pixels = Array.from({ length: n }, (_, i) => ({ data: bytes.subarray(i * 3072, (i + 1) * 3072), width: 32, height: 32, channels: 3 }));
    const x = chain.preprocess(pixels);
    const g = chain.graphs[0];
    const out = await g.session.run({ [chain.inputName]: x }, g.fetches);
    const locations = Object.fromEntries(g.fetches.map((/** @type {string} */ name) => [name, out[name].location]));
    for (const name of g.cacheNames) out[name].dispose();
    const r = await chain.predict(x, { operatingPoint: 'p0.5' });
    const logits = (await chain.runAll(x)).map((/** @type {any} */ t) => Array.from(t.data));
    return { ep: chain.executionProviders, deviceIo: chain.deviceIo, locations, cache: g.cacheNames, logit: g.logits,
      exits: Array.from(r.exits), labels: Array.from(r.labels), confidences: Array.from(r.confidences), logits };
  }, { packed, n: pick.length });
  assert.deepEqual(got.ep, ['webgpu']);
  assert.equal(got.deviceIo, true);
  for (const name of got.cache) assert.equal(got.locations[name], 'gpu-buffer', name);
  for (const name of got.logit) assert.equal(got.locations[name], 'cpu', name);
  const p = VECTORS.predictions['p0.5'];
  assert.deepEqual(got.exits, pick.map((i) => p.exits[i]));
  assert.deepEqual(got.labels, pick.map((i) => p.labels[i]));
  pick.forEach((i, j) => assert.ok(Math.abs(got.confidences[j] - p.confidences[i]) <= 1e-5));
  const ref = pythonLogits();
  const errors = got.logits.map((/** @type {number[]} */ l, /** @type {number} */ k) => relativeError(l, pick.flatMap((i) => Array.from(ref[k].subarray(i * 10, i * 10 + 10)))));
  console.log(`# WebGPU relative error per exit: ${errors.map((/** @type {number} */ e) => e.toExponential(2)).join(' ')}`);
  errors.forEach((/** @type {number} */ e) => assert.ok(e <= 1e-5));
});
