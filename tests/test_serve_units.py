"""The serving pieces that need no Ray: settings, request bodies, a batch run graph by graph,
and `ranet-edge serve` refusing bad options before it starts anything."""
from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.errors import CalibrationError, ConfigError
from ranet_edge.runtime import ExitChain
from ranet_edge.serve import ServeSettings
from ranet_edge.serve.api import RequestError, parse_images
from ranet_edge.serve.engine import ServedModel


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    with np.load(SAMPLE_IMAGES) as z:
        return z["x"][:64]


@pytest.fixture(scope="module")
def chain() -> ExitChain:
    return ExitChain.load(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings())


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def png_header_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A few dozen bytes of PNG whose header declares a 100-megapixel image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- settings
def test_settings_from_config_file_args():
    s = ServeSettings.from_dict({"max_batch": "32", "batch-wait-ms": "2.5", "graph": "monolithic", "replicas": 2})
    assert (s.max_batch, s.batch_wait_ms, s.graph, s.replicas) == (32, 2.5, "monolithic", 2)
    assert ServeSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match="unknown serve setting 'max_batch_size'; valid settings: .*max_batch"):
        ServeSettings.from_dict({"max_batch_size": 8})
    with pytest.raises(ConfigError, match="must be a number"):
        ServeSettings.from_dict({"threads": "two"})


@pytest.mark.parametrize("bad", [{"replicas": 0}, {"max_batch": 1.5}, {"threads": True}, {"graph": "onnx"},
                                 {"batch_wait_ms": -1}, {"max_body_bytes": 0}])
def test_settings_refuse_bad_values(bad):
    with pytest.raises(ConfigError):
        ServeSettings(**bad)


# --------------------------------------------------------------------------- request bodies
def test_parse_image_bodies(chain, sample):
    spec = chain.preprocess_spec
    one = parse_images("image/png", png(sample[0]), spec, 64)
    np.testing.assert_array_equal(one, sample[:1])  # PNG is lossless
    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(sample[1][..., ::-1]))[1].tobytes()
    assert parse_images("image/jpeg; charset=binary", jpeg, spec, 64).shape == (1, 32, 32, 3)
    listed = json.dumps([base64.b64encode(png(im)).decode() for im in sample[:3]]).encode()
    np.testing.assert_array_equal(parse_images("application/json", listed, spec, 64), sample[:3])
    big = cv2.resize(sample[2], (96, 64))  # any size is fitted to the network input
    assert parse_images("image/png", png(big), spec, 64).shape == (1, 32, 32, 3)


@pytest.mark.parametrize("ctype, body, status, fragment", [
    ("text/plain", b"hello", 415, "content type text/plain is not accepted"),
    (None, b"\x89PNG", 415, "content type (none) is not accepted"),
    ("image/png", b"", 400, "body is empty"),
    ("image/png", b"\x89PNG\r\n\x1a\nnot really", 400, "cannot be decoded"),
    ("application/json", b"{not json", 400, "not valid JSON"),
    ("application/json", b'{"images": []}', 400, "non-empty list of base64"),
    ("application/json", b"[]", 400, "non-empty list of base64"),
    ("application/json", b'["@@@"]', 400, "image 0 of the JSON list is not valid base64"),
    ("application/json", json.dumps(["aGVsbG8="] * 2).encode(), 400, "image 0 of the JSON list cannot be decoded"),
    ("application/json", json.dumps(["aGVsbG8="] * 65).encode(), 413, "65 images in one request"),
])
def test_bad_bodies(chain, ctype, body, status, fragment):
    with pytest.raises(RequestError) as err:
        parse_images(ctype, body, chain.preprocess_spec, 64)
    assert err.value.status == status and fragment in err.value.message
    assert "\n" not in err.value.message


def test_huge_declared_image_is_refused_before_decoding():
    """OpenCV reads its pixel limit when it loads: importing the serving API first (as a
    replica does) sets it, so a tiny body declaring a huge image gets 413, not a 300 MB decode."""
    code = ("import sys; from ranet_edge.serve.api import RequestError, parse_images; "
            "from ranet_edge.runtime.preprocess import PreprocessSpec\n"
            "try:\n    parse_images('image/png', sys.stdin.buffer.read(), PreprocessSpec.for_dataset('cifar10'), 64)\n"
            "except RequestError as e:\n    print(e.status, e.message)")
    out = subprocess.run([sys.executable, "-c", code], input=png_header_bomb(), capture_output=True, check=True)
    assert out.stdout.decode().startswith("413 the image has more than 50,000,000 pixels"), out


def test_unknown_operating_point(model):
    assert model.check_point(None) == "iso-accuracy" == model.default_point
    with pytest.raises(CalibrationError, match="unknown operating point 'fastest'; stored: iso-accuracy, "):
        model.check_point("fastest")


# --------------------------------------------------------------------------- the command, before it serves
def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], result.output


def test_serve_refuses_bad_options(run, tmp_path):
    assert_one_line_error(run("serve", tmp_path / "nothing"), "manifest")
    assert_one_line_error(run("serve", "--operating-point", "fastest"), "unknown operating point 'fastest'")
    assert_one_line_error(run("serve", "--ray", "--replicas", "0"), "replicas must be a whole number >= 1")
    assert_one_line_error(run("serve", "--max-queue", "0"), "max_queue must be a whole number >= 1")
    assert_one_line_error(run("serve", "--timeout-s", "0"), "timeout_s must be a number of seconds > 0")
    assert_one_line_error(run("serve", "--provider", "cuda"), "not available")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert_one_line_error(run("serve", "--ray", "--address", f"127.0.0.1:{closed}"),
                          f"cannot reach the Ray cluster at 127.0.0.1:{closed}", "ray start --head")
    assert_one_line_error(run("serve", "--ray", "--address", "head-node"), "must be 'auto' or HOST:PORT")
    result = run("serve", "--ray", "--haproxy", "--address", "auto")
    assert result.exit_code == 2 and "RAY_SERVE_ENABLE_HA_PROXY=1 ray start" in result.output
    for ray_only in (["--haproxy"], ["--replicas", "2"], ["--address", "auto"]):  # the one-process server has none
        assert_one_line_error(run("serve", *ray_only), f"{ray_only[0]} apply to Ray Serve: add --ray")
    assert_one_line_error(run("serve", "--ray", "--grpc-port", "0"), "--grpc-port is served by the one-process server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_one_line_error(run("serve", "--port", port), f"cannot listen on 127.0.0.1:{port}", "--port")


def test_serve_haproxy_refuses_a_stats_port_in_use_before_ray_starts(run, monkeypatch):
    """Two --haproxy servers on one machine would share HAProxy's stats and metrics ports."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        monkeypatch.setenv("RAY_SERVE_HAPROXY_METRICS_PORT", str(taken))
        result = run("serve", "--ray", "--haproxy", "--port", port)
        assert_one_line_error(result, f"HAProxy's metrics port 0.0.0.0:{taken}", "RAY_SERVE_HAPROXY_METRICS_PORT=PORT")
        assert "import ray" not in result.output
