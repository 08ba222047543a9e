// ExitChain loading, validation and errors: the manifest checks of the Python runtime, sha256
// before any session, paths that leave the bundle, URL and custom sources, thresholds, inputs.
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as ort from 'onnxruntime-web';

import { BundleError, CalibrationError, ExitChain, InputError, ProviderError, RanetEdgeError } from '../src/index.js';
import { gatherModel } from '../src/gather.js';
import { startServer } from '../demo/server.js';
import { assertContract, BUNDLE, shippedImages } from './helpers.js';

ort.env.wasm.numThreads = 1;
const GRAPHS = [0, 1, 2, 3, 4, 5].map((i) => `stage${i}.onnx`);
const images = shippedImages().slice(0, 12);
const tmp = mkdtempSync(join(tmpdir(), 'ranet-edge-js-'));
/** @type {ExitChain} */ let chain;

/** A copy of the shipped bundle (graphs, manifest, thresholds) whose manifest `edit` may change. @param {string} name @param {(m: any) => void} [edit] */
function copyBundle(name, edit) {
  const dir = join(tmp, name);
  for (const f of [...GRAPHS, 'manifest.json', 'thresholds.json']) cpSync(join(BUNDLE, f), join(dir, f));
  if (edit) {
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    edit(m);
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
  }
  return dir;
}

/** load() must fail with `type` and a one-line message matching `re`. @param {any} bundle @param {Function} type @param {RegExp} re @param {any} [options] */
async function refuses(bundle, type, re, options = {}) {
  await assert.rejects(ExitChain.load(bundle, { ort, warmup: false, ...options }), (/** @type {any} */ err) => {
    assert.ok(err instanceof type, `${err.name}: ${err.message}`);
    assert.ok(err instanceof RanetEdgeError);
    assert.match(err.message, re);
    assert.ok(!err.message.includes('\n'), 'one line');
    return true;
  });
}

before(async () => {
  chain = await ExitChain.load(BUNDLE, { ort });
});
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('loading', () => {
  test('a directory: the manifest facts and the stored operating points', () => {
    assert.equal(chain.numExits, 6);
    assert.equal(chain.numClasses, 10);
    assert.deepEqual(chain.inputShape, [3, 32, 32]);
    assert.equal(chain.classNames[3], 'cat');
    assert.equal(chain.defaultOperatingPoint, 'iso-accuracy');
    assert.deepEqual(Object.keys(chain.operatingPoints).sort(), ['iso-accuracy', 'iso-accuracy-t', 'ladder-0', 'ladder-1', 'ladder-2', 'ladder-3', 'ladder-4', 'ladder-5', 'ladder-6', 'ladder-7', 'p0.5']);
    assert.equal(chain.operatingPoints['p0.5'].thresholds[5], -Infinity);
    assert.deepEqual(chain.executionProviders, ['wasm']);
  });

  test('not a bundle, bad JSON, another format, another schema, a missing field', async () => {
    await refuses(join(tmp, 'nothing-here'), BundleError, /is not a bundle \(no manifest\.json\); create one with `ranet-edge export`/);
    const bad = copyBundle('bad-json');
    writeFileSync(join(bad, 'manifest.json'), '{"format": ');
    await refuses(bad, BundleError, /manifest\.json is not valid JSON .*; re-export the bundle/);
    await refuses(copyBundle('format', (m) => { m.format = 'other'; }), BundleError, /is not a ranet-edge bundle manifest/);
    await refuses(copyBundle('schema', (m) => { m.schema_version = 2; }), BundleError, /schema_version 2; this runtime reads version 1/);
    await refuses(copyBundle('no-exits', (m) => { delete m.exits; }), BundleError, /missing field 'exits'/);
    await refuses(copyBundle('no-sha', (m) => { delete m.graphs[2].sha256; }), BundleError, /missing field 'sha256'/);
  });

  test('graphs must carry exits 0..K-1 in order', async () => {
    await refuses(copyBundle('order', (m) => { [m.graphs[1].exits, m.graphs[2].exits] = [m.graphs[2].exits, m.graphs[1].exits]; }),
      BundleError, /graphs must carry exits 0\.\.5 in order/);
  });

  test('tensor names must match the graphs: logits outputs, and inputs an earlier graph produced', async () => {
    await refuses(copyBundle('logits', (m) => { m.graphs[0].logits = ['logits_zero']; }), BundleError, /graph stage0\.onnx has no output 'logits_zero' named in .*manifest\.json/);
    await refuses(copyBundle('inputs', (m) => { m.graphs[1].inputs = []; }), BundleError, /graph stage1\.onnx reads '.*', which .*manifest\.json does not list/);
  });

  test('a graph path that leaves the bundle is refused before anything is read', async () => {
    copyBundle('escape');
    await refuses(copyBundle('dotdot', (m) => { m.graphs[0].path = '../escape/stage0.onnx'; }), BundleError, /escapes the bundle directory/);
    // a path that goes out and back in is inside, as in Python
    const inout = copyBundle('inout', (m) => { m.graphs[0].path = '../inout/stage0.onnx'; });
    await ExitChain.load(inout, { ort, warmup: false });
    assertContract(inout); // what loads follows the bundle contract (ranet_edge/schemas)
    await refuses(copyBundle('abs', (m) => { m.graphs[0].path = join(BUNDLE, 'stage0.onnx'); }), BundleError, /must be relative to the bundle/);
    await refuses(copyBundle('url', (m) => { m.graphs[0].path = 'https://example.com/stage0.onnx'; }), BundleError, /must be relative to the bundle/);
    await refuses(copyBundle('mono', (m) => { m.monolithic.path = '../x.onnx'; }), BundleError, /escapes the bundle directory|must be relative/);
    const linked = copyBundle('symlink');
    rmSync(join(linked, 'stage3.onnx'));
    symlinkSync(join(BUNDLE, 'stage3.onnx'), join(linked, 'stage3.onnx'));
    await refuses(linked, BundleError, /"stage3\.onnx" escapes the bundle directory/);
  });

  test('a modified graph fails its sha256 check; a missing one is named', async () => {
    const dir = copyBundle('tampered');
    const bytes = readFileSync(join(dir, 'stage4.onnx'));
    bytes[bytes.length - 10] ^= 1;
    writeFileSync(join(dir, 'stage4.onnx'), bytes);
    await refuses(dir, BundleError, /graph stage4\.onnx fails its sha256 check \(manifest [0-9a-f]{12}\.\.\., file [0-9a-f]{12}\.\.\.\): it was modified/);
    const gone = copyBundle('missing');
    rmSync(join(gone, 'stage5.onnx'));
    await refuses(gone, BundleError, /graph stage5\.onnx listed in .*manifest\.json is missing; re-export the bundle/);
  });

  test('a caller-given sha256 function is used, and its verdict counts', async () => {
    let calls = 0;
    const { createHash } = await import('node:crypto');
    const sha256 = (/** @type {Uint8Array} */ b) => { calls++; return createHash('sha256').update(b).digest('hex'); };
    await ExitChain.load(BUNDLE, { ort, warmup: false, sha256 });
    assert.equal(calls, 6);
    await refuses(BUNDLE, BundleError, /fails its sha256 check/, { sha256: () => '0'.repeat(64) });
  });

  test('operating points: none stored means the last exit takes everything; a broken file is refused', async () => {
    const none = copyBundle('no-points');
    rmSync(join(none, 'thresholds.json'));
    const c = await ExitChain.load(none, { ort });
    assertContract(none);
    assert.equal(c.defaultOperatingPoint, null);
    const res = await c.predict(c.preprocess(images));
    assert.deepEqual(Array.from(res.exits), images.map(() => 5));
    await assert.rejects(c.predict(c.preprocess(images), { operatingPoint: 'p0.5' }), /unknown operating point "p0\.5"; stored: none \(run `ranet-edge calibrate`\)/);
    const broken = copyBundle('broken-points');
    writeFileSync(join(broken, 'thresholds.json'), '{"format": "something-else", "points": {}}');
    await refuses(broken, BundleError, /thresholds\.json is not a ranet-edge operating points file; delete it and calibrate again/);
  });

  test('a URL: same answers as the directory; paths that leave it are refused', async () => {
    const server = await startServer({ bundle: BUNDLE });
    const escaping = copyBundle('url-escape', (m) => { m.graphs[1].path = '../src/index.js'; });
    const escServer = await startServer({ bundle: escaping });
    const tampered = copyBundle('url-tampered');
    writeFileSync(join(tampered, 'stage0.onnx'), 'not the graph');
    const tamServer = await startServer({ bundle: tampered });
    try {
      const remote = await ExitChain.load(`${server.url}bundle`, { ort });
      const x = chain.preprocess(images);
      const [a, b] = [await remote.predict(x, { operatingPoint: 'p0.5' }), await chain.predict(x, { operatingPoint: 'p0.5' })];
      assert.deepEqual(a, b);
      await refuses(`${server.url}no-such-bundle/`, BundleError, /is not a bundle \(no manifest\.json\)/);
      await refuses(`${escServer.url}bundle/`, BundleError, /"\.\.\/src\/index\.js" escapes the bundle http:\/\/127\.0\.0\.1:\d+\/bundle\/; refusing to load it/);
      await refuses(`${tamServer.url}bundle/`, BundleError, /graph stage0\.onnx fails its sha256 check/);
      await refuses('http://127.0.0.1:9/bundle/', BundleError, /cannot fetch http:\/\/127\.0\.0\.1:9\/bundle\/manifest\.json/);
    } finally {
      await Promise.all([server.close(), escServer.close(), tamServer.close()]);
    }
  });

  test('a source object (React Native file systems): read through readBytes, ".." refused', async () => {
    const read = [];
    const source = {
      describe: 'memory',
      readBytes: async (/** @type {string} */ rel) => {
        read.push(rel);
        try { return readFileSync(join(BUNDLE, rel)); } catch { return null; }
      },
    };
    const c = await ExitChain.load(source, { ort, warmup: false });
    assert.equal(c.numExits, 6);
    assert.deepEqual(read, ['manifest.json', ...GRAPHS, 'thresholds.json']);
    const manifest = JSON.parse(readFileSync(join(BUNDLE, 'manifest.json'), 'utf8'));
    manifest.graphs[0].path = 'a/../../x.onnx';
    const evil = { readBytes: async (/** @type {string} */ rel) => (rel === 'manifest.json' ? Buffer.from(JSON.stringify(manifest)) : null) };
    await refuses(evil, BundleError, /escapes the bundle/);
  });

  test('an execution provider this backend lacks is a ProviderError', async () => {
    await refuses(BUNDLE, ProviderError, /execution providers \["webgpu"\] cannot run here .*use \['wasm'\]/, { executionProviders: ['webgpu'] });
    await assert.rejects(ExitChain.load(BUNDLE, { ort: {} }), ProviderError);
  });
});

describe('inputs and thresholds', () => {
  test('checkInput: type, dtype, shape, emptiness and finiteness, each with the fix', async () => {
    const n = 3 * 32 * 32;
    const bad = [
      [null, /input must be a float32 tensor .*; use chain\.preprocess\(images\)/],
      [new ort.Tensor('int32', new Int32Array(n), [1, 3, 32, 32]), /input dtype is int32, expected float32/],
      [new ort.Tensor('float32', new Float32Array(n), [3, 32, 32]), /input shape is \(3, 32, 32\), expected \(N, 3, 32, 32\) with N >= 1/],
      [new ort.Tensor('float32', new Float32Array(2 * n), [1, 3, 64, 32]), /input shape is \(1, 3, 64, 32\)/],
      [new ort.Tensor('float32', new Float32Array(0), [0, 3, 32, 32]), /input shape is \(0, 3, 32, 32\)/],
      [new ort.Tensor('float32', new Float32Array(n).fill(NaN), [1, 3, 32, 32]), /input contains NaN or infinite values/],
      [{ data: new Float32Array(5), dims: [1, 3, 32, 32] }, /Float32Array of 3072 values/],
    ];
    for (const [x, re] of bad) {
      await assert.rejects(chain.runAll(x), (/** @type {any} */ e) => e instanceof InputError && re.test(e.message));
      await assert.rejects(chain.predict(x), InputError);
    }
    // a plain {data, dims} is accepted
    const plain = chain.preprocess(images[0]);
    const res = await chain.predict({ data: plain.data, dims: plain.dims });
    assert.equal(res.labels.length, 1);
  });

  test('thresholds: the Python rules and messages', async () => {
    const x = chain.preprocess(images);
    const refusals = [
      [{ operatingPoint: 'fast' }, /unknown operating point "fast"; stored: iso-accuracy, iso-accuracy-t, ladder-0, ladder-1, ladder-2, ladder-3, ladder-4, ladder-5, ladder-6, ladder-7, p0\.5/],
      [{ thresholds: [0.5, 0.5] }, /give 5 or 6 thresholds \(one per exit, the last always accepts\), got 2/],
      [{ thresholds: 1.5 }, /thresholds must lie in \[0, 1\], got \[1\.5, 1\.5, 1\.5, 1\.5, 1\.5\]/],
      [{ thresholds: [0.5, 0.5, NaN, 0.5, 0.5] }, /thresholds must lie in \[0, 1\]/],
      [{ thresholds: '0.5' }, /threshold "0\.5" must be a number in \[0, 1\]/],
      [{ thresholds: [0.5, '0.5', 0.5, 0.5, 0.5] }, /must be numbers in \[0, 1\]/],
      [{ thresholds: 0.5, operatingPoint: 'p0.5' }, /give thresholds or operatingPoint, not both/],
    ];
    for (const [opt, re] of refusals) {
      await assert.rejects(chain.predict(x, /** @type {any} */ (opt)), (/** @type {any} */ e) => e instanceof CalibrationError && re.test(e.message), String(re));
    }
    // Infinity: nobody leaves early; 0: everybody leaves at exit 0; K values: the last is ignored
    const late = await chain.predict(x, { thresholds: Infinity });
    assert.deepEqual(Array.from(late.exits), images.map(() => 5));
    const early = await chain.predict(x, { thresholds: [0, 0, 0, 0, 0, 0.99] });
    assert.deepEqual(Array.from(early.exits), images.map(() => 0));
    const t = chain.resolveThresholds({ operatingPoint: 'iso-accuracy-t' });
    assert.equal(t.thresholds[5], -Infinity);
    assert.ok(Math.abs(t.temperatures[0] - 1.1387886) < 1e-6);
  });

  test('exit rules: entropy and patience, their errors, and points that store a rule', async () => {
    const x = chain.preprocess(images);
    const refusals = [
      [{ rule: 'margin' }, /unknown exit rule "margin"; use one of max_prob, entropy, patience/],
      [{ rule: 'patience' }, /is for the 'max_prob' rule, not 'patience'/],
      [{ patience: 0 }, /patience=0 must be a whole number >= 1/],
      [{ patience: 2, rule: 'entropy' }, /goes with rule='patience', not 'entropy'/],
      [{ patience: 2, thresholds: 0.5 }, /not both/],
      [{ rule: 'entropy', thresholds: -1 }, /thresholds of the entropy rule must each be a max entropy >= 0/],
      [{ rule: 'entropy', operatingPoint: 'p0.5' }, /'p0\.5' is for the 'max_prob' rule, not 'entropy'/],
    ];
    for (const [opt, re] of refusals) {
      await assert.rejects(chain.predict(x, /** @type {any} */ (opt)), (/** @type {any} */ e) => e instanceof CalibrationError && re.test(e.message), String(re));
    }
    // entropy: Infinity keeps everyone to the last exit, a large finite value lets everyone go at exit 0
    assert.deepEqual(Array.from((await chain.predict(x, { rule: 'entropy', thresholds: Infinity })).exits), images.map(() => 5));
    assert.deepEqual(Array.from((await chain.predict(x, { rule: 'entropy', thresholds: 100 })).exits), images.map(() => 0));
    // patience t never leaves before exit t
    const p2 = await chain.predict(x, { patience: 2 });
    assert.ok(Array.from(p2.exits).every((e) => e >= 2));
    // a stored point with a rule: thresholds.json's 1e8 is "nobody leaves" for every rule
    const dir = copyBundle('rules');
    const points = JSON.parse(readFileSync(join(dir, 'thresholds.json'), 'utf8'));
    points.points.calm = { ...points.points['p0.5'], rule: 'entropy', thresholds: [0.4, 1e8, 0.4, 0.4, 0.4, null] };
    writeFileSync(join(dir, 'thresholds.json'), JSON.stringify(points));
    const c = await ExitChain.load(dir, { ort });
    assert.deepEqual(Array.from(c.resolveThresholds({ operatingPoint: 'calm' }).thresholds), [0.4, Infinity, 0.4, 0.4, 0.4, -Infinity]);
    const stored = await c.predict(x, { operatingPoint: 'calm' });
    const direct = await c.predict(x, { rule: 'entropy', thresholds: [0.4, Infinity, 0.4, 0.4, 0.4] });
    assert.deepEqual(stored.exits, direct.exits);
    assert.ok(!Array.from(stored.exits).includes(1));
    await c.release();
  });

  test('a threshold a sample meets exactly takes it (>=)', async () => {
    const x = chain.preprocess(images.slice(0, 1));
    const all = await chain.runAll(x);
    const { softmaxRow } = await import('../src/decide.js');
    const conf = softmaxRow(all[0].data, 0, 10, 1, new Float32Array(10));
    const at = await chain.predict(x, { thresholds: [conf, 1, 1, 1, 1] });
    assert.equal(at.exits[0], 0);
    const above = await chain.predict(x, { thresholds: [conf + 1e-7, 1, 1, 1, 1] });
    assert.notEqual(above.exits[0], 0);
  });
});

describe('routing', () => {
  test('a static-batch bundle runs in zero-padded chunks with the same answers', async () => {
    const dir = copyBundle('static4', (m) => { m.batch_size = 4; });
    const c = await ExitChain.load(dir, { ort });
    assertContract(dir);
    assert.equal(c.staticBatch, 4);
    const x = chain.preprocess(images.slice(0, 10));
    const [a, b] = [await c.predict(x, { operatingPoint: 'p0.5' }), await chain.predict(x, { operatingPoint: 'p0.5' })];
    assert.deepEqual(a.exits, b.exits);
    assert.deepEqual(a.labels, b.labels);
    for (let i = 0; i < a.confidences.length; i++) assert.ok(Math.abs(a.confidences[i] - b.confidences[i]) < 1e-6);
    const logits = await c.runAll(x);
    assert.deepEqual(logits[5].dims, [10, 10]);
  });

  test('results come back in input order whatever exit each sample takes', async () => {
    const x = chain.preprocess(images);
    const res = await chain.predict(x, { operatingPoint: 'p0.5' });
    assert.ok(new Set(res.exits).size > 1, 'the images leave at several exits');
    for (let i = 0; i < images.length; i++) {
      const one = await chain.predict(chain.preprocess(images[i]), { operatingPoint: 'p0.5' });
      assert.equal(one.exits[0], res.exits[i]);
      assert.equal(one.labels[0], res.labels[i]);
    }
  });

  test('the Gather model picks rows on the backend', async () => {
    const s = await ort.InferenceSession.create(gatherModel(1));
    const x = new ort.Tensor('float32', Float32Array.from({ length: 24 }, (_, i) => i), [4, 2, 3]);
    const idx = new ort.Tensor('int64', BigInt64Array.from([3n, 1n]), [2]);
    const { y } = await s.run({ x, idx });
    assert.deepEqual(y.dims, [2, 2, 3]);
    assert.deepEqual(Array.from(y.data), [18, 19, 20, 21, 22, 23, 6, 7, 8, 9, 10, 11]);
  });
});
