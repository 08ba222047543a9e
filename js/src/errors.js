/**
 * One error hierarchy, as on the Python side (ranet_edge/errors.py): every error a caller can
 * cause derives from RanetEdgeError, and its message is one line naming the bad value and the fix.
 */

export class RanetEdgeError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = new.target.name;
    /** Exit code the CLI uses for it (2, as the Python CLI). */
    this.exitCode = 2;
  }
}

/** A bundle (manifest plus graphs) that is missing, tampered with or malformed. */
export class BundleError extends RanetEdgeError {}

/** An input tensor or image with the wrong shape, dtype or values, or an image that cannot be decoded. */
export class InputError extends RanetEdgeError {}

/** Thresholds, temperatures or an operating point name that cannot be used. */
export class CalibrationError extends RanetEdgeError {}

/** An execution provider or ONNX Runtime backend that cannot run the bundle. */
export class ProviderError extends RanetEdgeError {}
