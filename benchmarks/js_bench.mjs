#!/usr/bin/env node
// ms per image, every exit against adaptive (the bundle's default operating point), for
// onnxruntime-web's WebAssembly backend in Node and in headless Chromium, next to the Python
// runtime (onnxruntime CPU), all with one thread, measured interleaved in one run: each round
// times every side in turn (rotating the order) on the same shipped images.
//
//   node benchmarks/js_bench.mjs [--rounds 5] [--images 100] [--batches 1,50] [--python .venv/bin/python]
//
// Needs `make js-install`; the Chromium side is skipped (and said so) without /usr/bin/chromium.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const JS = join(ROOT, 'js');
const BUNDLE = join(ROOT, 'ranet_edge', 'assets', 'default-bundle');
const OUT = join(ROOT, 'benchmarks', 'results', 'js_bench.json');

const args = process.argv.slice(2);
const opt = (/** @type {string} */ name, /** @type {string} */ dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const ROUNDS = Number(opt('--rounds', '5'));
const COUNT = Number(opt('--images', '100'));
const BATCHES = opt('--batches', '1,50').split(',').map(Number);
const PYTHON = opt('--python', join(ROOT, '.venv', 'bin', 'python'));

const ort = await import(join(JS, 'node_modules', 'onnxruntime-web', 'dist', 'ort.node.min.mjs'));
const { ExitChain } = await import(join(JS, 'src', 'index.js'));
const { shippedImages } = await import(join(JS, 'test', 'helpers.js'));
const { startServer } = await import(join(JS, 'demo', 'server.js'));
const { chromiumMissing, launchChromium, CHROMIUM } = await import(join(JS, 'tools', 'chromium.js'));

ort.env.wasm.numThreads = 1;
const images = shippedImages().slice(0, COUNT);

/** One timing round on a chain living in this JS context (Node or, serialised, the page). */
const roundSource = async (/** @type {any} */ chain, /** @type {any[]} */ pixels, /** @type {number} */ b) => {
  const batches = [];
  for (let i = 0; i < pixels.length; i += b) batches.push(chain.preprocess(pixels.slice(i, i + b)));
  const t0 = performance.now();
  for (const x of batches) await chain.runAll(x);
  const t1 = performance.now();
  const exits = [];
  for (const x of batches) exits.push(...(await chain.predict(x)).exits);
  const t2 = performance.now();
  return { all_ms: (t1 - t0) / pixels.length, adaptive_ms: (t2 - t1) / pixels.length, exits };
};

/** @type {Record<string, (b: number) => Promise<{all_ms: number, adaptive_ms: number, exits: number[]}>>} */
const sides = {};
const notes = [];

// --- Node, onnxruntime-web wasm
const nodeChain = await ExitChain.load(BUNDLE, { ort });
sides['onnxruntime-web wasm, Node'] = (b) => roundSource(nodeChain, images, b);

// --- Python runtime
const py = spawn(PYTHON, [join(ROOT, 'benchmarks', 'js_bench_python.py'), BUNDLE], { stdio: ['pipe', 'pipe', 'inherit'] });
const pyLines = createInterface({ input: py.stdout })[Symbol.asyncIterator]();
const pyReady = JSON.parse((await pyLines.next()).value);
sides['Python runtime (onnxruntime CPU)'] = async (b) => {
  py.stdin.write(`${JSON.stringify({ count: COUNT, batch: b })}\n`);
  return JSON.parse((await pyLines.next()).value);
};

// --- Chromium, onnxruntime-web wasm in the demo page
let browser = null;
let server = null;
let chromiumVersion = null;
const missing = chromiumMissing();
if (missing) {
  notes.push(`Chromium side skipped: ${missing}`);
  console.log(`skipping Chromium: ${missing}`);
} else {
  chromiumVersion = execFileSync(CHROMIUM, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  server = await startServer({ bundle: BUNDLE });
  browser = await launchChromium();
  const page = await browser.context.newPage();
  await page.goto(`${server.url}?threads=1`);
  await page.evaluate(() => /** @type {any} */ (window).ranetDemo.ready.then(() => undefined));
  const packed = Buffer.concat(images.map((/** @type {any} */ im) => Buffer.from(im.data))).toString('base64');
  await page.evaluate(({ packed, n, src }) => {
    const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
    const w = /** @type {any} */ (window);
    w.benchPixels = Array.from({ length: n }, (_, i) => ({ data: bytes.subarray(i * 3072, (i + 1) * 3072), width: 32, height: 32, channels: 3 }));
    w.benchRound = eval(`(${src})`);
  }, { packed, n: images.length, src: roundSource.toString() });
  sides['onnxruntime-web wasm, Chromium'] = (b) => page.evaluate(async (batch) => {
    const w = /** @type {any} */ (window);
    const r = await w.benchRound(await w.ranetDemo.ready, w.benchPixels, batch);
    return { ...r, exits: Array.from(r.exits) };
  }, b);
}

// --- interleaved rounds (one untimed warm-up round per side and batch)
const names = Object.keys(sides);
/** @type {Record<string, Record<number, {all: number[], adaptive: number[], exits: number[]}>>} */
const runs = Object.fromEntries(names.map((n) => [n, Object.fromEntries(BATCHES.map((b) => [b, { all: [], adaptive: [], exits: [] }]))]));
for (const b of BATCHES) for (const n of names) await sides[n](b);
for (let r = 0; r < ROUNDS; r++) {
  for (const b of BATCHES) {
    const order = names.map((_, i) => names[(i + r) % names.length]);
    for (const n of order) {
      const res = await sides[n](b);
      runs[n][b].all.push(res.all_ms);
      runs[n][b].adaptive.push(res.adaptive_ms);
      runs[n][b].exits = Array.from(res.exits);
    }
  }
  console.log(`round ${r + 1}/${ROUNDS} done`);
}
py.stdin.end();
await browser?.close();
await server?.close();

const median = (/** @type {number[]} */ v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const results = names.flatMap((n) => BATCHES.map((b) => {
  const { all, adaptive, exits } = runs[n][b];
  const hist = Array.from({ length: 6 }, (_, k) => exits.filter((e) => e === k).length);
  return { side: n, batch: b, all_exits_ms: median(all), adaptive_ms: median(adaptive),
    speedup: median(all) / median(adaptive), exit_histogram: hist, rounds: { all, adaptive } };
}));
const sameExits = BATCHES.every((b) => names.every((n) => JSON.stringify(runs[n][b].exits) === JSON.stringify(runs[names[0]][b].exits)));
const pkg = JSON.parse(readFileSync(join(JS, 'node_modules', 'onnxruntime-web', 'package.json'), 'utf8'));
const report = {
  command: `node benchmarks/js_bench.mjs ${args.join(' ')}`.trim(),
  machine: { cpu: cpus()[0]?.model, cpus: cpus().length, loadavg_at_end: loadavg() },
  versions: { node: process.version, 'onnxruntime-web': pkg.version, onnxruntime_python: pyReady.onnxruntime, chromium: chromiumVersion },
  threads: 'one on every side: onnxruntime-web env.wasm.numThreads = 1 (Node and Chromium), Python intra-op threads 1, spinning off',
  images: `${COUNT} of the shipped validation images (ranet_edge/assets/cifar10-val-500.npz), rounds: ${ROUNDS}, median per side`,
  adaptive: 'predict() at the bundle default operating point', same_exits_on_every_side: sameExits, notes, results,
};
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, `${JSON.stringify(report, null, 2)}\n`);
console.log(`wrote ${OUT}\n`);
console.log('| runtime | batch | all exits, ms/image | adaptive, ms/image | adaptive speed-up | exits (0..5) |');
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of results) {
  console.log(`| ${r.side} | ${r.batch} | ${r.all_exits_ms.toFixed(3)} | ${r.adaptive_ms.toFixed(3)} | x${r.speedup.toFixed(2)} | ${r.exit_histogram.join(' / ')} |`);
}
console.log(`\nsame exits on every side: ${sameExits}`);
