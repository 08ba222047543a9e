// The package as npm would ship it: exports resolve, every export is declared in the .d.ts
// files, every dependency is pinned exactly, node_modules stays out of git.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { JS, ROOT } from './helpers.js';

const pkg = JSON.parse(readFileSync(join(JS, 'package.json'), 'utf8'));

test('every export of each entry point is declared in its .d.ts', async () => {
  for (const [entry, target] of Object.entries(pkg.exports)) {
    if (typeof target === 'string') continue;
    const mod = await import(`ranet-edge${entry.slice(1)}`);
    const dts = readFileSync(join(JS, target.types), 'utf8');
    for (const name of Object.keys(mod)) {
      assert.match(dts, new RegExp(`export (declare )?(class|function|const) ${name}\\b`), `${target.types} lacks ${name}`);
    }
  }
});

test('dependencies are pinned to exact versions, as in the lockfile', () => {
  const lock = JSON.parse(readFileSync(join(JS, 'package-lock.json'), 'utf8'));
  for (const deps of [pkg.dependencies, pkg.devDependencies]) {
    for (const [name, version] of Object.entries(deps)) {
      assert.match(version, /^\d+\.\d+\.\d+$/, `${name}@${version} is not an exact version`);
      assert.equal(lock.packages[`node_modules/${name}`].version, version, `${name}: lockfile differs`);
    }
  }
});

test('node_modules is ignored by git', () => {
  assert.match(readFileSync(join(ROOT, '.gitignore'), 'utf8'), /^js\/node_modules\/$/m);
});
