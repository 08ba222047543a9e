"""Shared test vectors for the JavaScript driver: the Python runtime's answers on the shipped
default bundle and the shipped validation images.

    .venv/bin/python js/tools/make_vectors.py          # rewrites js/test/fixtures/

Writes ``vectors.json`` (what the Python runtime decides, per operating point and per image
file, and ``ranet-edge predict --json`` output), ``logits.f32`` (every exit's float32 logits for
the 500 images, exit-major, little-endian) and ``images/`` (a few small PNG/JPEG files that
exercise decoding, grey and alpha channels, and the resize paths). The JS tests compare against
these; ``tests/test_js_vectors.py`` regenerates them and checks that the committed ones are current.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "ranet_edge" / "assets" / "default-bundle"
IMAGES = ROOT / "ranet_edge" / "assets" / "cifar10-val-500.npz"
JS = ROOT / "js"
FIXTURES = JS / "test" / "fixtures"

#: Threshold specs checked besides every stored operating point (as `--thresholds` takes them).
EXTRA_SPECS = ["0.9", "0.95,0.9,0.85,0.8,0.75"]
#: The other exit rules (issue 30): key -> (thresholds spec, rule, patience), as predict takes them.
RULE_SPECS = {"entropy:0.5": ("0.5", "entropy", None), "entropy:1.2,0.9,0.6,0.4,0.3": ("1.2,0.9,0.6,0.4,0.3", "entropy", None),
              "patience:1": (None, "patience", 1), "patience:2": (None, "patience", 2)}
#: A sample whose confidence lies this close to a threshold it meets may leave elsewhere in a
#: backend whose logits differ within the tolerance; the vectors count such samples.
MARGIN = 1e-5


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec_value(spec: str):
    from ranet_edge.cli.commands_runtime import parse_thresholds

    return parse_thresholds(spec)


def _route(logits: list[np.ndarray], thr: np.ndarray, temps: np.ndarray,
           rule: str = "max_prob") -> tuple[np.ndarray, ...]:
    """Each sample's exit, label and confidence from every exit's logits, by the runtime's one
    exit rule (``ranet_edge.runtime.decision.decide``) applied exit after exit (the patience
    streak carried): what the JavaScript driver must reproduce."""
    from ranet_edge.runtime.decision import decide

    n = len(logits[0])
    exits, labels, conf = np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float32)
    alive = np.ones(n, bool)
    state = None
    for k, z in enumerate(logits):
        d = decide(z, thr[k], temps[k], alive, rule, state)
        state = d.state
        taken = np.flatnonzero(d.take)
        exits[taken], labels[taken], conf[taken] = k, d.labels, d.confidences
        alive &= ~d.take
    return exits, labels, conf


def _margins(logits: list[np.ndarray], thr: np.ndarray, temps: np.ndarray, exits: np.ndarray,
             rule: str = "max_prob") -> np.ndarray:
    """Per sample: the smallest distance to flipping a decision over the exits it was judged at:
    |confidence - threshold| (max_prob), |entropy - threshold| (entropy), or the gap between
    the two largest probabilities, which could swap its label (patience, every exit)."""
    from ranet_edge.runtime.decision import entropy

    out = np.full(len(exits), np.inf)
    for k in range(len(logits) if rule == "patience" else len(logits) - 1):
        z = logits[k] / np.float32(temps[k]) if temps[k] != 1.0 else logits[k]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        judged = exits >= k
        if rule == "patience":
            top2 = np.sort(e / e.sum(axis=1, keepdims=True), axis=1)[:, -2:].astype(np.float64)
            out[judged] = np.minimum(out[judged], top2[judged, 1] - top2[judged, 0])
            continue
        score = (1.0 / e.sum(axis=1)) if rule == "max_prob" else entropy(logits[k], float(temps[k]))
        if np.isfinite(thr[k]):
            out[judged] = np.minimum(out[judged], np.abs(score.astype(np.float64)[judged] - thr[k]))
    return out


def _with_orientation(jpeg: bytes, value: int) -> bytes:
    """JPEG bytes with an EXIF APP1 segment holding only the orientation tag, after APP0."""
    ifd = (1).to_bytes(2, "big") + (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") \
        + (1).to_bytes(4, "big") + value.to_bytes(2, "big") + b"\x00\x00" + (0).to_bytes(4, "big")
    body = b"Exif\x00\x00" + b"MM\x00\x2a" + (8).to_bytes(4, "big") + ifd
    segment = b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body
    at = 4 + int.from_bytes(jpeg[4:6], "big")  # after SOI and APP0
    return jpeg[:at] + segment + jpeg[at:]


def _write_images(x: np.ndarray, chosen: dict[str, int], out: Path) -> list[str]:
    """The image files of the fixture set; returns their names."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    names = []

    def write(name: str, rgb: np.ndarray, *params: int) -> None:
        img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(Path(name).suffix, img, list(params))
        assert ok, name
        (out / name).write_bytes(buf.tobytes())
        names.append(name)

    for tag, i in chosen.items():
        write(f"{tag}.png", x[i])
    write("val-jpeg-a.jpg", x[40], cv2.IMWRITE_JPEG_QUALITY, 95)
    write("val-jpeg-b.jpg", x[41], cv2.IMWRITE_JPEG_QUALITY, 90)
    write("grey.png", cv2.cvtColor(x[42], cv2.COLOR_RGB2GRAY))
    alpha = np.dstack([x[43], np.linspace(0, 255, 32 * 32).reshape(32, 32).astype(np.uint8)])
    write("alpha.png", alpha)
    write("big-64x64.png", cv2.resize(x[44], (64, 64), interpolation=cv2.INTER_CUBIC))
    write("odd-45x37.png", cv2.resize(x[45], (45, 37), interpolation=cv2.INTER_CUBIC))
    write("small-24x20.png", cv2.resize(x[46], (24, 20), interpolation=cv2.INTER_AREA))
    write("deep-16bit.png", x[48].astype(np.uint16) * 257 + np.arange(32 * 32 * 3, dtype=np.uint16).reshape(32, 32, 3) % 200)
    for orientation in range(2, 9):  # every EXIF orientation but the identity
        name = f"exif-{orientation}.jpg"
        write(name, x[47][:, 4:28], cv2.IMWRITE_JPEG_QUALITY, 95)
        (out / name).write_bytes(_with_orientation((out / name).read_bytes(), orientation))
    return names


def _cli_output(files: list[str], spec: str | None, cwd: Path) -> dict:
    """`ranet-edge predict BUNDLE FILES... --json [--thresholds SPEC]` run in-process from
    ``cwd`` (js/ for the committed vectors): the arguments after the bundle and the exact output."""
    from click.testing import CliRunner

    from ranet_edge.cli import get_cli

    args = ["predict", str(BUNDLE), *files, "--json"] + (["--thresholds", spec] if spec else [])
    here = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(get_cli(), args)
    finally:
        os.chdir(here)
    if res.exit_code != 0:
        raise RuntimeError(f"ranet-edge predict failed: {res.output}")
    return {"args": args[2:], "stdout": res.output}


def build(out: Path = FIXTURES) -> dict:
    """Write the fixtures under ``out`` (a ``.../test/fixtures`` folder, so that the image paths
    the CLI prints, relative to two levels up, read as from js/) and return the vectors (also
    written as vectors.json)."""
    if out.parts[-2:] != ("test", "fixtures"):
        raise ValueError(f"{out} must end in test/fixtures")
    base = out.parents[1]
    from ranet_edge.runtime import ExitChain, read_image
    from ranet_edge.runtime.preprocess import fit_image

    chain = ExitChain.load(BUNDLE, provider="cpu", threads=1)
    data = np.load(IMAGES)
    x_u8 = data["x"]
    x = chain.preprocess(x_u8)
    logits = chain.run_all(x)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logits.f32").write_bytes(np.stack(logits).astype("<f4").tobytes())

    specs = {name: (name, None, None) for name in sorted(chain.operating_points)} \
        | {s: (_spec_value(s), None, None) for s in EXTRA_SPECS} \
        | {key: (None if s is None else _spec_value(s), r, t) for key, (s, r, t) in RULE_SPECS.items()}
    predictions = {}
    for key, (value, rule, patience) in specs.items():
        thr, temps, rule = chain.resolve_rule(value, rule, patience)
        exits, labels, confidences = _route(logits, thr, temps, rule)
        res = chain.predict(x, value, rule=rule, patience=patience)  # the chain's routing loop must say the same
        if not (np.array_equal(res.exits, exits) and np.array_equal(res.labels, labels)
                and np.array_equal(res.confidences, confidences)):
            raise RuntimeError(f"{key}: ExitChain.predict disagrees with the exit rule applied to run_all's logits")
        margin = _margins(logits, thr, temps, exits, rule)
        given = {"patience": patience} if patience is not None else \
            {"operating_point" if isinstance(value, str) else "thresholds": value}
        predictions[key] = {
            **given, "rule": rule,
            "exits": exits.tolist(), "labels": labels.tolist(),
            "confidences": [float(c) for c in confidences],
            "exit_counts": np.bincount(exits, minlength=chain.num_exits).tolist(),
            "min_margin": float(margin.min()), "near_threshold": np.flatnonzero(margin < MARGIN).tolist(),
        }

    default = predictions[chain.default_operating_point]["exits"]
    chosen = {f"val{i:03d}-exit{k}-{chain.class_names[data['y'][i]]}": i
              for k in range(chain.num_exits) for i in [default.index(k)] if k in default}
    names = _write_images(x_u8, chosen, out / "images")
    files = [f"test/fixtures/images/{n}" for n in names]
    per_file = {}
    for name, rel in zip(names, files):
        rgb = read_image(str(base / rel))
        fitted = fit_image(rgb, chain.preprocess_spec)
        per_file[name] = {"decoded_shape": list(rgb.shape), "decoded_sha256": _sha(rgb.tobytes()),
                          "fitted_rgb_base64": base64.b64encode(fitted.tobytes()).decode()}
    vectors = {
        "about": "Python runtime answers for the JS cross-checks; regenerate with "
                 ".venv/bin/python js/tools/make_vectors.py",
        "bundle": "ranet_edge/assets/default-bundle",
        "manifest_sha256": _sha((BUNDLE / "manifest.json").read_bytes()),
        "thresholds_sha256": _sha((BUNDLE / "thresholds.json").read_bytes()),
        "images": {"path": "ranet_edge/assets/cifar10-val-500.npz", "count": int(len(x_u8)),
                   "pixels_sha256": _sha(np.ascontiguousarray(x_u8).tobytes())},
        "input_sha256": _sha(x.astype("<f4").tobytes()),
        "logits": {"file": "logits.f32", "dtype": "float32 little-endian",
                   "shape": [chain.num_exits, int(len(x_u8)), int(logits[0].shape[1])]},
        "default_operating_point": chain.default_operating_point,
        "margin": MARGIN,
        "predictions": predictions,
        "files": per_file,
        "cli": {spec or "default": _cli_output(files, spec, base) for spec in [None, "0.9", "p0.5"]},
    }
    (out / "vectors.json").write_text(json.dumps(vectors, indent=1) + "\n")
    return vectors


if __name__ == "__main__":
    v = build(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES)
    for key, p in v["predictions"].items():
        print(f"{key:<28} exits {p['exit_counts']}  min margin {p['min_margin']:.2e}  "
              f"near threshold: {len(p['near_threshold'])}")
