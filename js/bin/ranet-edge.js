#!/usr/bin/env node
/**
 * ranet-edge for Node: `ranet-edge predict BUNDLE IMAGE... [--thresholds SPEC] [--rule R] [--patience T] [--json]`, the
 * Python CLI's `predict` on onnxruntime-web's WebAssembly backend, with the same output.
 */
import { readFileSync } from 'node:fs';

import { ExitChain, RanetEdgeError } from '../src/index.js';
import { readImage } from '../src/node.js';
import { pyFixed, pyJson, pyRound } from '../src/pyjson.js';

const USAGE = `Usage: ranet-edge predict BUNDLE IMAGE... [--thresholds SPEC] [--rule R] [--patience T] [--threads N] [--json]

  Classify PNG or JPEG files; each stops at the first exit its exit rule takes it at.

  --thresholds SPEC  one value, a comma list per exit, or an operating point name
                     [default: the bundle's default operating point]
  --rule R           max_prob, entropy (thresholds are max entropies) or patience
                     [default: the operating point's, else max_prob]
  --patience T       PABEE's t: leave once t exits in a row agree with this one's label
  --threads N        WebAssembly threads [default: 1]
  --json             print machine-readable JSON (as \`ranet-edge predict --json\`)`;

class UsageError extends RanetEdgeError {}

/** Python's float(): decimal or exponent notation, inf, nan; anything else is not a number. @param {string} s */
function pyFloatParse(s) {
  const t = s.trim().toLowerCase();
  if (/^[+-]?(inf|infinity)$/.test(t)) return t.startsWith('-') ? -Infinity : Infinity;
  if (/^[+-]?nan$/.test(t)) return NaN;
  return /^[+-]?(\d+(_\d+)*\.?(\d+(_\d+)*)?|\.\d+(_\d+)*)(e[+-]?\d+)?$/.test(t) ? Number(t.replaceAll('_', '')) : null;
}

/**
 * '0.9', '0.8,0.9,0.95' or an operating point name -> predict() options (parse_thresholds in Python).
 * @param {string | undefined} spec
 */
export function parseThresholds(spec) {
  if (spec === undefined) return {};
  const values = spec.split(',').map(pyFloatParse);
  if (values.some((v) => v === null)) return { operatingPoint: spec };
  return { thresholds: values.length === 1 ? /** @type {number} */ (values[0]) : /** @type {number[]} */ (values) };
}

/** @param {string[]} argv */
function parseArgs(argv) {
  /** @type {{positional: string[], json: boolean, thresholds?: string, rule?: string, patience?: number, threads: number, help: boolean, version: boolean}} */
  const out = { positional: [], json: false, threads: 1, help: false, version: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const eq = a.indexOf('=');
      if (eq >= 0) return a.slice(eq + 1);
      if (i + 1 >= argv.length) throw new UsageError(`option ${a} needs a value; see ranet-edge --help`);
      return argv[++i];
    };
    if (a === '--json') out.json = true;
    else if (a === '-h' || a === '--help') out.help = true;
    else if (a === '--version') out.version = true;
    else if (a === '--thresholds' || a.startsWith('--thresholds=')) out.thresholds = value();
    else if (a === '--rule' || a.startsWith('--rule=')) out.rule = value();
    else if (a === '--patience' || a.startsWith('--patience=')) {
      const v = value();
      out.patience = Number(v);
      if (!/^\d+$/.test(v) || out.patience < 1) throw new UsageError(`--patience ${v} must be a whole number >= 1`);
    }
    else if (a === '--threads' || a.startsWith('--threads=')) {
      const v = value();
      out.threads = Number(v);
      if (!/^\d+$/.test(v) || out.threads < 1) throw new UsageError(`--threads ${v} must be a positive integer`);
    } else if (a === '--') out.positional.push(...argv.slice(i + 1)), (i = argv.length);
    else if (a.startsWith('-') && a !== '-') throw new UsageError(`no such option ${a}; see ranet-edge --help`);
    else out.positional.push(a);
  }
  return out;
}

/** @param {string[]} argv */
async function main(argv) {
  const args = parseArgs(argv);
  if (args.version) {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
    console.log(`ranet-edge ${pkg.version} (JavaScript)`);
    return;
  }
  const [command, bundle, ...images] = args.positional;
  if (args.help || command === undefined) {
    console.log(USAGE);
    return;
  }
  if (command !== 'predict') throw new UsageError(`no such command '${command}'; this CLI has: predict`);
  if (!bundle) throw new UsageError('missing argument BUNDLE; usage: ranet-edge predict BUNDLE IMAGE...');
  if (images.length === 0) throw new UsageError('missing argument IMAGE...; usage: ranet-edge predict BUNDLE IMAGE...');

  const ort = await import('onnxruntime-web');
  ort.env.wasm.numThreads = args.threads;
  ort.env.logLevel = 'error';
  const chain = await ExitChain.load(bundle, { ort, warmup: false }); // one call: nothing to warm up for
  const options = { ...parseThresholds(args.thresholds), ...(args.rule ? { rule: args.rule } : {}),
    ...(args.patience ? { patience: args.patience } : {}) };
  chain.resolveThresholds(options); // a bad spec fails before any image is read
  const pixels = [];
  for (const path of images) pixels.push(await readImage(path));
  const res = await chain.predict(chain.preprocess(pixels), options);
  const names = chain.classNames; // they name the last exit's classes
  const named = (/** @type {number} */ i) => names && chain.exitClasses[res.exits[i]] === names.length;
  const rows = images.map((image, i) => ({
    image, label: res.labels[i], class: named(i) ? /** @type {string[]} */ (names)[res.labels[i]] : String(res.labels[i]),
    exit: res.exits[i], confidence: pyRound(res.confidences[i], 6),
  }));
  if (args.json) {
    console.log(pyJson(rows, new Set(['confidence'])));
  } else {
    for (const r of rows) console.log(`${r.image}\t${r.class} (${r.label})\texit ${r.exit}\tconfidence ${pyFixed(r.confidence, 3)}`);
  }
  await chain.release();
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err) => {
    if (err instanceof RanetEdgeError) {
      console.error(`error: ${err.message}`);
      process.exit(err.exitCode);
    }
    console.error(err);
    process.exit(1);
  },
);
