/**
 * Images to the network input, as the bundle's manifest says (runtime/preprocess.py): uint8
 * RGB pixels, resized (shorter side to `resize`, then a centre crop) or fitted to the square
 * input, normalised as (pixel - 255 mean) / (255 std) in float32, laid out NCHW.
 */
import { InputError } from './errors.js';
import { resizeArea, resizeLinear, roundHalfEven } from './resize.js';

/**
 * @typedef {object} PreprocessSpec
 * @property {number} size side of the square network input
 * @property {number[]} mean per RGB channel, on the [0, 1] scale
 * @property {number[]} std
 * @property {number | null} resize shorter side resized to this before the centre crop
 */

/**
 * Pixels of one image: RGBA (browser ImageData, canvas) or RGB, row-major, 8 bits a channel.
 * @typedef {object} Pixels
 * @property {Uint8Array | Uint8ClampedArray} data
 * @property {number} width
 * @property {number} height
 * @property {3 | 4} [channels] inferred from data.length when absent
 */

/** @param {any} pre the manifest's `preprocessing` @returns {PreprocessSpec} */
export function specFrom(pre) {
  return { size: Number(pre.size), mean: pre.mean.map(Number), std: pre.std.map(Number), resize: pre.resize ?? null };
}

/**
 * Validate one image and return it as {data, width, height, channels}.
 * @param {Pixels} image @param {number} index
 */
export function checkPixels(image, index) {
  const at = `image ${index}`;
  if (!image || typeof image !== 'object' || !('data' in image)) {
    throw new InputError(`${at} must be ImageData or {data, width, height} with 8-bit RGB or RGBA pixels`);
  }
  const { data, width, height } = image;
  if (!(data instanceof Uint8Array || data instanceof Uint8ClampedArray)) {
    throw new InputError(`${at}: pixel data must be a Uint8Array or Uint8ClampedArray, got ${data?.constructor?.name ?? typeof data}`);
  }
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new InputError(`${at}: width and height must be positive integers, got ${width}x${height}`);
  }
  const channels = image.channels ?? data.length / (width * height);
  if ((channels !== 3 && channels !== 4) || data.length !== width * height * channels) {
    throw new InputError(`${at}: ${data.length} bytes do not make ${width}x${height} RGB or RGBA pixels`);
  }
  return { data, width, height, channels };
}

/**
 * One image to `spec.size` square uint8 RGB (no normalisation), as fit_image in Python.
 * @param {Pixels} image @param {PreprocessSpec} spec @param {number} [index]
 * @returns {Uint8Array} size * size * 3, HWC
 */
export function fitImage(image, spec, index = 0) {
  const { data, width: w, height: h, channels } = checkPixels(image, index);
  let rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < w * h; i++, j += channels) {
    rgb[i * 3] = data[j];
    rgb[i * 3 + 1] = data[j + 1];
    rgb[i * 3 + 2] = data[j + 2];
  }
  const s = spec.size;
  if (spec.resize) {
    const scale = spec.resize / Math.min(h, w);
    const nh = Math.max(s, roundHalfEven(h * scale));
    const nw = Math.max(s, roundHalfEven(w * scale));
    const big = nw === w && nh === h ? rgb : resizeLinear(rgb, w, h, 3, nw, nh);
    const top = Math.floor((nh - s) / 2);
    const left = Math.floor((nw - s) / 2);
    rgb = new Uint8Array(s * s * 3);
    for (let y = 0; y < s; y++) rgb.set(big.subarray(((top + y) * nw + left) * 3, ((top + y) * nw + left + s) * 3), y * s * 3);
  } else if (w !== s || h !== s) {
    rgb = resizeArea(rgb, w, h, 3, s, s);
  }
  return rgb;
}

/**
 * Fitted uint8 NHWC images to the normalised float32 NCHW batch, bit for bit as numpy computes it.
 * @param {Uint8Array[]} fitted each size * size * 3 @param {PreprocessSpec} spec
 */
export function normalize(fitted, spec) {
  const f32 = Math.fround;
  const s = spec.size;
  const plane = s * s;
  const mean = spec.mean.map((m) => f32(f32(m) * 255));
  const inv = spec.std.map((d) => f32(1 / f32(f32(d) * 255)));
  const out = new Float32Array(fitted.length * 3 * plane);
  fitted.forEach((rgb, n) => {
    for (let c = 0; c < 3; c++) {
      const o = (n * 3 + c) * plane;
      for (let i = 0; i < plane; i++) out[o + i] = f32(f32(rgb[i * 3 + c] - mean[c]) * inv[c]);
    }
  });
  return out;
}

/**
 * Images (ImageData, {data, width, height[, channels]}) to {data, dims} float32 NCHW.
 * @param {Pixels | Pixels[]} images @param {PreprocessSpec} spec
 * @returns {{data: Float32Array, dims: number[]}}
 */
export function preprocess(images, spec) {
  const list = Array.isArray(images) ? images : [images];
  if (list.length === 0) throw new InputError('no images given; pass at least one image (ImageData or {data, width, height})');
  const fitted = list.map((im, i) => fitImage(im, spec, i));
  return { data: normalize(fitted, spec), dims: [list.length, 3, spec.size, spec.size] };
}
