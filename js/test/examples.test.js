// The JavaScript guide's examples (docs/guides/javascript.md) are these files, run here: the Node program
// as a child process, the React Native module in Node with onnxruntime-web standing in for
// onnxruntime-react-native (the same onnxruntime-common API); the browser page runs in the
// Chromium test.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

import * as ort from 'onnxruntime-web';
import pngjs from 'pngjs';

import { pyFixed } from '../src/pyjson.js';
import { BUNDLE, JS, ROOT, VECTORS } from './helpers.js';

const python = JSON.parse(VECTORS.cli.default.stdout);
const pick = python.filter((/** @type {any} */ r) => r.image.endsWith('.png') && !r.image.includes('alpha')).slice(0, 4);

test('examples/node.mjs prints what `ranet-edge predict` prints in Python', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['examples/node.mjs', relative(JS, BUNDLE), ...pick.map((/** @type {any} */ r) => r.image)], { cwd: JS });
  const lines = stdout.trim().split('\n');
  assert.equal(lines[0], '6 exits, operating points: iso-accuracy, iso-accuracy-t, ladder-0, ladder-1, ladder-2, ladder-3, ladder-4, ladder-5, ladder-6, ladder-7, p0.5');
  assert.deepEqual(lines.slice(1), pick.map((/** @type {any} */ r) => `${r.image}: ${r.class}, exit ${r.exit}, confidence ${pyFixed(r.confidence, 3)}`));
});

test('examples/react-native.js: a readFile/sha256 source and RGBA camera frames', async () => {
  const { loadChain, classifyFrame } = await import('../examples/react-native.js');
  const read = [];
  const chain = await loadChain({
    ort, dir: BUNDLE, providers: ['wasm'],
    readFile: async (/** @type {string} */ path) => { read.push(path); return readFile(path); },
    sha256: (/** @type {Uint8Array} */ bytes) => createHash('sha256').update(bytes).digest('hex'),
  });
  assert.equal(read.length, 8, 'manifest, six graphs, thresholds');
  for (const r of pick) {
    const png = pngjs.PNG.sync.read(readFileSync(join(JS, r.image))); // RGBA, as a camera frame
    const got = await classifyFrame(chain, { data: png.data, width: png.width, height: png.height });
    assert.equal(got.label, r.class);
    assert.equal(got.exit, r.exit);
    assert.ok(Math.abs(got.confidence - r.confidence) < 2e-6);
  }
});

test('the JavaScript guide shows these files verbatim', () => {
  const readme = readFileSync(join(ROOT, 'docs', 'guides', 'javascript.md'), 'utf8');
  for (const file of ['node.mjs', 'browser.html', 'react-native.js']) {
    const body = readFileSync(join(JS, 'examples', file), 'utf8');
    assert.ok(readme.includes(body), `docs/guides/javascript.md must contain js/examples/${file} verbatim`);
  }
});
