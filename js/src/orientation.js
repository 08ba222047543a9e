/**
 * EXIF orientation of JPEG files (tag 0x0112), which OpenCV's decoder applies and jpeg-js does
 * not: the pixels are turned upright here so both runtimes see the same image.
 */

/**
 * The EXIF orientation (1..8) of JPEG bytes; 1 when absent or unreadable.
 * @param {Uint8Array} b
 */
export function exifOrientation(b) {
  let p = 2;
  while (p + 4 <= b.length && b[p] === 0xff) {
    const marker = b[p + 1];
    const len = (b[p + 2] << 8) | b[p + 3];
    if (marker === 0xda || len < 2) break; // start of scan: no more metadata
    const s = p + 4;
    if (marker === 0xe1 && len >= 16 && b[s] === 0x45 && b[s + 1] === 0x78 && b[s + 2] === 0x69 && b[s + 3] === 0x66) {
      const t = s + 6; // TIFF header
      const le = b[t] === 0x49;
      const u16 = (/** @type {number} */ o) => (le ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1]);
      const u32 = (/** @type {number} */ o) => (le ? (u16(o) | (u16(o + 2) << 16)) >>> 0 : ((u16(o) << 16) | u16(o + 2)) >>> 0);
      const ifd = t + u32(t + 4);
      if (ifd + 2 > b.length) return 1;
      const count = u16(ifd);
      for (let i = 0; i < count; i++) {
        const e = ifd + 2 + i * 12;
        if (e + 12 > b.length) return 1;
        if (u16(e) === 0x0112) {
          const v = u16(e + 8);
          return v >= 1 && v <= 8 ? v : 1;
        }
      }
      return 1;
    }
    p += 2 + len;
  }
  return 1;
}

/**
 * Turn pixels upright for an EXIF orientation (2..8 flip and/or rotate).
 * @template {{data: Uint8Array, width: number, height: number, channels: 3}} T
 * @param {T} image @param {number} o
 * @returns {T}
 */
export function orient(image, o) {
  if (o <= 1 || o > 8) return image;
  const { data, width: w, height: h } = image;
  const swap = o >= 5;
  const W = swap ? h : w;
  const H = swap ? w : h;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      // Source pixel (sx, sy) for destination (x, y), per the EXIF definitions.
      let sx;
      let sy;
      switch (o) {
        case 2: sx = w - 1 - x; sy = y; break;
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;
        case 4: sx = x; sy = h - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = h - 1 - x; break;
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;
        default: sx = w - 1 - y; sy = x; break; // 8
      }
      const d = (y * W + x) * 3;
      const s = (sy * w + sx) * 3;
      out[d] = data[s];
      out[d + 1] = data[s + 1];
      out[d + 2] = data[s + 2];
    }
  }
  return { ...image, data: out, width: W, height: H };
}
