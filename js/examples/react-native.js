// React Native: the same chain on onnxruntime-react-native (CPU, NNAPI on Android, CoreML on iOS).
// The app passes its own file reading and SHA-256 (React Native has no WebCrypto), e.g.
//   import * as ort from 'onnxruntime-react-native';
//   import RNFS from 'react-native-fs';
//   import { Buffer } from 'buffer';
//   import QuickCrypto from 'react-native-quick-crypto';
//   const chain = await loadChain({
//     ort, dir: `${RNFS.DocumentDirectoryPath}/bundle`, providers: ['nnapi', 'cpu'],
//     readFile: async (path) => Buffer.from(await RNFS.readFile(path, 'base64'), 'base64'),
//     sha256: (bytes) => QuickCrypto.createHash('sha256').update(bytes).digest('hex'),
//   });
import { ExitChain } from 'ranet-edge';

/** Load a bundle from a directory on the device. */
export async function loadChain({ ort, dir, readFile, sha256, providers = ['cpu'] }) {
  const source = {
    describe: dir,
    readBytes: async (path) => {
      try {
        return new Uint8Array(await readFile(`${dir}/${path}`));
      } catch {
        return null; // no such file (thresholds.json is optional)
      }
    },
  };
  return ExitChain.load(source, { ort, sha256, executionProviders: providers });
}

/** Classify one camera frame: RGBA pixels as the camera library hands them over. */
export async function classifyFrame(chain, { data, width, height }) {
  const result = await chain.predict(chain.preprocess({ data, width, height, channels: 4 }));
  return { label: chain.classNames[result.labels[0]], exit: result.exits[0], confidence: result.confidences[0] };
}
