// Types of ranet-edge for JavaScript (the sources are plain ES modules with JSDoc).
import type { InferenceSession, Tensor } from 'onnxruntime-common';

/** The onnxruntime namespace: onnxruntime-web, onnxruntime-node or onnxruntime-react-native. */
export interface OrtNamespace {
  InferenceSession: { create(model: Uint8Array, options?: InferenceSession.SessionOptions): Promise<InferenceSession> };
  Tensor: typeof Tensor;
  env?: unknown;
}

/** Where a bundle's files come from, when it is neither a directory (Node) nor a URL. */
export interface BundleSource {
  /** The bytes of `path` (relative to the bundle), or null when there is no such file. */
  readBytes(path: string): Promise<Uint8Array | ArrayBuffer | null>;
  /** Names the bundle in messages. */
  describe?: string;
}

export interface LoadOptions {
  /** The onnxruntime namespace; default: import('onnxruntime-web'). */
  ort?: OrtNamespace;
  /** e.g. ['webgpu'], ['wasm'], ['cpu'], ['coreml']; default ['wasm'] with onnxruntime-web, the backend's default otherwise. */
  executionProviders?: InferenceSession.ExecutionProviderConfig[];
  /** More InferenceSession options (graphOptimizationLevel, intraOpNumThreads, ...). */
  sessionOptions?: InferenceSession.SessionOptions;
  /** Keep cached tensors where the provider puts them and gather rows with a Gather session (default: on for WebGPU, where they stay in GPU buffers). */
  deviceIo?: boolean;
  /** Run one zero image through every graph at load (default true). */
  warmup?: boolean;
  /** Hex SHA-256, where there is no WebCrypto (React Native). */
  sha256?: (bytes: Uint8Array) => string | Promise<string>;
  /** For URL bundles. */
  fetch?: typeof fetch;
}

export interface ThresholdOptions {
  /** One value for every exit but the last, or one per exit (K-1 or K values); Infinity means nobody leaves there. */
  thresholds?: number | number[];
  /** A name stored in the bundle's thresholds.json. */
  operatingPoint?: string;
  /** The exit rule (default: the operating point's, else max_prob); entropy thresholds are max entropies. */
  rule?: ExitRule;
  /** PABEE's t (rule 'patience'): a sample leaves once its label equals that of the t exits before. */
  patience?: number;
}

export type ExitRule = 'max_prob' | 'entropy' | 'patience';
export const RULES: ExitRule[];

export interface OperatingPoint {
  /** One per exit; the last is -Infinity (accept everything). */
  thresholds: number[];
  temperatures: number[] | null;
  method: string;
  val_accuracy: number;
  expected_flops: number;
  expected_ms: number | null;
  provider: string | null;
  /** The exit rule the thresholds are for ('max_prob' when the file says none). */
  rule: ExitRule;
}

/** Per-sample results, in input order. */
export interface Prediction {
  /** Index into the classes of the exit taken (exitClasses[exit] of them). */
  labels: Int32Array;
  /** 0-based exit each sample left at. */
  exits: Int32Array;
  /** Max softmax probability at the exit taken. */
  confidences: Float32Array;
  /** (N, numClasses) softmax at the exit taken, row-major; zero beyond the class count of the exit taken. */
  probabilities: Float32Array;
  /** The widest exit's class count. */
  numClasses: number;
}

/** An anytime() call after one graph run; arrays have one entry per sample, in input order. */
export interface Snapshot {
  /** Index of the graph that just ran. */
  graph: number;
  /** The deepest exit that graph computes. */
  exit: number;
  /** Final answer where `final`, else the argmax at `exit` for the running samples; -1: none yet. */
  labels: Int32Array;
  /** Exit of each answer (-1: none yet). */
  exits: Int32Array;
  /** Max softmax probability of each answer. */
  confidences: Float32Array;
  /** 1 for the samples this graph ran on. */
  running: Uint8Array;
  /** 1 for the answers that will not change. */
  final: Uint8Array;
  /** Every answer is final: the last snapshot, whose answers are predict()'s. */
  done: boolean;
}

/** 8-bit pixels: ImageData (RGBA) or RGB/RGBA rows. */
export interface Pixels {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
  /** Inferred from data.length when absent. */
  channels?: 3 | 4;
}

export interface PreprocessSpec {
  size: number;
  mean: number[];
  std: number[];
  resize: number | null;
}

/** A float32 tensor (N, C, H, W): an ort.Tensor or a plain {data, dims}. */
export type InputTensor = Tensor | { data: Float32Array; dims: readonly number[] };

/** One tensor of a named input: an ort.Tensor, or {data, dims} with the dtype's typed array (BigInt64Array for int64, Uint8Array for bool). */
export type NamedTensor = Tensor | {
  data: Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array | Uint16Array; dims: readonly number[]; type?: string;
};

/** A bundle of named inputs takes every input by name (one tensor when it has a single input). */
export type NamedInputs = Record<string, NamedTensor> | Map<string, NamedTensor>;

/** What runAll, predict and anytime take: an image bundle's tensor, or named inputs. */
export type ChainInput = InputTensor | NamedInputs;

/** One network input, as the manifest records it. */
export interface InputInfo {
  name: string;
  /** float32, float16, float64, int64, int32, uint8 or bool. */
  dtype: string;
  /** null on a dynamic axis. */
  shape: (number | null)[];
  /** Each dynamic axis's name ('batch', 'sequence'); null on a fixed axis. */
  axes: (string | null)[];
}

export class ExitChain {
  /** Read manifest.json and thresholds.json, check every graph's sha256, then create one session per graph. */
  static load(bundle: string | URL | BundleSource, options?: LoadOptions): Promise<ExitChain>;
  readonly ort: OrtNamespace;
  /** The raw manifest.json. */
  readonly manifest: Record<string, any>;
  readonly numExits: number;
  readonly numClasses: number;
  /** Each exit's class count. */
  readonly exitClasses: number[];
  readonly classNames: string[] | null;
  /** (C, H, W) of one input image; null for a bundle of named inputs. */
  readonly inputShape: number[] | null;
  /** The first input's name. */
  readonly inputName: string;
  /** Every network input (an image bundle: its one image). */
  readonly inputs: InputInfo[];
  /** Whether the bundle takes named inputs (its manifest records `inputs`) rather than one image. */
  readonly named: boolean;
  /** null for a bundle of named inputs. */
  readonly preprocessSpec: PreprocessSpec | null;
  readonly operatingPoints: Record<string, OperatingPoint>;
  readonly defaultOperatingPoint: string | null;
  readonly executionProviders: InferenceSession.ExecutionProviderConfig[] | null;
  readonly deviceIo: boolean;
  /** One entry per graph, in order: its session and the tensor names it reads and hands on. */
  readonly graphs: ReadonlyArray<{
    readonly session: InferenceSession; readonly path: string; readonly inputs: string[]; readonly exits: number[];
    readonly logits: string[]; readonly cacheNames: string[]; readonly fetches: string[]; readonly keepAfter: Set<string>;
  }>;
  /** The manifest's static batch size, or null for dynamic-batch graphs. */
  readonly staticBatch: number | null;
  /** Images to the float32 NCHW input tensor, as the manifest's preprocessing says. */
  preprocess(images: Pixels | Pixels[]): Tensor;
  /** An image bundle's input as a checked tensor; throws InputError naming the problem. */
  checkInput(x: InputTensor): Tensor;
  /** Every input checked against the manifest (name, dtype, rank, fixed axes, shared dynamic axes), by name; throws InputError. */
  checkInputs(x: ChainInput): Map<string, Tensor>;
  /** One threshold (the last is -Infinity) and one temperature per exit. */
  resolveThresholds(options?: ThresholdOptions): { thresholds: Float64Array; temperatures: Float32Array; rule: ExitRule };
  /** Every exit's logits for every sample: one CPU tensor (N, classes) per exit. */
  runAll(x: ChainInput): Promise<Tensor[]>;
  /** Each sample stops at the first exit confident enough (default: the bundle's default operating point). */
  predict(x: ChainInput, options?: ThresholdOptions): Promise<Prediction>;
  /** predict() as answers that refine: one snapshot per graph run, the last one predict()'s answers. */
  anytime(x: ChainInput, options?: ThresholdOptions): AsyncGenerator<Snapshot>;
  /** Release every session. */
  release(): Promise<void>;
}

export class RanetEdgeError extends Error {
  /** The CLI's exit code for it (2). */
  exitCode: number;
}
export class BundleError extends RanetEdgeError {}
export class InputError extends RanetEdgeError {}
export class CalibrationError extends RanetEdgeError {}
export class ProviderError extends RanetEdgeError {}

export function parseManifest(text: string, where: string): { data: any; graphs: any[]; numExits: number; inputName: string; inputs: InputInfo[] };
/** The typed array that holds each dtype's values. */
export const ARRAYS: Record<string, new (n: number) => ArrayLike<number | bigint>>;
/** 'int64 (batch, sequence)': what a caller must give for one input. */
export function describeInput(info: InputInfo): string;
/** A manifest's inputs (an image bundle's: its one image, from preprocessing). */
export function inputsOf(manifest: Record<string, any>, where: string): InputInfo[];
export function parsePoints(text: string | null, where: string): { points: Record<string, OperatingPoint>; default: string | null };
export function resolveThresholds(k: number, points: Record<string, OperatingPoint>, defaultName: string | null, options?: ThresholdOptions):
  { thresholds: Float64Array; temperatures: Float32Array; rule: ExitRule };
export function specFrom(preprocessing: Record<string, any>): PreprocessSpec;
/** One image to spec.size square uint8 RGB (HWC), resized with OpenCV's geometry. */
export function fitImage(image: Pixels, spec: PreprocessSpec, index?: number): Uint8Array;
export function normalize(fitted: Uint8Array[], spec: PreprocessSpec): Float32Array;
export function preprocess(images: Pixels | Pixels[], spec: PreprocessSpec): { data: Float32Array; dims: number[] };
/** Softmax of one row in float32 into `probs`; returns the max probability (and with `out`, sets its entropy). */
export function softmaxRow(z: ArrayLike<number>, offset: number, classes: number, temperature: number, probs: Float32Array,
  out?: { entropy: number }): number;
