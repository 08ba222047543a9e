/**
 * uint8 image resizing with OpenCV's geometry (cv2.resize), which the Python runtime uses:
 * INTER_AREA to shrink (box averages with fractional cell weights; exact 2x uses the fixed-point
 * fast path), INTER_AREA's interpolation to enlarge, and INTER_LINEAR with 11-bit fixed-point
 * weights. OpenCV's SIMD and scalar paths round differently in places, so a pixel can differ by
 * one level from cv2; the cross-check tests measure that against cv2 itself.
 */

const COEF_BITS = 11;
const COEF_SCALE = 1 << COEF_BITS;

/** OpenCV's cvRound: round half to even. @param {number} v */
export function roundHalfEven(v) {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** @param {number} v */
const sat8 = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);
/** saturate_cast<short>(float): round half even. @param {number} v */
const toShort = (v) => roundHalfEven(Math.fround(v));

/**
 * Per destination index: source index and weights (float in [0, 1]) for one axis.
 * @param {number} ssize @param {number} dsize @param {boolean} areaMode @param {boolean} clampLow
 */
function linearTaps(ssize, dsize, areaMode, clampLow) {
  const invScale = dsize / ssize;
  const scale = 1 / invScale;
  const ofs = new Int32Array(dsize);
  const w = new Float32Array(dsize);
  for (let d = 0; d < dsize; d++) {
    let s;
    let f;
    if (!areaMode) {
      f = Math.fround((d + 0.5) * scale - 0.5);
      s = Math.floor(f);
      f = Math.fround(f - s);
    } else {
      s = Math.floor(d * scale);
      f = Math.fround((d + 1) - (s + 1) * invScale);
      f = f <= 0 ? 0 : Math.fround(f - Math.floor(f));
    }
    if (clampLow && s < 0) { f = 0; s = 0; }
    if (clampLow && s >= ssize - 1) { f = 0; s = ssize - 1; }
    ofs[d] = s;
    w[d] = f;
  }
  return { ofs, w };
}

/**
 * Bilinear resize (cv2.INTER_LINEAR, or INTER_AREA's enlarging mode), fixed point as OpenCV.
 * @param {Uint8Array} src HWC @param {number} sw @param {number} sh @param {number} cn
 * @param {number} dw @param {number} dh @param {boolean} areaMode
 */
export function resizeLinear(src, sw, sh, cn, dw, dh, areaMode = false) {
  const xs = linearTaps(sw, dw, areaMode, true);
  const ys = linearTaps(sh, dh, areaMode, false);
  const ax0 = new Int32Array(dw);
  const ax1 = new Int32Array(dw);
  for (let x = 0; x < dw; x++) {
    ax0[x] = toShort((1 - xs.w[x]) * COEF_SCALE);
    ax1[x] = toShort(xs.w[x] * COEF_SCALE);
  }
  /** Horizontal pass of one source row into int sums. @param {number} sy */
  const hrow = (sy) => {
    const out = new Int32Array(dw * cn);
    const base = sy * sw * cn;
    for (let x = 0; x < dw; x++) {
      const sx = xs.ofs[x];
      for (let c = 0; c < cn; c++) {
        const a = src[base + sx * cn + c];
        out[x * cn + c] = sx + 1 < sw ? a * ax0[x] + src[base + (sx + 1) * cn + c] * ax1[x] : a * COEF_SCALE;
      }
    }
    return out;
  };
  const dst = new Uint8Array(dw * dh * cn);
  for (let y = 0; y < dh; y++) {
    const sy = ys.ofs[y];
    const r0 = hrow(Math.min(Math.max(sy, 0), sh - 1));
    const r1 = hrow(Math.min(Math.max(sy + 1, 0), sh - 1));
    const b0 = toShort((1 - ys.w[y]) * COEF_SCALE);
    const b1 = toShort(ys.w[y] * COEF_SCALE);
    for (let i = 0; i < dw * cn; i++) {
      // OpenCV's vector path: ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16), then (+2) >> 2
      const v = (Math.floor((b0 * (r0[i] >> 4)) / 65536) + Math.floor((b1 * (r1[i] >> 4)) / 65536) + 2) >> 2;
      dst[y * dw * cn + i] = sat8(v);
    }
  }
  return dst;
}

/**
 * Area-weighted taps of one axis (OpenCV's computeResizeAreaTab).
 * @param {number} ssize @param {number} dsize @param {number} scale
 */
function areaTabs(ssize, dsize, scale) {
  /** @type {{d: number, s: number, a: number}[]} */
  const tab = [];
  for (let d = 0; d < dsize; d++) {
    const fs1 = d * scale;
    const fs2 = fs1 + scale;
    const cell = Math.min(scale, ssize - fs1);
    let s2 = Math.floor(fs2);
    let s1 = Math.ceil(fs1);
    s2 = Math.min(s2, ssize - 1);
    s1 = Math.min(s1, s2);
    if (s1 - fs1 > 1e-3) tab.push({ d, s: s1 - 1, a: Math.fround((s1 - fs1) / cell) });
    for (let s = s1; s < s2; s++) tab.push({ d, s, a: Math.fround(1 / cell) });
    if (fs2 - s2 > 1e-3) tab.push({ d, s: s2, a: Math.fround(Math.min(Math.min(fs2 - s2, 1), cell) / cell) });
  }
  return tab;
}

/**
 * Shrink with cv2.INTER_AREA (enlarging falls back to its interpolation mode).
 * @param {Uint8Array} src HWC @param {number} sw @param {number} sh @param {number} cn
 * @param {number} dw @param {number} dh
 */
export function resizeArea(src, sw, sh, cn, dw, dh) {
  const sx = sw / dw;
  const sy = sh / dh;
  if (sx < 1 || sy < 1) return resizeLinear(src, sw, sh, cn, dw, dh, true);
  const dst = new Uint8Array(dw * dh * cn);
  if (Number.isInteger(sx) && Number.isInteger(sy)) {
    const area = sx * sy;
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        for (let c = 0; c < cn; c++) {
          let sum = 0;
          for (let j = 0; j < sy; j++) for (let i = 0; i < sx; i++) sum += src[((y * sy + j) * sw + x * sx + i) * cn + c];
          dst[(y * dw + x) * cn + c] = area === 4 ? (sum + 2) >> 2 : sat8(roundHalfEven(Math.fround(sum * Math.fround(1 / area))));
        }
      }
    }
    return dst;
  }
  const xt = areaTabs(sw, dw, sx);
  const yt = areaTabs(sh, dh, sy);
  const sum = new Float64Array(dw * cn);
  const row = new Float64Array(dw * cn);
  let prev = -1;
  /** @param {number} y */
  const flush = (y) => {
    for (let i = 0; i < dw * cn; i++) dst[y * dw * cn + i] = sat8(roundHalfEven(Math.fround(sum[i])));
    sum.fill(0);
  };
  for (const { d: dy, s: srcY, a: beta } of yt) {
    if (prev !== -1 && dy !== prev) flush(prev);
    prev = dy;
    row.fill(0);
    for (const { d: dx, s: srcX, a: alpha } of xt) {
      for (let c = 0; c < cn; c++) row[dx * cn + c] += src[(srcY * sw + srcX) * cn + c] * alpha;
    }
    for (let i = 0; i < dw * cn; i++) sum[i] += row[i] * beta;
  }
  flush(prev);
  return dst;
}
