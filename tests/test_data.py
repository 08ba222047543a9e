"""Torch-free dataset readers and preprocessing, on real files written to tmp_path."""
from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from ranet_edge.data import DataError, open_dataset, split
from ranet_edge.errors import InputError
from ranet_edge.runtime.preprocess import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessSpec,
    preprocess,
    read_image,
)

RED_RGB = (255, 0, 0)


def _solid(h, w, rgb):
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = rgb
    return image


def _write_rgb(path, image):
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


# --------------------------------------------------------------------------- ImageFolder
@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "folder"
    for name in ("cat", "ant", "bee"):
        (root / name).mkdir(parents=True)
    _write_rgb(root / "cat" / "1.png", _solid(16, 16, RED_RGB))
    _write_rgb(root / "cat" / "0.png", _solid(16, 16, (0, 255, 0)))
    _write_rgb(root / "ant" / "a.jpg", _solid(16, 16, (0, 0, 255)))
    _write_rgb(root / "bee" / "b.png", _solid(16, 16, (10, 20, 30)))
    (root / "bee" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    _write_rgb(root / ".cache" / "x.png", _solid(16, 16, RED_RGB))
    return root


def test_image_folder(image_folder):
    ds = open_dataset(image_folder)
    assert ds.classes == ["ant", "bee", "cat"]
    assert len(ds) == 4
    assert ds.labels.tolist() == [0, 1, 2, 2]
    assert ds.labels.dtype == np.int64
    assert [p.rsplit("/", 2)[-2:] for p in ds.files] == [["ant", "a.jpg"], ["bee", "b.png"],
                                                       ["cat", "0.png"], ["cat", "1.png"]]
    bee = ds.image(1)
    assert bee.dtype == np.uint8 and bee.shape == (16, 16, 3)
    assert (bee == (10, 20, 30)).all()  # PNG is lossless, channels in RGB order
    blue = ds.image(0).astype(int)  # JPEG: approximately blue
    assert blue[..., 2].min() > 200 and blue[..., :2].max() < 60


def test_read_image_returns_rgb(tmp_path):
    path = tmp_path / "red.png"
    assert cv2.imwrite(str(path), _solid(8, 8, (0, 0, 255)))  # BGR as cv2 writes it = red
    image = read_image(str(path))
    assert image.shape == (8, 8, 3)
    assert (image == RED_RGB).all()


def test_materialize_and_subset(image_folder):
    ds = open_dataset(image_folder)
    arrays = ds.materialize()
    assert arrays.arrays.shape == (4, 16, 16, 3)
    assert (arrays.arrays[3] == RED_RGB).all()
    sub = ds.subset(np.array([3, 1]))
    assert sub.labels.tolist() == [2, 1]
    assert (sub.image(0) == RED_RGB).all()


def test_materialize_refuses_mixed_sizes(image_folder):
    _write_rgb(image_folder / "cat" / "2.png", _solid(20, 16, RED_RGB))
    with pytest.raises(DataError, match="2.png"):
        open_dataset(image_folder).materialize()


def test_corrupt_image_names_the_file(image_folder):
    bad = image_folder / "ant" / "broken.jpg"
    bad.write_bytes(b"\x00garbage, not a jpeg" * 10)
    ds = open_dataset(image_folder)  # decoding is lazy
    index = ds.files.index(str(bad))
    with pytest.raises(DataError, match="broken.jpg"):
        ds.image(index)


def test_empty_image_file(image_folder):
    (image_folder / "ant" / "empty.png").write_bytes(b"")
    ds = open_dataset(image_folder)
    with pytest.raises(DataError, match="empty.png"):
        ds.image(ds.files.index(str(image_folder / "ant" / "empty.png")))


def test_folder_without_classes(tmp_path):
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(tmp_path)


def test_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        open_dataset(tmp_path)


# --------------------------------------------------------------------------- CIFAR batches
def _cifar_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _write_cifar10(folder, protocol=4):
    """The real CIFAR-10 python layout: rows are 1024 R, 1024 G, 1024 B values."""
    folder.mkdir(parents=True)
    images = [_cifar_images(5, 0), _cifar_images(3, 1)]
    labels = [[0, 1, 2, 3, 4], [5, 6, 9]]
    for k, (x, y) in enumerate(zip(images, labels, strict=True), start=1):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
        with open(folder / f"data_batch_{k}", "wb") as fh:
            pickle.dump({b"batch_label": b"training batch", b"labels": y, b"data": rows,
                         b"filenames": [b"f.png"] * len(y)}, fh, protocol=protocol)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}, fh,
                    protocol=protocol)
    return np.concatenate(images), sum(labels, [])


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = _write_cifar10(folder)
    for path in (folder, tmp_path):  # the batches folder itself, or its parent
        ds = open_dataset(path)
        assert len(ds) == 8
        assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10
        assert ds.labels.tolist() == labels
        assert ds.arrays.shape == (8, 32, 32, 3) and ds.arrays.dtype == np.uint8
        np.testing.assert_array_equal(ds.arrays, images)  # HWC RGB, not CHW
        np.testing.assert_array_equal(ds.image(6), images[6])


def test_cifar100_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = _cifar_images(4, 2)
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"fine_labels": [3, 0, 99, 5], b"coarse_labels": [0, 0, 1, 1],
                     b"data": x.transpose(0, 3, 1, 2).reshape(4, 3072)}, fh, protocol=4)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"a", b"b"]}, fh, protocol=4)
    ds = open_dataset(tmp_path)
    assert ds.labels.tolist() == [3, 0, 99, 5]
    assert ds.classes[99] == "c99" and len(ds.classes) == 100
    np.testing.assert_array_equal(ds.arrays, x)


@pytest.mark.parametrize("protocol", [5, 2])
def test_cifar_batches_written_by_python3_pickle(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    images, _ = _write_cifar10(folder, protocol=protocol)
    np.testing.assert_array_equal(open_dataset(folder).arrays, images)


def test_cifar_refuses_code_in_pickle(tmp_path):
    import os

    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "batches"
    folder.mkdir()
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": RunsCode(), b"labels": [0]}, fh)
    with pytest.raises(DataError, match="data_batch_1"):
        open_dataset(folder)
    assert not marker.exists()


# --------------------------------------------------------------------------- npz
def test_npz(tmp_path):
    x = _cifar_images(6, 3)
    y = np.array([0, 2, 1, 2, 0, 1])
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    ds = open_dataset(path)
    assert len(ds) == 6 and ds.classes == ["0", "1", "2"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == y.tolist()
    np.testing.assert_array_equal(ds.image(4), x[4])

    named = tmp_path / "named.npz"
    np.savez(named, x=x, y=y, classes=np.array(["cat", "dog", "eel"]))
    assert open_dataset(named).classes == ["cat", "dog", "eel"]


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((2, 8, 8, 3), np.float32), "y": np.zeros(2, np.int64)}, "uint8"),
    ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.zeros(2, np.int64)}, "uint8"),
    ({"x": np.zeros((2, 8, 8, 3), np.uint8)}, "needs arrays x"),
    ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros(3, np.int64)}, "integer labels"),
    ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros(2, np.float32)}, "integer labels"),
])
def test_bad_npz(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        open_dataset(path)


def test_npz_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(DataError):
        open_dataset(path)


def test_garbage_npz(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="garbage.npz"):
        open_dataset(path)


def test_missing_path_and_wrong_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    other = tmp_path / "data.csv"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match="not an .npz"):
        open_dataset(other)


# --------------------------------------------------------------------------- split
def test_split_is_deterministic_disjoint_and_sized():
    train, val = split(100, 20, seed=0)
    train2, val2 = split(100, 20, seed=0)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert len(val) == 20 and len(train) == 80
    assert set(train).isdisjoint(val)
    assert sorted(set(train) | set(val)) == list(range(100))
    assert list(train) == sorted(train) and list(val) == sorted(val)
    _, other = split(100, 20, seed=1)
    assert list(other) != list(val)
    train0, val0 = split(10, 0)
    assert len(val0) == 0 and list(train0) == list(range(10))


@pytest.mark.parametrize("val_size", [-1, 10, 11])
def test_split_bad_size(val_size):
    with pytest.raises(DataError, match="val_size"):
        split(10, val_size)


# --------------------------------------------------------------------------- preprocess
def test_cifar_normalisation_one_pixel():
    spec = PreprocessSpec.for_dataset("cifar10")
    assert (spec.size, spec.resize) == (32, None)
    image = np.zeros((32, 32, 3), np.uint8)
    image[5, 7] = (255, 0, 128)
    out = preprocess([image], spec)
    assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
    want = [(v / 255.0 - m) / s for v, m, s in zip((255, 0, 128), CIFAR10_MEAN, CIFAR10_STD, strict=True)]
    np.testing.assert_allclose(out[0, :, 5, 7], want, rtol=1e-5, atol=1e-5)
    zero = [(0 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)]
    np.testing.assert_allclose(out[0, :, 0, 0], zero, rtol=1e-5, atol=1e-5)
    # an NHWC uint8 batch of the right size gives the same numbers
    np.testing.assert_array_equal(preprocess(image[None], spec), out)


def test_cifar100_spec_uses_its_own_statistics():
    spec = PreprocessSpec.for_dataset("cifar100")
    out = preprocess([np.zeros((32, 32, 3), np.uint8)], spec)
    np.testing.assert_allclose(out[0, :, 0, 0], [-0.5071 / 0.2675, -0.4867 / 0.2565, -0.4408 / 0.2761],
                               rtol=1e-5)


def test_imagenet_resize_and_centre_crop():
    spec = PreprocessSpec.for_dataset("ImageNet")
    assert (spec.size, spec.resize) == (224, 256)
    image = _solid(300, 400, (124, 116, 104))
    out = preprocess([image, image], spec)
    assert out.shape == (2, 3, 224, 224) and out.dtype == np.float32
    want = [(v / 255.0 - m) / s for v, m, s in zip((124, 116, 104), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    np.testing.assert_allclose(out[1, :, 100, 100], want, rtol=1e-5, atol=1e-5)


def test_imagenet_crop_is_centred():
    # Left third red, right third blue of a 256x768 image: after resize (no-op height) the
    # 224 centre crop sees only the white middle.
    image = _solid(256, 768, (255, 255, 255))
    image[:, :256] = RED_RGB
    image[:, 512:] = (0, 0, 255)
    spec = PreprocessSpec.for_dataset("ImageNet")
    out = preprocess([image], spec)
    white = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    np.testing.assert_allclose(out[0].reshape(3, -1).min(axis=1), white, rtol=1e-5)


def test_spec_dict_round_trip():
    spec = PreprocessSpec.for_dataset("ImageNet")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_preprocess_rejects_bad_input():
    spec = PreprocessSpec.for_dataset("cifar10")
    with pytest.raises(InputError):
        preprocess([], spec)
    with pytest.raises(InputError):
        preprocess([np.zeros((32, 32, 3), np.float32)], spec)
    with pytest.raises(InputError):
        preprocess([np.zeros((32, 32), np.uint8)], spec)
