"""A plugin library the application registered itself, as ONNX Runtime's documentation shows
(``ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())``),
is found and reused by ``ExitChain.load(..., provider="qnn")``: never registered a second time,
never missed. Registration lasts as long as the process, so each case runs in a subprocess of
its own; the chain loaded the ordinary way runs here, and both must predict the same."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn is not installed (the qnn extra; its wheels "
                    "exist for Linux x86_64 and Windows only)")

from ranet_edge.assets import QNN_BUNDLE, SAMPLE_IMAGES  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.runtime.plugins import devices, register  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QNN = "QNNExecutionProvider"
#: Held-out sample images (the shipped QNN bundle was calibrated on the first 256); the HTP
#: simulator takes about a third of a second per image through the six graphs.
ROWS = slice(300, 303)

#: The application: registers the library (before or after importing ranet_edge), loads the
#: QNN bundle, predicts, and says what ONNX Runtime has registered afterwards.
APP = """
import json, sys
import numpy as np
import onnxruntime as ort
import onnxruntime_qnn

name, when = sys.argv[1], sys.argv[2]
if when == "after-import":
    from ranet_edge.runtime import ExitChain
ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
from ranet_edge.assets import QNN_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain, plugins

chain = ExitChain.load(QNN_BUNDLE, provider="qnn", warmup=False)
x = chain.preprocess(list(np.load(SAMPLE_IMAGES)["x"][300:303]))
p = chain.predict(x)
print(json.dumps({
    "labels": p.labels.tolist(), "exits": p.exits.tolist(), "probs": p.probabilities.tolist(),
    "logits": [a.tolist() for a in chain.run_all(x)],
    "ep_devices": sorted(d.ep_name for d in ort.get_ep_devices()),
    "available": ort.get_available_providers(), "built_in": list(plugins.BUILT_IN),
    "ep_name": plugins.ep_name("QNNExecutionProvider"),
    "session_providers": chain.session_providers, "placement": chain.placement,
}))
"""


@pytest.fixture(scope="module")
def ordinary():
    """The ordinary way: ranet-edge registers the library itself (in this process)."""
    register(QNN)
    if not devices(QNN):
        pytest.skip("onnxruntime-qnn offers no device on this machine")
    chain = ExitChain.load(QNN_BUNDLE, provider="qnn", warmup=False)
    x = chain.preprocess(list(np.load(SAMPLE_IMAGES)["x"][ROWS]))
    return chain, chain.predict(x), chain.run_all(x)


def _app(name: str, when: str) -> dict:
    r = subprocess.run([sys.executable, "-c", APP, name, when], capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("name", "when"), [
    pytest.param(QNN, "before-import", id="documented-name"),  # the case: in the quick loop
    pytest.param(QNN, "after-import", id="registered-after-import", marks=pytest.mark.slow),
    pytest.param("qnn", "before-import", id="another-name", marks=pytest.mark.slow)])
def test_a_library_the_app_registered_is_reused(ordinary, name, when):
    chain, want, want_logits = ordinary
    got = _app(name, when)
    # reused, not registered a second time: the library's devices appear once, under the app's name
    assert got["ep_devices"] == sorted(["CPUExecutionProvider", name]), got["ep_devices"]
    assert got["ep_name"] == name and name not in got["built_in"] and name in got["available"]
    assert [p[0] for p in got["session_providers"]] == [name] * len(chain.graphs)
    for row in got["placement"]:  # every compiled EPContext graph whole on the HTP
        assert row["graph"].endswith(".qnn_ctx.onnx") and row["providers"] == {name: 1}, row
    # the same predictions as the chain loaded the ordinary way (the same simulated HTP)
    assert got["labels"] == want.labels.tolist() and got["exits"] == want.exits.tolist()
    np.testing.assert_allclose(np.array(got["probs"], np.float32), want.probabilities, rtol=0, atol=1e-6)
    for a, b in zip(got["logits"], want_logits, strict=True):
        np.testing.assert_allclose(np.array(a, np.float32), b, rtol=0, atol=1e-5)


DOCTOR = """
import json, sys
import onnxruntime as ort
import onnxruntime_qnn

ort.register_execution_provider_library(sys.argv[1], onnxruntime_qnn.get_library_path())
from ranet_edge.assets import QNN_BUNDLE
from ranet_edge.doctor import diagnose

print(json.dumps(diagnose(QNN_BUNDLE, "qnn").to_dict()))
"""


@pytest.mark.slow
def test_doctor_checks_a_library_the_app_registered_under_another_name(ordinary):
    r = subprocess.run([sys.executable, "-c", DOCTOR, "qnn_app"], capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    row = next(p for p in rep["plugins"] if p["provider"] == QNN)
    assert row["registered_as"] == "qnn_app" and row["registered_by_app"] and row["error"] is None, row
    assert row["devices"] and all(d.startswith("qnn_app on ") for d in row["devices"])
    assert [(c["provider"], c["usable"]) for c in rep["accelerators"]] == [(QNN, True)], rep["accelerators"]
    graphs = rep["bundle"]["graphs"]
    assert len(graphs) == 6 and all(g["providers"][0] == "qnn_app" and g["all_nodes_on_first"] for g in graphs), graphs
    assert rep["problems"] == [] and rep["ok"]
