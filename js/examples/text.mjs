// Classify texts given as token ids, with a bundle of named inputs: node examples/text.mjs BUNDLE
import * as ort from 'onnxruntime-web';
import { ExitChain } from 'ranet-edge';

ort.env.wasm.numThreads = 1;
const [bundle] = process.argv.slice(2);
const chain = await ExitChain.load(bundle, { ort });
// two texts as token ids (from the bundle's tokenizer), padded to one length; the mask marks the tokens
const texts = [[2, 17, 5, 33, 9], [2, 9]];
const length = Math.max(...texts.map((t) => t.length));
const dims = [texts.length, length];
const ids = new BigInt64Array(texts.length * length); // int64 inputs take a BigInt64Array
const mask = new BigInt64Array(texts.length * length);
texts.forEach((t, i) => t.forEach((id, j) => { ids[i * length + j] = BigInt(id); mask[i * length + j] = 1n; }));
const result = await chain.predict({ input_ids: { data: ids, dims }, attention_mask: { data: mask, dims } },
  { rule: 'entropy', thresholds: 0.8 }); // a text leaves at the first exit whose softmax entropy is <= 0.8
texts.forEach((_, i) => {
  const k = result.exits[i]; // a label indexes the classes of the exit taken (exits may differ in count)
  console.log(`text ${i}: class ${result.labels[i]} of exit ${k}'s ${chain.exitClasses[k]}, confidence ${result.confidences[i].toFixed(3)}`);
});
await chain.release();
