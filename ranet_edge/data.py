"""Torch-free dataset readers: ImageFolder trees, CIFAR python batches, and .npz arrays.

Every reader yields uint8 HxWx3 RGB images and integer labels; :func:`split` gives the
deterministic train/validation split used by training, calibration and evaluation.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranet_edge.runtime.preprocess import read_image

from .errors import DataError, InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Dataset:
    """Labelled images, decoded lazily (files) or held in memory (arrays)."""

    labels: np.ndarray  # int64, one per image
    classes: list[str]
    files: list[str] | None = None  # ImageFolder: one path per image
    arrays: np.ndarray | None = None  # N,H,W,3 uint8
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 HxWx3 RGB, decoded from its file now if it has one.

        Raises:
            DataError: the file cannot be read or decoded (the message names it).
        """
        if self.arrays is not None:
            return self.arrays[index]
        try:
            return read_image(self.files[index])
        except InputError as exc:
            raise DataError(str(exc)) from None

    def images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The images at ``indices``, in that order (sizes may differ in an ImageFolder).

        Raises:
            DataError: a file cannot be read or decoded.
        """
        return [self.image(int(i)) for i in indices]

    def subset(self, indices: np.ndarray) -> Dataset:
        """The images at ``indices`` as a new dataset (nothing is decoded)."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(
            labels=self.labels[indices], classes=self.classes,
            files=[self.files[i] for i in indices] if self.files is not None else None,
            arrays=self.arrays[indices] if self.arrays is not None else None,
            source=self.source,
        )

    def materialize(self) -> Dataset:
        """Decode every image into one array (for small images such as CIFAR); ``self`` if it
        is held in memory already.

        Raises:
            DataError: a file cannot be decoded, or the images are not all of one size.
        """
        if self.arrays is not None:
            return self
        first = self.image(0)
        out = np.empty((len(self),) + first.shape, np.uint8)
        out[0] = first
        for i in range(1, len(self)):
            im = self.image(i)
            if im.shape != first.shape:
                raise DataError(f"image {self.files[i]} is {im.shape[1]}x{im.shape[0]}, others are "
                                f"{first.shape[1]}x{first.shape[0]}; resize the dataset first")
            out[i] = im
        return Dataset(self.labels, self.classes, None, out, self.source)


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open ``path`` as whichever supported format it is: an ``.npz`` file, a CIFAR-10/100
    python folder (or its parent), else an ImageFolder tree. Files are not decoded yet.

    Raises:
        DataError: ``path`` does not exist, is a file other than ``.npz``, or cannot be read
            in the format it looks like (see :func:`read_npz`, :func:`read_cifar`,
            :func:`read_image_folder`).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset {p} does not exist; pass an ImageFolder root, a "
                        "cifar-10-batches-py/cifar-100-python folder, or an .npz with x and y")
    if p.is_file():
        if p.suffix == ".npz":
            return read_npz(p)
        raise DataError(f"{p} is a file but not an .npz; pass an .npz with x (N,H,W,3 uint8) and y")
    for name in ("cifar-10-batches-py", "cifar-100-python"):
        if (p / name).is_dir():
            return read_cifar(p / name)
    if (p / "data_batch_1").is_file() or (p / "train").is_file():
        return read_cifar(p)
    return read_image_folder(p)


def read_npz(path: Path) -> Dataset:
    """An ``.npz`` with ``x`` (N,H,W,3 uint8 RGB), ``y`` (N integer labels) and optionally
    ``classes``; without it the classes are named ``0 .. max(y)``. Read without pickles.

    Raises:
        DataError: the file cannot be read as ``.npz``, lacks ``x`` or ``y``, or their dtypes
            or shapes are not the ones above.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{path} needs arrays x (N,H,W,3 uint8) and y; it has {sorted(z.files)}")
            x, y = z["x"], z["y"]
            classes = [str(c) for c in z["classes"]] if "classes" in z else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz ({type(exc).__name__}: {exc})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise DataError(f"{path}: x must be N,H,W,3 uint8 RGB, got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    return Dataset(y.astype(np.int64), classes, arrays=x, source=str(path))


def read_cifar(folder: Path) -> Dataset:
    """CIFAR-10/100 python batches: the training batches (data_batch_* or train), with the
    class names of ``batches.meta`` or ``meta``. A restricted unpickler loads only arrays and
    bytes, never code.

    Raises:
        DataError: a batch or meta file cannot be read or holds anything else.
    """
    names = sorted(folder.glob("data_batch_*")) or [folder / "train"]
    xs, ys = [], []
    for f in names:
        try:
            with open(f, "rb") as fh:
                # The CIFAR batches are plain dicts of bytes/lists/ndarrays; a restricted
                # unpickler refuses anything that would import code.
                d = _SafeUnpickler(fh, encoding="bytes").load()
        except Exception as exc:
            raise DataError(f"cannot read CIFAR batch {f} ({type(exc).__name__}: {exc})") from None
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d.get(b"labels", d.get(b"fine_labels")), np.int64))
    meta = folder / ("batches.meta" if (folder / "batches.meta").exists() else "meta")
    classes = [str(i) for i in range(int(max(y.max() for y in ys)) + 1)]
    if meta.exists():
        try:
            with open(meta, "rb") as fh:
                m = _SafeUnpickler(fh, encoding="bytes").load()
        except Exception as exc:
            raise DataError(f"cannot read CIFAR class names {meta} ({type(exc).__name__}: {exc})") from None
        raw = m.get(b"label_names") or m.get(b"fine_label_names")
        if raw:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    return Dataset(np.concatenate(ys), classes, arrays=np.ascontiguousarray(np.concatenate(xs)),
                   source=str(folder))


class _SafeUnpickler(pickle.Unpickler):
    """Only what numpy arrays and bytes need, whatever pickle protocol wrote them."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_image_folder(root: Path) -> Dataset:
    """``root/<class>/*.jpg|png|...``: classes are the sorted folder names (hidden ones
    skipped), their index the label; files are decoded only when read.

    Raises:
        DataError: ``root`` has no class folders, or they hold no images.
    """
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders; expected root/<class>/*.jpg|png")
    files, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(f))
                labels.append(label)
    if not files:
        raise DataError(f"{root} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")
    return Dataset(np.asarray(labels, np.int64), classes, files=files, source=str(root))


def split(n: int, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, each sorted: the last ``val_size`` of a seeded permutation are
    validation (the same split for the same ``n``, ``val_size`` and ``seed`` everywhere).

    Raises:
        DataError: ``val_size`` is negative or leaves no training image.
    """
    if not 0 <= val_size < n:
        raise DataError(f"val_size={val_size} must be between 0 and {n - 1} for {n} images")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n - val_size]), np.sort(perm[n - val_size:])


@dataclass(frozen=True)
class LabelledImages:
    """Images in memory with their labels, and where they came from."""

    images: np.ndarray  # N,H,W,3 uint8 RGB
    labels: np.ndarray  # int64 (N,)
    source: str  # the path read


def load_labelled(path: str | os.PathLike | None = None, holdout: int | None = None,
                  seed: int = 0) -> LabelledImages:
    """Every image of ``path`` (default: the sample shipped with the package) in memory.

    ``holdout`` keeps only the last ``holdout`` of the seeded permutation of :func:`split`:
    the validation split `ranet-edge train --val-size N` held out.

    Raises:
        DataError: no ``path`` and no shipped sample, a dataset that cannot be read,
            ``holdout`` larger than the dataset, or no images.
    """
    if path is None:
        from .assets import SAMPLE_IMAGES

        if not SAMPLE_IMAGES.exists():
            raise DataError("no --data given and this install ships no sample images; pass --data PATH")
        path = SAMPLE_IMAGES
    path = str(path)
    ds = open_dataset(path)
    if holdout is not None and holdout > len(ds):
        raise DataError(f"--holdout {holdout} is more than the {len(ds)} images of {path}; "
                        f"give at most {len(ds)}")
    if holdout is not None and holdout < len(ds):  # every image when it names them all
        _, idx = split(len(ds), holdout, seed)
        ds = ds.subset(idx)
    if len(ds) == 0:
        raise DataError(f"{path} holds no images")
    ds = ds.materialize() if ds.arrays is None and len(ds) <= 60000 else ds
    images = ds.arrays if ds.arrays is not None else np.stack(ds.images(range(len(ds))))
    return LabelledImages(images, ds.labels, path)


def split_val(n: int, val_size: int | None, seed: int = 0, need_eval: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(fit, evaluate) indices, each sorted: ``val_size`` images (default half) of a seeded
    permutation fit thresholds, the rest evaluate (at least one when ``need_eval``).

    Raises:
        DataError: ``val_size`` is below 1, above ``n``, or leaves nothing to evaluate when
            ``need_eval``.
    """
    size = n // 2 if val_size is None else val_size
    if not (1 <= size <= n) or (need_eval and size >= n):
        raise DataError(f"--val-size {size} must be between 1 and {n - 1 if need_eval else n} for {n} images")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    return np.sort(perm[:size]), np.sort(perm[size:])
