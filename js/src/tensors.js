/** Row operations on CPU tensors (the batch is the first axis). */

/** Elements per row. @param {readonly number[]} dims */
export const rowSize = (dims) => dims.slice(1).reduce((a, b) => a * b, 1);

/**
 * The rows `keep` of a CPU tensor, as a new tensor.
 * @param {any} ort @param {any} t @param {ArrayLike<number>} keep
 */
export function takeRows(ort, t, keep) {
  const size = rowSize(t.dims);
  const src = t.data;
  const out = new src.constructor(keep.length * size);
  for (let i = 0; i < keep.length; i++) out.set(src.subarray(keep[i] * size, (keep[i] + 1) * size), i * size);
  return new ort.Tensor(t.type, out, [keep.length, ...t.dims.slice(1)]);
}

/**
 * Rows [start, start + count) of a CPU tensor, zero-padded to `batch` rows.
 * @param {any} ort @param {any} t @param {number} start @param {number} count @param {number} batch
 */
export function sliceRows(ort, t, start, count, batch) {
  const size = rowSize(t.dims);
  const out = new t.data.constructor(batch * size);
  out.set(t.data.subarray(start * size, (start + count) * size));
  return new ort.Tensor(t.type, out, [batch, ...t.dims.slice(1)]);
}

/**
 * Concatenate CPU tensors along the batch axis, keeping the first `counts[i]` rows of each.
 * @param {any} ort @param {any[]} parts @param {number[]} counts
 */
export function concatRows(ort, parts, counts) {
  const size = rowSize(parts[0].dims);
  const n = counts.reduce((a, b) => a + b, 0);
  const out = new parts[0].data.constructor(n * size);
  let at = 0;
  parts.forEach((p, i) => {
    out.set(p.data.subarray(0, counts[i] * size), at * size);
    at += counts[i];
  });
  return new ort.Tensor(parts[0].type, out, [n, ...parts[0].dims.slice(1)]);
}

/** True for tensors whose data lives on a device (WebGPU buffer, WebNN tensor). @param {any} t */
export const onDevice = (t) => t && t.location !== undefined && t.location !== 'cpu' && t.location !== 'cpu-pinned';
