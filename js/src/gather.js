/**
 * A one-node ONNX model, Gather(x, idx, axis=0), as protobuf bytes: the chain runs it on the
 * execution provider's device to keep the rows of the samples that go on without copying the
 * cached feature maps to the host (the Python runtime's device executor does the same).
 */

const utf8 = new TextEncoder();

/** @param {number} n */
function varint(n) {
  const out = [];
  while (n > 127) {
    out.push((n & 127) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** Length-delimited field. @param {number} no @param {number[] | Uint8Array | string} body */
function field(no, body) {
  const bytes = typeof body === 'string' ? Array.from(utf8.encode(body)) : Array.from(body);
  return [...varint((no << 3) | 2), ...varint(bytes.length), ...bytes];
}

/** Varint field. @param {number} no @param {number} v */
const num = (no, v) => [...varint(no << 3), ...varint(v)];

/** ValueInfoProto with a tensor type and, optionally, symbolic dims. @param {string} name @param {number} elem @param {string[] | null} dims */
function valueInfo(name, elem, dims) {
  const shape = dims ? field(2, dims.flatMap((d) => field(1, field(2, d)))) : [];
  return field(1, name).concat(field(2, field(1, [...num(1, elem), ...shape])));
}

/** ONNX TensorProto element types this chain can gather. */
export const ELEM_TYPES = { float32: 1, uint8: 2, int32: 6, int64: 7, bool: 9, float16: 10, float64: 11 };

/** @param {number} elemType @returns {Uint8Array} */
export function gatherModel(elemType) {
  const node = [...field(1, 'x'), ...field(1, 'idx'), ...field(2, 'y'), ...field(4, 'Gather'),
    ...field(5, [...field(1, 'axis'), ...num(3, 0), ...num(20, 2)])];
  const graph = [...field(1, node), ...field(2, 'gather_rows'),
    ...field(11, valueInfo('x', elemType, null)), ...field(11, valueInfo('idx', 7, ['n'])),
    ...field(12, valueInfo('y', elemType, null))];
  const model = [...num(1, 8), ...field(2, 'ranet-edge'), ...field(7, graph), ...field(8, [...field(1, ''), ...num(2, 13)])];
  return new Uint8Array(model);
}
