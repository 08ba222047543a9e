/**
 * Browser helpers: the RGBA pixels of anything a canvas can draw (an ImageBitmap, an <img>, a
 * <video> frame, a canvas), for ExitChain.preprocess. Canvas pixels are stored premultiplied by
 * alpha, so transparent pixels lose their colour (fully transparent ones read as black), whereas
 * the Python runtime drops alpha and keeps the colour.
 */
import { InputError } from './errors.js';

/**
 * ImageData of `source` at its natural size.
 * @param {CanvasImageSource} source
 * @returns {ImageData}
 */
export function pixelsOf(source) {
  const s = /** @type {any} */ (source);
  const width = s.videoWidth || s.naturalWidth || s.displayWidth || s.width;
  const height = s.videoHeight || s.naturalHeight || s.displayHeight || s.height;
  if (!width || !height) throw new InputError('the image has no pixels yet (not loaded, or a video without a frame)');
  const canvas = typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(width, height) : Object.assign(document.createElement('canvas'), { width, height });
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext('2d', { willReadFrequently: true }));
  ctx.drawImage(source, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height);
}
