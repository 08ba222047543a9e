"""Image preprocessing as the bundle manifest describes it (numpy; opencv only to resize)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "PreprocessSpec", "check_batch", "fit_image", "normalize", "preprocess", "read_image",
]

CIFAR10_MEAN = (0.4914, 0.4824, 0.4467)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How uint8 RGB images become the network input (float32, NCHW)."""

    size: int  # side of the square network input
    mean: tuple[float, float, float]  # per RGB channel, on the [0, 1] scale
    std: tuple[float, float, float]
    resize: int | None = None  # shorter side resized to this before the centre crop
    layout: str = "NCHW"
    color: str = "RGB"
    dtype: str = "float32"

    @classmethod
    def for_dataset(cls, data: str) -> PreprocessSpec:
        """The training preprocessing of ``data``: ``"ImageNet"`` (resize to 256, crop 224),
        ``"cifar100"``, and CIFAR-10's 32x32 statistics for any other name."""
        if data == "ImageNet":
            return cls(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=256)
        if data == "cifar100":
            return cls(size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD)
        return cls(size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``preprocessing`` fields (``scale`` included; ``input`` and
        ``shape`` are the exporter's to add)."""
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "layout": self.layout, "color": self.color,
                "dtype": self.dtype, "scale": "uint8 / 255"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`, for a mapping already validated (the manifest's is, by
        :func:`~ranet_edge.runtime.manifest.load_manifest`); unknown keys are ignored.

        Raises:
            KeyError: when ``size``, ``mean`` or ``std`` is missing.
        """
        return cls(size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize=d.get("resize"), layout=d.get("layout", "NCHW"),
                   color=d.get("color", "RGB"), dtype=d.get("dtype", "float32"))


def fit_image(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize/crop one uint8 HxWx3 image to ``spec.size`` square (no normalisation): with
    ``spec.resize``, the shorter side to that length (bilinear) then the centre crop; without
    it, straight to the square (area interpolation), or unchanged when it already is that
    square. Only a resize imports opencv.

    Raises:
        InputError: when ``image`` is not a uint8 HxWx3 array.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"expected a uint8 HxWx3 RGB image, got {got}")
    h, w = image.shape[:2]
    if spec.resize:
        import cv2

        scale = spec.resize / min(h, w)
        nh, nw = max(spec.size, round(h * scale)), max(spec.size, round(w * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = (nh - spec.size) // 2, (nw - spec.size) // 2
        image = image[top:top + spec.size, left:left + spec.size]
    elif (h, w) != (spec.size, spec.size):
        import cv2

        image = cv2.resize(image, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
    return image


def normalize(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, written channel by channel into the one array
    returned (no float temporaries the size of the batch)."""
    mean = np.asarray(spec.mean, np.float32) * 255.0
    inv = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
    n, h, w, c = batch.shape
    out = np.empty((n, c, h, w), np.float32)
    for ch in range(c):
        plane = out[:, ch]
        np.subtract(batch[..., ch], mean[ch], out=plane, dtype=np.float32)  # uint8 -> float32 exactly
        np.multiply(plane, inv[ch], out=plane)
    return out


def preprocess(images: Sequence[np.ndarray] | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A list (or NHWC array) of uint8 RGB images -> float32 NCHW batch, each image fitted
    with :func:`fit_image` (a uint8 NHWC array of the right size goes straight to
    :func:`normalize`).

    Raises:
        InputError: when no image is given or one is not a uint8 HxWx3 array.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[1:3] == (spec.size, spec.size) and images.dtype == np.uint8 and images.shape[3] == 3:
            return normalize(images, spec)
        images = list(images)
    if len(images) == 0:
        raise InputError("no images given; pass at least one uint8 HxWx3 RGB array")
    return normalize(np.stack([fit_image(im, spec) for im in images]), spec)


def check_batch(x: Any, sample_shape: tuple[int, ...], block: int = 128) -> np.ndarray:
    """``x`` if it is a finite float32 (N, *sample_shape) array with N >= 1 (checked ``block``
    rows at a time, so the temporary stays bounded).

    Raises:
        InputError: when ``x`` is not a numpy array, not float32, not (N, *sample_shape) with
            N >= 1, or holds NaN or an infinity; the message says how to fix it.
    """
    if not isinstance(x, np.ndarray):
        raise InputError(f"input must be a numpy array, got {type(x).__name__}; use chain.preprocess(images)")
    if x.dtype != np.float32:
        raise InputError(f"input dtype is {x.dtype}, expected float32; use chain.preprocess(images) "
                         "or x.astype(np.float32)")
    if x.ndim != 4 or tuple(x.shape[1:]) != sample_shape or x.shape[0] == 0:
        raise InputError(f"input shape is {tuple(x.shape)}, expected (N, {', '.join(map(str, sample_shape))}) "
                         "with N >= 1; use chain.preprocess(images)")
    for start in range(0, x.shape[0], block):
        if not np.isfinite(x[start:start + block]).all():
            raise InputError("input contains NaN or infinite values; check the preprocessing")
    return x


def read_image(path: str) -> np.ndarray:
    """Decode an image file (any format opencv reads) to uint8 HxWx3 RGB.

    Raises:
        InputError: when ``path`` is not a file, or cannot be decoded as an image.
    """
    import os

    import cv2

    if not os.path.isfile(path):
        raise InputError(f"image {path} does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"cannot decode image {path}: the file is corrupt or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
