/**
 * Number and JSON formatting as Python prints them, so the CLI's output matches
 * `ranet-edge predict` character for character: round() and format() round the exact binary
 * value half to even, repr() of a float keeps a '.0', json.dumps escapes non-ASCII.
 */

/**
 * x rounded to `digits` decimals, half to even on the exact binary value (Python's round()).
 * @param {number} x @param {number} digits
 */
export function pyRound(x, digits) {
  if (!Number.isFinite(x)) return x;
  const fixed = x.toFixed(digits);
  // toFixed rounds exact ties away from zero; Python rounds them to even.
  const exact = x.toFixed(Math.min(100, digits + 30));
  const tail = exact.slice(exact.indexOf('.') + 1 + digits);
  if (/^50*$/.test(tail)) {
    const down = exact.slice(0, exact.indexOf('.') + 1 + digits);
    const last = Number(down[down.length - 1]);
    return last % 2 === 0 ? Number(down) : Number(fixed);
  }
  return Number(fixed);
}

/** Python's format(x, '.{digits}f'). @param {number} x @param {number} digits */
export function pyFixed(x, digits) {
  return pyRound(x, digits).toFixed(digits);
}

/** Python's repr() of a float. @param {number} x */
export function pyFloat(x) {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e16)) {
    const [m, e] = x.toExponential().split('e');
    const exp = Number(e);
    return `${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  const s = String(x);
  return s.includes('.') || s.includes('e') ? s : `${s}.0`;
}

/** json.dumps of a string (ensure_ascii). @param {string} s */
const pyString = (s) => JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

/**
 * json.dumps(value, indent=2) for arrays, objects, strings, booleans, null and numbers; numbers
 * listed in `floats` (by key) print as Python floats, the others as integers.
 * @param {unknown} value @param {Set<string>} floats @param {string} [pad]
 * @returns {string}
 */
export function pyJson(value, floats, pad = '', key = '') {
  const inner = `${pad}  `;
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => inner + pyJson(v, floats, inner, key)).join(',\n')}\n${pad}]`;
  }
  if (value && typeof value === 'object') {
    const entries = Object.entries(value);
    if (entries.length === 0) return '{}';
    return `{\n${entries.map(([k, v]) => `${inner}${pyString(k)}: ${pyJson(v, floats, inner, k)}`).join(',\n')}\n${pad}}`;
  }
  if (typeof value === 'string') return pyString(value);
  if (typeof value === 'number') return floats.has(key) ? pyFloat(value) : String(value);
  return value === null || value === undefined ? 'null' : String(value);
}
