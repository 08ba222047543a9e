/**
 * ranet-edge for JavaScript: drive a ranet-edge bundle (one ONNX graph per exit) with any
 * onnxruntime JavaScript backend -- onnxruntime-web (WebAssembly, WebGPU) in browsers and Node,
 * onnxruntime-node, onnxruntime-react-native -- and let every sample leave at its own exit.
 * Image bundles take a float32 (N, C, H, W) tensor (chain.preprocess(images)); bundles of named
 * inputs (a text encoder's int64 input_ids and attention_mask) take an object name -> tensor.
 *
 * @typedef {object} LoadOptions
 * @property {any} [ort] the onnxruntime namespace to use; default: import('onnxruntime-web')
 * @property {any[]} [executionProviders] e.g. ['webgpu'], ['wasm'], ['cpu'], ['coreml'];
 *   default ['wasm'] with onnxruntime-web, the backend's default otherwise
 * @property {Record<string, any>} [sessionOptions] more InferenceSession options
 * @property {boolean} [deviceIo] keep cached tensors where the provider puts them and gather
 *   rows with a Gather session (default: on for WebGPU, where they stay in GPU buffers)
 * @property {boolean} [warmup] run one zero image through every graph at load (default true)
 * @property {(bytes: Uint8Array) => string | Promise<string>} [sha256] hex SHA-256, where
 *   there is no WebCrypto (React Native)
 * @property {typeof fetch} [fetch] for URL bundles
 *
 * @typedef {object} Prediction per-sample results, in input order
 * @property {Int32Array} labels index into the classes of the exit taken
 * @property {Int32Array} exits 0-based exit index each sample left at
 * @property {Float32Array} confidences max softmax probability at the exit taken
 * @property {Float32Array} probabilities (N, numClasses) softmax at the exit taken, row-major
 *   (exits of fewer classes: zero beyond their count, chain.exitClasses[exit])
 * @property {number} numClasses the widest exit's class count
 *
 * @typedef {object} Snapshot an anytime() call after one graph run (arrays: one entry per sample)
 * @property {number} graph index of the graph that just ran
 * @property {number} exit the deepest exit that graph computes
 * @property {Int32Array} labels final answer where final, else the argmax at `exit` (-1: none yet)
 * @property {Int32Array} exits exit of each answer (-1: none yet)
 * @property {Float32Array} confidences max softmax probability of each answer
 * @property {Uint8Array} running 1 for the samples this graph ran on
 * @property {Uint8Array} final 1 for the answers that will not change
 * @property {boolean} done every answer is final (the last snapshot: predict()'s answers)
 */
export { ExitChain } from './chain.js';
export { BundleError, CalibrationError, InputError, ProviderError, RanetEdgeError } from './errors.js';
export { ARRAYS, describe as describeInput, inputsOf } from './inputs.js';
export { parseManifest } from './manifest.js';
export { parsePoints, resolveThresholds } from './operating_points.js';
export { fitImage, normalize, preprocess, specFrom } from './preprocess.js';
export { RULES, softmaxRow } from './decide.js';
