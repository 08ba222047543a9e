// The demo page: pick images or use the webcam; each is classified by the bundle's graphs and
// leaves at the first exit confident enough. ?ep=webgpu runs on the GPU, ?threads=N sets the
// WebAssembly threads (default 1), ?bundle=URL loads another bundle.
import * as ort from 'onnxruntime-web';

import { ExitChain } from '/src/index.js';
import { pixelsOf } from '/src/browser.js';

const params = new URLSearchParams(location.search);
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const status = $('status');
const rows = $('results');

ort.env.wasm.wasmPaths = '/ort/';
ort.env.wasm.numThreads = Number(params.get('threads') || 1);
const ep = params.get('ep') || 'wasm';

/** Load the bundle and wire the page; resolves to the chain. */
async function start() {
  const t0 = performance.now();
  const chain = await ExitChain.load(new URL(params.get('bundle') || '/bundle/', location.href), { ort, executionProviders: [ep] });
  const select = $('point');
  for (const name of Object.keys(chain.operatingPoints).sort()) select.add(new Option(name, name, false, name === chain.defaultOperatingPoint));
  if (select.options.length === 0) select.add(new Option('last exit only', ''));
  status.textContent = `${chain.numExits} exits, ${chain.numClasses} classes, on ${ep}; loaded and checked in ${(performance.now() - t0).toFixed(0)} ms`;
  $('files').disabled = false;
  $('camera').disabled = false;
  return chain;
}

/** The options for predict() from the select. */
const pointOptions = () => ($('point').value ? { operatingPoint: $('point').value } : {});

/**
 * Classify pixels; returns per-image {label, name, exit, confidence} and the time taken.
 * @param {ExitChain} chain @param {any[]} pixels @param {any} [options]
 */
async function classify(chain, pixels, options = pointOptions()) {
  const t0 = performance.now();
  const res = await chain.predict(chain.preprocess(pixels), options);
  const ms = performance.now() - t0;
  const out = Array.from(res.labels, (label, i) => ({
    label, name: chain.classNames ? chain.classNames[label] : String(label), exit: res.exits[i], confidence: res.confidences[i],
  }));
  return { out, ms };
}

/** One result row. @param {HTMLElement} thumb @param {string} name @param {any} r @param {number} ms */
function showRow(thumb, name, r, ms, row = rows.insertRow()) {
  row.replaceChildren();
  row.insertCell().append(thumb);
  const cells = [name, r.name, String(r.exit), r.confidence.toFixed(3), ms.toFixed(1)];
  for (const text of cells) row.insertCell().textContent = text;
  row.dataset.label = String(r.label);
  row.dataset.exit = String(r.exit);
  return row;
}

const ready = start();
ready.then((chain) => {
  $('files').addEventListener('change', async (/** @type {any} */ ev) => {
    for (const file of ev.target.files) {
      try {
        const bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none' });
        const { out, ms } = await classify(chain, [pixelsOf(bitmap)]);
        const img = document.createElement('img');
        img.src = URL.createObjectURL(file);
        showRow(img, file.name, out[0], ms).dataset.file = file.name;
      } catch (err) {
        const row = rows.insertRow();
        row.insertCell();
        row.insertCell().textContent = file.name;
        const cell = row.insertCell();
        cell.colSpan = 4;
        cell.textContent = `cannot classify: ${/** @type {Error} */ (err).message}`;
      }
    }
    ev.target.value = '';
    document.body.dataset.done = String(Number(document.body.dataset.done || 0) + 1);
  });

  let streaming = false;
  $('camera').addEventListener('click', async () => {
    const video = $('video');
    if (streaming) {
      streaming = false;
      video.srcObject.getTracks().forEach((/** @type {MediaStreamTrack} */ t) => t.stop());
      video.hidden = true;
      $('camera').textContent = 'use the webcam';
      return;
    }
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
    } catch (err) {
      status.textContent = `no webcam: ${/** @type {Error} */ (err).message}`;
      return;
    }
    await video.play();
    video.hidden = false;
    streaming = true;
    $('camera').textContent = 'stop the webcam';
    const live = rows.insertRow(0);
    live.id = 'live';
    const thumb = document.createElement('canvas');
    let frames = 0;
    const loop = async () => {
      if (!streaming) return;
      const pixels = pixelsOf(video);
      const { out, ms } = await classify(chain, [pixels]);
      thumb.width = pixels.width;
      thumb.height = pixels.height;
      thumb.getContext('2d').putImageData(pixels, 0, 0);
      showRow(thumb, 'webcam', out[0], ms, live).dataset.frames = String(++frames);
      setTimeout(loop, 100);
    };
    loop();
  });
}, (err) => {
  status.textContent = `error: ${err.message}`;
  status.className = 'error';
});

// For the tests and the benchmark: the chain, and classification of raw pixels.
/** @type {any} */ (window).ranetDemo = {
  ready,
  ort,
  classify: async (/** @type {any[]} */ pixels, /** @type {any} */ options) => (await classify(await ready, pixels, options)).out,
};
