/** ImageData of anything a canvas can draw (ImageBitmap, <img>, <video> frame, canvas), at its natural size. */
export function pixelsOf(source: CanvasImageSource): ImageData;
