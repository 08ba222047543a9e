// The Node CLI against `ranet-edge predict --json` of the Python CLI (stored in the vectors),
// its text output, and its one-line errors with exit code 2.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { pyFixed, pyFloat, pyJson, pyRound } from '../src/pyjson.js';
import { BUNDLE, JS, VECTORS } from './helpers.js';

const run = promisify(execFile);
const BIN = join(JS, 'bin', 'ranet-edge.js');
const bundle = relative(JS, BUNDLE);
const tmp = mkdtempSync(join(tmpdir(), 'ranet-edge-cli-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Run the CLI from js/; resolves {code, stdout, stderr}. @param {string[]} args */
async function cli(args) {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { cwd: JS });
    return { code: 0, stdout, stderr };
  } catch (/** @type {any} */ err) {
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

describe('predict --json, against the Python CLI', () => {
  for (const [spec, py] of Object.entries(VECTORS.cli)) {
    test(`thresholds ${spec}`, async () => {
      const { code, stdout, stderr } = await cli(['predict', bundle, ...py.args]);
      assert.equal(code, 0, stderr);
      const ours = JSON.parse(stdout);
      const theirs = JSON.parse(py.stdout);
      let jpegDiff = 0;
      /** @type {string[]} */
      const jpegExits = [];
      assert.equal(ours.length, theirs.length);
      ours.forEach((/** @type {any} */ row, /** @type {number} */ i) => {
        const want = theirs[i];
        assert.deepEqual(Object.keys(row), Object.keys(want), 'same fields in the same order');
        for (const key of ['image', 'label', 'class']) assert.equal(row[key], want[key], `${row.image}: ${key}`);
        const diff = Math.abs(row.confidence - want.confidence);
        if (row.image.endsWith('.jpg')) {
          // jpeg-js decodes JPEG a few levels away from libjpeg-turbo (see the vectors test),
          // which moves confidences by a few hundredths and can move a sample across a threshold
          jpegDiff = Math.max(jpegDiff, diff);
          if (row.exit !== want.exit) jpegExits.push(`${row.image.split('/').pop()} exit ${row.exit} (Python ${want.exit})`);
        } else {
          assert.equal(row.exit, want.exit, `${row.image}: exit`);
          assert.ok(diff <= 2e-6, `${row.image}: confidence ${row.confidence} vs ${want.confidence}`);
        }
      });
      console.log(`# JPEG files, jpeg-js against OpenCV: largest confidence difference ${jpegDiff.toFixed(4)}, `
        + `other exits: ${jpegExits.join(', ') || 'none'}`);
      // our JSON writer prints Python's json.dumps(indent=2) text for the same values
      assert.equal(`${pyJson(theirs, new Set(['confidence']))}\n`, py.stdout);
    });
  }
});

test('text output: one tab-separated line per image', async () => {
  const py = JSON.parse(VECTORS.cli.default.stdout);
  const { code, stdout } = await cli(['predict', bundle, py[0].image, py[5].image]);
  assert.equal(code, 0);
  const lines = stdout.trim().split('\n');
  assert.equal(lines.length, 2);
  assert.equal(lines[0], `${py[0].image}\t${py[0].class} (${py[0].label})\texit ${py[0].exit}\tconfidence ${pyFixed(py[0].confidence, 3)}`);
  assert.match(lines[1], /^test\/fixtures\/images\/\S+\t\w+ \(\d\)\texit \d\tconfidence \d\.\d{3}$/);
});

describe('errors: one line, exit code 2', () => {
  const png = 'test/fixtures/images/grey.png';
  const corrupt = join(tmp, 'corrupt.png');
  const text = join(tmp, 'notes.png');
  writeFileSync(corrupt, Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(40, 7)]));
  writeFileSync(text, 'hello');
  const cases = [
    [['predict', bundle, 'nope.png'], /^error: image nope\.png does not exist$/],
    [['predict', bundle, corrupt], /^error: cannot decode image .*corrupt\.png: the file is corrupt or not an image/],
    [['predict', bundle, text], /^error: cannot decode image .*notes\.png: not a PNG or JPEG file; convert it to PNG or JPEG$/],
    [['predict', bundle, png, '--thresholds', 'fast'], /^error: unknown operating point "fast"; stored: iso-accuracy, iso-accuracy-t, ladder-0, ladder-1, ladder-2, ladder-3, ladder-4, ladder-5, ladder-6, ladder-7, p0\.5$/],
    [['predict', bundle, png, '--thresholds', '1.5'], /^error: thresholds must lie in \[0, 1\]/],
    [['predict', bundle, png, '--thresholds', '0.5,0.5'], /^error: give 5 or 6 thresholds/],
    [['predict', 'no-such-dir', png], /^error: no-such-dir is not a bundle \(no manifest\.json\); create one with `ranet-edge export`$/],
    [['predict', bundle, png, '--provider', 'cuda'], /^error: no such option --provider; see ranet-edge --help$/],
    [['predict', bundle, png, '--threads', '0'], /^error: --threads 0 must be a positive integer$/],
    [['predict', bundle, png, '--patience', '0'], /^error: --patience 0 must be a whole number >= 1$/],
    [['predict', bundle, png, '--rule', 'entropy'], /^error: operating point 'iso-accuracy' is for the 'max_prob' rule, not 'entropy'/],
    [['predict', bundle], /^error: missing argument IMAGE\.\.\./],
    [['train'], /^error: no such command 'train'; this CLI has: predict$/],
  ];
  for (const [args, re] of cases) {
    test(args.map((a) => a.replace(tmp, '$TMP')).join(' '), async () => {
      const { code, stdout, stderr } = await cli(/** @type {string[]} */ (args));
      assert.equal(code, 2, stderr);
      assert.equal(stdout, '');
      assert.equal(stderr.trim().split('\n').length, 1, stderr);
      assert.match(stderr.trim(), /** @type {RegExp} */ (re));
    });
  }

  test('--patience and --rule route as the Python vectors say', async () => {
    const file = 'test/fixtures/images/val103-exit3-bird.png'; // image 103 of the shipped sample, PNG: lossless
    for (const [args, key] of [[['--patience', '2'], 'patience:2'], [['--rule', 'entropy', '--thresholds', '0.5'], 'entropy:0.5']]) {
      const { code, stdout, stderr } = await cli(['predict', bundle, file, ...args, '--json']);
      assert.equal(code, 0, stderr);
      const [row] = JSON.parse(stdout);
      assert.equal(row.exit, VECTORS.predictions[key].exits[103], key);
      assert.equal(row.label, VECTORS.predictions[key].labels[103], key);
    }
  });

  test('--help and --version', async () => {
    const help = await cli(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: ranet-edge predict BUNDLE IMAGE\.\.\./);
    const version = await cli(['--version']);
    assert.match(version.stdout, /^ranet-edge \d+\.\d+\.\d+ \(JavaScript\)$/m);
  });
});

test('Python number formatting (round, format, repr)', () => {
  // expected values printed by CPython: round(x, 6), format(x, '.3f'), repr(x)
  assert.equal(pyRound(0.0078125, 6), 0.007812);
  assert.equal(pyRound(0.5078125, 6), 0.507812);
  assert.equal(pyRound(0.8938621, 6), 0.893862);
  assert.equal(pyFixed(0.0625, 3), '0.062');
  assert.equal(pyFixed(0.9995, 3), '1.000');
  assert.deepEqual([1, 1e-5, 0.1, 123456789, 1e16, 0.00012].map(pyFloat), ['1.0', '1e-05', '0.1', '123456789.0', '1e+16', '0.00012']);
  assert.equal(pyJson([{ image: 'é.png', n: 1, confidence: 1 }], new Set(['confidence'])), '[\n  {\n    "image": "\\u00e9.png",\n    "n": 1,\n    "confidence": 1.0\n  }\n]');
});
