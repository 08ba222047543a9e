// The bundles the JavaScript tests load follow the bundle contract: the JSON Schema the Python
// package ships (ranet_edge/schemas), validated here with ajv. chain.test.js checks each copy it
// loads successfully too.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { assertContract, BUNDLE, contractErrors, ROOT } from './helpers.js';

const manifest = JSON.parse(readFileSync(join(BUNDLE, 'manifest.json'), 'utf8'));
const thresholds = JSON.parse(readFileSync(join(BUNDLE, 'thresholds.json'), 'utf8'));
/** @param {any} data @param {(d: any) => void} edit */
const edited = (data, edit) => { const copy = structuredClone(data); edit(copy); return copy; };

test('the shipped bundle and the comparison bundles follow the contract', () => {
  for (const dir of [BUNDLE, join(ROOT, 'benchmarks', 'comparison', 'ranet.bundle'), join(ROOT, 'benchmarks', 'comparison', 'msdnet.bundle')]) {
    assertContract(dir);
  }
});

test('the schema refuses what the driver refuses, naming the field', () => {
  const cases = [
    [(/** @type {any} */ m) => { m.format = 'other'; }, /format/],
    [(/** @type {any} */ m) => { m.schema_version = 2; }, /schema_version/],
    [(/** @type {any} */ m) => { delete m.exits; }, /exits/],
    [(/** @type {any} */ m) => { delete m.graphs[2].sha256; }, /graphs\/2.*sha256/],
    [(/** @type {any} */ m) => { m.graphs[0].path = '/abs/stage0.onnx'; }, /graphs\/0\/path/],
    [(/** @type {any} */ m) => { m.exits[1].run_flops = -1; }, /exits\/1\/run_flops/],
    [(/** @type {any} */ m) => { m.unknown_field = true; }, /additional properties/],
  ];
  for (const [edit, where] of cases) {
    const errors = contractErrors('manifest', edited(manifest, /** @type {any} */ (edit)));
    assert.ok(errors.some((e) => /** @type {RegExp} */ (where).test(e)), `${where}: ${errors.join('; ')}`);
  }
  assert.deepEqual(contractErrors('manifest', manifest), []);
});

test('thresholds.json: null for the last exit, 1e8 for "nobody leaves", [0, 1] otherwise', () => {
  assert.deepEqual(contractErrors('thresholds', thresholds), []);
  const name = Object.keys(thresholds.points)[0];
  const ok = edited(thresholds, (t) => { t.points[name].thresholds[0] = 1e8; });
  assert.deepEqual(contractErrors('thresholds', ok), []);
  const bad = edited(thresholds, (t) => { t.points[name].thresholds[0] = 1.5; });
  assert.ok(contractErrors('thresholds', bad).length > 0);
});
