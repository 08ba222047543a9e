"""--provider openvino for real: the chain through Intel's OpenVINO provider on the CPU gives
the CPU provider's labels and exits on the 500 sample images, logits within 1e-4.

Runs where OpenVINO is a provider: the onnxruntime-openvino build (the openvino extra;
``make test-openvino`` makes an environment of its own for it, as it replaces the CPU
build), or the onnxruntime-ep-openvino plugin where it offers a device (Intel CPUs; on
other CPUs it offers none, docs/guides/npu-and-plugin-providers.md).
"""
from __future__ import annotations

import numpy as np
import pytest

from ranet_edge.agreement import provider_agreement
from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import plugins

OPENVINO = "OpenVINOExecutionProvider"
#: Measured on the 500 sample images with onnxruntime-openvino 1.24.1: at most 1e-5 (fp32
#: kernels, other summation orders).
ATOL = 1e-4


def _openvino_here() -> str | None:
    if OPENVINO in plugins.BUILT_IN:
        return None
    if not plugins.installed(OPENVINO):
        return "neither onnxruntime-openvino (the openvino extra: make test-openvino) nor onnxruntime-ep-openvino is installed"
    plugins.register(OPENVINO)
    if not plugins.devices(OPENVINO):
        return "the onnxruntime-ep-openvino plugin offers no device on this CPU (it takes Intel devices only)"
    return None


def assert_agrees(images: np.ndarray) -> None:
    why = _openvino_here()
    if why:
        pytest.skip(why)
    r = provider_agreement(DEFAULT_BUNDLE, images, "openvino")
    assert r["provider"] == OPENVINO and r["images"] == len(images)
    for row in r["placement"]:
        assert row["providers"] == {OPENVINO: row["nodes"]}, row  # whole graphs, nothing left to the CPU
    assert r["labels_agree"] == 1.0 and r["exits_agree"] == 1.0
    assert max(r["max_abs_logit_diff"]) < ATOL, r["max_abs_logit_diff"]


def test_openvino_chain_agrees_with_the_cpu_on_a_few_sample_images():
    """The quick loop's share (make test): 16 images."""
    assert_agrees(np.load(SAMPLE_IMAGES)["x"][:16])


@pytest.mark.slow
def test_openvino_chain_agrees_with_the_cpu_on_the_sample_images():
    assert_agrees(np.load(SAMPLE_IMAGES)["x"])
