// Classify image files in Node: node examples/node.mjs BUNDLE IMAGE...
import * as ort from 'onnxruntime-web'; // or onnxruntime-node, with executionProviders: ['cpu']
import { ExitChain } from 'ranet-edge';
import { readImage } from 'ranet-edge/node';

ort.env.wasm.numThreads = 1;
const [bundle, ...files] = process.argv.slice(2);
const chain = await ExitChain.load(bundle, { ort }); // checks every graph's sha256 first
const x = chain.preprocess(await Promise.all(files.map(readImage)));

const logits = await chain.runAll(x); // anytime prediction: one (N, classes) tensor per exit
console.log(`${logits.length} exits, operating points: ${Object.keys(chain.operatingPoints).join(', ')}`);

const result = await chain.predict(x); // the bundle's default operating point
// or: chain.predict(x, { operatingPoint: 'p0.5' }), chain.predict(x, { thresholds: 0.9 })
files.forEach((file, i) => {
  const label = chain.classNames[result.labels[i]];
  console.log(`${file}: ${label}, exit ${result.exits[i]}, confidence ${result.confidences[i].toFixed(3)}`);
});
