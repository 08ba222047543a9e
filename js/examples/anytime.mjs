// Answers that refine, exit by exit: node examples/anytime.mjs BUNDLE IMAGE
import * as ort from 'onnxruntime-web';
import { ExitChain } from 'ranet-edge';
import { readImage } from 'ranet-edge/node';

ort.env.wasm.numThreads = 1;
const [bundle, file] = process.argv.slice(2);
const chain = await ExitChain.load(bundle, { ort });
const x = chain.preprocess([await readImage(file)]);
for await (const s of chain.anytime(x, { operatingPoint: 'p0.5' })) {
  // show the first answer at once, replace it as deeper exits finish; s.done: predict()'s answer
  const label = chain.classNames[s.labels[0]];
  console.log(`exit ${s.exit}: ${label}, confidence ${s.confidences[0].toFixed(3)}${s.done ? ' (final)' : ''}`);
}
