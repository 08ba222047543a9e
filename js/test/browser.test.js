// The demo page in headless Chromium (Debian's chromium, driven by playwright-core): it must
// classify the shipped images exactly as the Python runtime does, from files picked in the
// page and from raw pixels, and classify webcam frames (Chromium's fake camera).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../demo/server.js';
import { chromiumMissing, launchChromium } from '../tools/chromium.js';
import { FIXTURES, VECTORS, optionsOf, pythonLogits, relativeError, shippedImages } from './helpers.js';

const missing = chromiumMissing();
if (missing) console.log(`# SKIP the Chromium tests: ${missing}`);

describe('demo page in headless Chromium', { skip: missing ? `Chromium tests skipped: ${missing}` : false }, () => {
  /** @type {Awaited<ReturnType<typeof startServer>>} */ let server;
  /** @type {Awaited<ReturnType<typeof launchChromium>>} */ let browser;
  /** @type {import('playwright-core').Page} */ let page;
  /** @type {string[]} */ const pageErrors = [];

  before(async () => {
    server = await startServer();
    browser = await launchChromium(['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
    await browser.context.grantPermissions(['camera'], { origin: server.url.replace(/\/$/, '') });
    page = await browser.context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (msg) => { if (msg.type() === 'error') pageErrors.push(`${msg.text()} ${msg.location().url}`); });
    await page.goto(server.url);
    await page.evaluate(() => /** @type {any} */ (window).ranetDemo.ready.then(() => undefined));
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('the page loads and checks the bundle', async () => {
    assert.match(await page.textContent('#status') ?? '', /^6 exits, 10 classes, on wasm; loaded and checked in \d+ ms$/);
    assert.equal(await page.inputValue('#point'), VECTORS.default_operating_point);
  });

  test('picked files: label and exit as `ranet-edge predict` in Python', async () => {
    const py = JSON.parse(VECTORS.cli.default.stdout);
    await page.setInputFiles('#files', py.map((/** @type {any} */ r) => join(FIXTURES, '..', '..', r.image)));
    await page.waitForSelector('body[data-done="1"]');
    const shown = await page.$$eval('#results tr[data-file]', (trs) => trs.map((tr) => ({
      file: /** @type {HTMLElement} */ (tr).dataset.file, label: Number(/** @type {HTMLElement} */ (tr).dataset.label),
      exit: Number(/** @type {HTMLElement} */ (tr).dataset.exit), cells: Array.from(tr.querySelectorAll('td'), (td) => td.textContent),
    })));
    assert.equal(shown.length, py.length);
    const differ = [];
    for (const [i, want] of py.entries()) {
      const got = shown[i];
      assert.equal(got.file, want.image.split('/').pop());
      assert.match(got.cells[5] ?? '', /^\d+\.\d$/, 'ms shown');
      if (got.label !== want.label || got.exit !== want.exit || Math.abs(Number(got.cells[4]) - want.confidence) > 1.5e-3) differ.push(got.file);
    }
    // A canvas stores pixels premultiplied by alpha, so the half-transparent image reads
    // differently from OpenCV, which drops alpha; every other file must match.
    console.log(`# files whose label, exit or confidence differ from Python: ${differ.join(', ') || 'none'}`);
    assert.deepEqual(differ.filter((f) => f !== 'alpha.png'), []);
  });

  test('the 500 shipped images: logits within 1e-5 relative, identical exits and labels at every operating point', async () => {
    const images = shippedImages();
    const packed = Buffer.concat(images.map((im) => Buffer.from(im.data))).toString('base64');
    const specs = Object.fromEntries(Object.entries(VECTORS.predictions).map(([k, p]) => [k, optionsOf(p)]));
    const got = await page.evaluate(async ({ packed, n, specs }) => {
      const demo = /** @type {any} */ (window).ranetDemo;
      const chain = await demo.ready;
      const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
      const pixels = Array.from({ length: n }, (_, i) => ({ data: bytes.subarray(i * 3072, (i + 1) * 3072), width: 32, height: 32, channels: 3 }));
      const x = chain.preprocess(pixels);
      const logits = (await chain.runAll(x)).map((/** @type {any} */ t) => Array.from(t.data));
      /** @type {Record<string, any>} */
      const answers = {};
      for (const [key, options] of Object.entries(specs)) {
        const r = await chain.predict(x, options);
        answers[key] = { exits: Array.from(r.exits), labels: Array.from(r.labels), confidences: Array.from(r.confidences) };
      }
      return { logits, answers };
    }, { packed, n: images.length, specs });
    const ref = pythonLogits();
    const errors = got.logits.map((l, k) => relativeError(l, ref[k]));
    console.log(`# Chromium relative error per exit: ${errors.map((e) => e.toExponential(2)).join(' ')}`);
    errors.forEach((e) => assert.ok(e <= 1e-5));
    for (const [key, p] of Object.entries(VECTORS.predictions)) {
      const a = got.answers[key];
      const near = new Set(p.near_threshold);
      p.exits.forEach((/** @type {number} */ e, /** @type {number} */ i) => {
        if (near.has(i)) return;
        assert.equal(a.exits[i], e, `${key} image ${i}: exit`);
        assert.equal(a.labels[i], p.labels[i], `${key} image ${i}: label`);
        assert.ok(Math.abs(a.confidences[i] - p.confidences[i]) <= 1e-5);
      });
    }
  });

  test('the webcam: frames are classified live', async () => {
    await page.click('#camera');
    await page.waitForFunction(() => Number(document.getElementById('live')?.dataset.frames) >= 3, null, { timeout: 60_000 });
    const cells = await page.$$eval('#live td', (tds) => tds.map((td) => td.textContent));
    assert.equal(cells[1], 'webcam');
    assert.match(cells[2] ?? '', /^(airplane|automobile|bird|cat|deer|dog|frog|horse|ship|truck)$/);
    assert.match(cells[3] ?? '', /^[0-5]$/);
    assert.match(cells[5] ?? '', /^\d+\.\d$/);
    await page.click('#camera');
    assert.equal(await page.textContent('#camera'), 'use the webcam');
  });

  test('the JavaScript guide\'s browser example (examples/browser.html) classifies a picked file as Python does', async () => {
    const py = JSON.parse(VECTORS.cli.default.stdout).find((/** @type {any} */ r) => r.image.endsWith('exit3-bird.png'));
    const example = await browser.context.newPage();
    example.on('pageerror', (err) => pageErrors.push(err.message));
    await example.goto(`${server.url}examples/browser.html`);
    await example.waitForFunction(() => document.getElementById('out')?.textContent === 'pick an image', null, { timeout: 120_000 });
    await example.setInputFiles('#file', join(FIXTURES, '..', '..', py.image));
    await example.waitForFunction(() => /exit/.test(document.getElementById('out')?.textContent ?? ''));
    const text = await example.textContent('#out');
    assert.match(text ?? '', new RegExp(`^${py.class}: exit ${py.exit}, confidence ${py.confidence.toFixed(3)}, \\d+\\.\\d ms$`));
    await example.close();
  });

  test('no errors in the page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
