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

/** Time one mode ('all': runAll, 'adaptive': predict at the default operating point) on a chain in this JS context. */
const timeSource = async (/** @type {any} */ chain, /** @type {any[]} */ pixels, /** @type {number} */ b, /** @type {string} */ mode) => {
  const batches = [];
  for (let i = 0; i < pixels.length; i += b) batches.push(chain.preprocess(pixels.slice(i, i + b)));
  const exits = [];
  const t0 = performance.now();
  for (const x of batches) {
    if (mode === 'all') await chain.runAll(x);
    else exits.push(...(await chain.predict(x)).exits);
  }
  return { ms: (performance.now() - t0) / pixels.length, exits };
};

/** @type {Record<string, (b: number, mode: string) => Promise<{ms: number, cpu_ms: number | null, exits: number[]}>>} */
const sides = {};
const notes = [];

// --- Node, onnxruntime-web wasm (its WebAssembly runs on this thread: process CPU time is its cost)
const nodeChain = await ExitChain.load(BUNDLE, { ort });
sides['onnxruntime-web wasm, Node'] = async (b, mode) => {
  const c0 = process.cpuUsage();
  const r = await timeSource(nodeChain, images, b, mode);
  const c = process.cpuUsage(c0);
  return { ...r, cpu_ms: (c.user + c.system) / 1e3 / images.length };
};

// --- Python runtime
const py = spawn(PYTHON, [join(ROOT, 'benchmarks', 'js_bench_python.py'), BUNDLE], { stdio: ['pipe', 'pipe', 'inherit'] });
const pyLines = createInterface({ input: py.stdout })[Symbol.asyncIterator]();
const pyReady = JSON.parse((await pyLines.next()).value);
sides['Python runtime (onnxruntime CPU)'] = async (b, mode) => {
  py.stdin.write(`${JSON.stringify({ count: COUNT, batch: b, mode })}\n`);
  return JSON.parse((await pyLines.next()).value);
};

// --- Chromium, onnxruntime-web wasm in the demo page (CPU: the renderer process's CPU time, CDP metric ProcessTime)
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
  const cdp = await browser.context.newCDPSession(page);
  await cdp.send('Performance.enable');
  const cpuSeconds = async () => (await cdp.send('Performance.getMetrics')).metrics.find((m) => m.name === 'ProcessTime')?.value ?? NaN;
  await page.goto(`${server.url}?threads=1`);
  await page.evaluate(() => /** @type {any} */ (window).ranetDemo.ready.then(() => undefined));
  const packed = Buffer.concat(images.map((/** @type {any} */ im) => Buffer.from(im.data))).toString('base64');
  await page.evaluate(({ packed, n, src }) => {
    const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
    const w = /** @type {any} */ (window);
    w.benchPixels = Array.from({ length: n }, (_, i) => ({ data: bytes.subarray(i * 3072, (i + 1) * 3072), width: 32, height: 32, channels: 3 }));
    w.benchTime = eval(`(${src})`);
  }, { packed, n: images.length, src: timeSource.toString() });
  sides['onnxruntime-web wasm, Chromium'] = async (b, mode) => {
    const t0 = await cpuSeconds();
    const r = await page.evaluate(async ({ batch, mode }) => {
      const w = /** @type {any} */ (window);
      const r = await w.benchTime(await w.ranetDemo.ready, w.benchPixels, batch, mode);
      return { ...r, exits: Array.from(r.exits) };
    }, { batch: b, mode });
    return { ...r, cpu_ms: ((await cpuSeconds()) - t0) * 1e3 / images.length };
  };
}

// --- interleaved rounds (one untimed warm-up round per side); each round rotates the order
const names = Object.keys(sides);
const MODES = ['all', 'adaptive'];
/** @type {Record<string, Record<string, {ms: number[], cpu: number[], exits: number[]}>>} */
const runs = Object.fromEntries(names.map((n) => [n, Object.fromEntries(BATCHES.flatMap((b) => MODES.map((m) => [`${b}/${m}`, { ms: [], cpu: [], exits: [] }])))]));
for (const b of BATCHES) for (const m of MODES) for (const n of names) await sides[n](b, m);
for (let r = 0; r < ROUNDS; r++) {
  for (const b of BATCHES) {
    for (const m of MODES) {
      for (let i = 0; i < names.length; i++) {
        const n = names[(i + r) % names.length];
        const res = await sides[n](b, m);
        const slot = runs[n][`${b}/${m}`];
        slot.ms.push(res.ms);
        slot.cpu.push(res.cpu_ms ?? NaN);
        slot.exits = Array.from(res.exits);
      }
    }
  }
  console.log(`round ${r + 1}/${ROUNDS} done`);
}
py.stdin.end();
await browser?.close();
await server?.close();

const median = (/** @type {number[]} */ v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const results = names.flatMap((n) => BATCHES.map((b) => {
  const all = runs[n][`${b}/all`];
  const ada = runs[n][`${b}/adaptive`];
  const hist = Array.from({ length: 6 }, (_, k) => ada.exits.filter((e) => e === k).length);
  return { side: n, batch: b, all_exits_ms: median(all.ms), adaptive_ms: median(ada.ms), speedup: median(all.ms) / median(ada.ms),
    all_exits_cpu_ms: median(all.cpu), adaptive_cpu_ms: median(ada.cpu), exit_histogram: hist,
    rounds: { all_ms: all.ms, adaptive_ms: ada.ms, all_cpu_ms: all.cpu, adaptive_cpu_ms: ada.cpu } };
}));
const sameExits = BATCHES.every((b) => names.every((n) => JSON.stringify(runs[n][`${b}/adaptive`].exits) === JSON.stringify(runs[names[0]][`${b}/adaptive`].exits)));
const pkg = JSON.parse(readFileSync(join(JS, 'node_modules', 'onnxruntime-web', 'package.json'), 'utf8'));
const report = {
  command: `node benchmarks/js_bench.mjs ${args.join(' ')}`.trim(),
  machine: { cpu: cpus()[0]?.model, cpus: cpus().length, loadavg_at_end: loadavg() },
  versions: { node: process.version, 'onnxruntime-web': pkg.version, onnxruntime_python: pyReady.onnxruntime, chromium: chromiumVersion },
  threads: 'one on every side: onnxruntime-web env.wasm.numThreads = 1 (Node and Chromium), Python intra-op threads 1, spinning off',
  cpu: 'CPU ms per image: Node process.cpuUsage(), Python time.process_time(), Chromium renderer ProcessTime (CDP); wall ms is performance.now()/perf_counter()',
  images: `${COUNT} of the shipped validation images (ranet_edge/assets/cifar10-val-500.npz), rounds: ${ROUNDS}, median per side`,
  adaptive: 'predict() at the bundle default operating point', same_exits_on_every_side: sameExits, notes, results,
};
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, `${JSON.stringify(report, null, 2)}\n`);
console.log(`wrote ${OUT}\n`);
const f = (/** @type {number} */ v) => (v >= 10 ? v.toFixed(1) : v.toFixed(2));
console.log('| runtime | batch | all exits, ms/image | adaptive, ms/image | adaptive speed-up | all exits, CPU ms/image | adaptive, CPU ms/image |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const r of results) {
  console.log(`| ${r.side} | ${r.batch} | ${f(r.all_exits_ms)} | ${f(r.adaptive_ms)} | x${r.speedup.toFixed(2)} | ${f(r.all_exits_cpu_ms)} | ${f(r.adaptive_cpu_ms)} |`);
}
console.log(`\nexits at the default operating point (0..5): ${results[0].exit_histogram.join(' / ')}; same on every side: ${sameExits}`);
console.log(`load average at the end: ${loadavg().map((v) => v.toFixed(1)).join(' ')} on ${cpus().length} CPUs`);
