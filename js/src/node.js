/**
 * Node-only helpers: decode PNG and JPEG files to RGB pixels with pure-JavaScript decoders
 * (pngjs, jpeg-js), as the Python runtime's read_image does with OpenCV: colour images keep
 * their RGB, grey ones are repeated on three channels, alpha is dropped (not composited), and
 * 16-bit PNG samples keep their high byte.
 */
import { readFile, stat } from 'node:fs/promises';

import jpeg from 'jpeg-js';
import pngjs from 'pngjs';

import { InputError } from './errors.js';
import { exifOrientation, orient } from './orientation.js';

const { PNG } = pngjs;

/**
 * Decode PNG or JPEG bytes to {data (RGB), width, height, channels: 3}.
 * @param {Uint8Array} bytes @param {string} [name] for messages
 */
export function decodeImage(bytes, name = 'image') {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const isPng = buf.length > 8 && buf.readUInt32BE(0) === 0x89504e47;
  const isJpeg = buf.length > 3 && buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff;
  if (!isPng && !isJpeg) {
    throw new InputError(`cannot decode image ${name}: not a PNG or JPEG file; convert it to PNG or JPEG`);
  }
  let rgba;
  let width;
  let height;
  try {
    if (isPng) {
      // skipRescale keeps 16-bit samples; their high byte is taken below, as OpenCV does.
      const png = PNG.sync.read(buf, { skipRescale: true });
      ({ width, height } = png);
      const src = png.data;
      if (png.depth === 16) {
        rgba = new Uint8Array(width * height * 4);
        for (let i = 0; i < rgba.length; i++) rgba[i] = src[i] >> 8;
      } else {
        rgba = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
      }
    } else {
      const img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 512 });
      ({ width, height } = img);
      rgba = img.data;
    }
  } catch (err) {
    const why = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw new InputError(`cannot decode image ${name}: the file is corrupt or not an image (${why})`);
  }
  if (!width || !height) throw new InputError(`cannot decode image ${name}: the file is corrupt or not an image`);
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgb[i] = rgba[j];
    rgb[i + 1] = rgba[j + 1];
    rgb[i + 2] = rgba[j + 2];
  }
  const image = { data: rgb, width, height, channels: /** @type {3} */ (3) };
  return isJpeg ? orient(image, exifOrientation(bytes)) : image;
}

/**
 * Read and decode an image file. @param {string} path
 * @returns {Promise<{data: Uint8Array, width: number, height: number, channels: 3}>}
 */
export async function readImage(path) {
  let info;
  try {
    info = await stat(path);
  } catch {
    throw new InputError(`image ${path} does not exist`);
  }
  if (!info.isFile()) throw new InputError(`image ${path} is not a file`);
  return decodeImage(new Uint8Array(await readFile(path)), path);
}
