import type { Pixels } from './index.js';

export interface RgbImage extends Pixels {
  data: Uint8Array;
  channels: 3;
}
/** Decode PNG or JPEG bytes to RGB pixels (EXIF orientation applied, alpha dropped, 16-bit to 8-bit). */
export function decodeImage(bytes: Uint8Array, name?: string): RgbImage;
/** Read and decode a PNG or JPEG file. */
export function readImage(path: string): Promise<RgbImage>;
