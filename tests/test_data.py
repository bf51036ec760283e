"""fedtrust.data: readers of the real on-disk formats, the sample, partitioning, normalisation.

Every loader reads files this test writes itself in exactly the published formats
(CIFAR pickles, IDX, an ImageFolder tree of PNGs), so nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedtrust.data import (
    PARTITIONER_NAMES,
    CorruptDataError,
    DataNotFoundError,
    ImageData,
    clear_cache,
    denormalize,
    get_spec,
    load_dataset,
    loading,
    normalize,
    partition_indices,
    sources,
    specs,
)
from fedtrust.data.make_sample import TEST_PER_CLASS, TRAIN_PER_CLASS

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------- file writers
def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the published (N, 3072) rows: R plane, G plane, B plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = RNG.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, per_batch)]
        write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels,
                                     b"data": cifar_rows(images),
                                     b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]})
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(images)
        out[split][1].append(np.array(labels))
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in specs.CIFAR10_CLASSES],
                                           b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in out.items()}


def write_idx_file(path: Path, array: np.ndarray) -> None:
    """An IDX file written here from the format's definition (big-endian header, then bytes)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_like(folder: Path, gz: bool, n_train: int = 7, n_test: int = 5) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n).astype(np.uint8)
        write_idx_file(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx_file(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out[split] = (images, labels)
    return out


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_cache()
    yield
    clear_cache()


# ------------------------------------------------------------------------ CIFAR
def test_cifar10_rows_map_to_hwc_with_red_plane_first(tmp_path):
    written = write_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", data_dir=str(tmp_path))
    test = load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert train.images.shape == (15, 32, 32, 3) and test.images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(train.images, written["train"][0])
    np.testing.assert_array_equal(train.labels, written["train"][1])
    np.testing.assert_array_equal(test.images, written["test"][0])
    np.testing.assert_array_equal(test.labels, written["test"][1])
    assert train.labels.dtype == np.int64
    # The channel order, checked against raw row positions of the file itself.
    with (tmp_path / "cifar-10-batches-py" / "data_batch_1").open("rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    row = raw[b"data"][0]
    img = train.images[0]
    assert img[0, 1, 0] == row[1]                 # R plane first, row-major
    assert img[0, 0, 1] == row[1024]              # then G
    assert img[1, 0, 2] == row[2048 + 32]         # then B; second image row
    assert img[31, 31, 2] == row[3071]
    assert train.spec == get_spec("cifar10")


def test_cifar10_single_colour_image_keeps_its_colour():
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    rows = cifar_rows(red)
    assert rows[0, :1024].min() == 255 and rows[0, 1024:].max() == 0
    np.testing.assert_array_equal(sources.cifar_rows_to_images(rows), red)


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = {}
    for split, n in (("train", 6), ("test", 4)):
        images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = [99, 0, 57, 3, 42, 98][:n]
        write_pickle(folder / split, {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(),
                                      b"fine_labels": fine, b"coarse_labels": [19] * n,
                                      b"data": cifar_rows(images)})
        data[split] = (images, np.array(fine))
    write_pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in specs.CIFAR100_CLASSES]})
    for split in ("train", "test"):
        loaded = load_dataset("cifar100", split, data_dir=str(tmp_path))
        np.testing.assert_array_equal(loaded.images, data[split][0])
        np.testing.assert_array_equal(loaded.labels, data[split][1])
        assert loaded.spec.num_classes == 100
    assert list(specs.CIFAR100_CLASSES) == sorted(specs.CIFAR100_CLASSES)
    assert len(set(specs.CIFAR100_CLASSES)) == 100


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_pickle(folder / name, {b"data": Evil(), b"labels": []})
    with pytest.raises(CorruptDataError, match="refusing to unpickle"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


def test_cifar_wrong_shape_raises(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_pickle(folder / "test_batch", {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(CorruptDataError, match="3072"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


# -------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_in_torchvision_layout(tmp_path, gz):
    written = write_mnist_like(tmp_path / "MNIST" / "raw", gz=gz)
    for split in ("train", "test"):
        data = load_dataset("mnist", split, data_dir=str(tmp_path))
        assert data.images.shape == (len(written[split][0]), 28, 28, 1)
        np.testing.assert_array_equal(data.images[..., 0], written[split][0])
        np.testing.assert_array_equal(data.labels, written[split][1].astype(np.int64))
        assert data.spec == get_spec("mnist")


def test_fashion_mnist_idx_directly_in_folder(tmp_path):
    written = write_mnist_like(tmp_path, gz=True)
    data = load_dataset("fashion-mnist", "test", data_dir=str(tmp_path))
    np.testing.assert_array_equal(data.images[..., 0], written["test"][0])
    np.testing.assert_array_equal(data.labels, written["test"][1])
    assert data.spec.class_names[9] == "Ankle boot"


def test_fashion_mnist_in_its_torchvision_folder_not_mnist_one(tmp_path):
    fashion = write_mnist_like(tmp_path / "FashionMNIST" / "raw", gz=False)
    write_mnist_like(tmp_path / "MNIST" / "raw", gz=False)
    data = load_dataset("fashion-mnist", "train", data_dir=str(tmp_path))
    np.testing.assert_array_equal(data.images[..., 0], fashion["train"][0])


def test_write_idx_round_trips_and_is_reproducible(tmp_path):
    images = RNG.integers(0, 256, (4, 5, 6), dtype=np.uint8)
    sources.write_idx(tmp_path / "a.gz", images)
    first = (tmp_path / "a.gz").read_bytes()
    sources.write_idx(tmp_path / "a.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == first
    np.testing.assert_array_equal(sources.read_idx(tmp_path / "a.gz", sources.IDX_IMAGES_MAGIC), images)


@pytest.mark.parametrize("damage", ["magic", "truncated", "labels-as-images", "not-gzip", "count-mismatch"])
def test_corrupt_idx_raises(tmp_path, damage):
    write_mnist_like(tmp_path, gz=False, n_train=4)
    images_path = tmp_path / "train-images-idx3-ubyte"
    raw = images_path.read_bytes()
    if damage == "magic":
        images_path.write_bytes(b"\x00\x00\x08\x04" + raw[4:])
    elif damage == "truncated":
        images_path.write_bytes(raw[:-10])
    elif damage == "labels-as-images":
        images_path.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    elif damage == "not-gzip":
        images_path.unlink()
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    else:
        write_idx_file(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(CorruptDataError):
        load_dataset("mnist", "train", data_dir=str(tmp_path))


# ------------------------------------------------------------------ image folder
def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_round_trip_and_seeded_split(tmp_path):
    root = tmp_path / "tree"
    originals = {}
    for cls in ("cat", "dog", "emu"):
        for i in range(10):
            img = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            _write_png(root / cls / f"{i:02d}.png", img)
            originals[img.tobytes()] = ("cat", "dog", "emu").index(cls)
    (root / "cat" / "notes.txt").write_text("not an image")
    train = load_dataset(f"folder:{root}", "train")
    test = load_dataset(f"folder:{root}", "test")
    assert (len(train), len(test)) == (24, 6)
    assert np.bincount(test.labels).tolist() == [2, 2, 2]
    assert train.spec.class_names == ("cat", "dog", "emu") and train.spec.channels == 3
    assert train.spec.image_size == 32 and test.spec == train.spec
    seen = set()
    for data in (train, test):
        for img, label in zip(data.images, data.labels):
            assert originals[img.tobytes()] == label  # exact pixels and label
            seen.add(img.tobytes())
    assert len(seen) == 30
    mean = train.images.reshape(-1, 3).mean(axis=0) / 255.0
    np.testing.assert_allclose(train.spec.mean, mean, rtol=1e-9)
    # Deterministic: a fresh read gives the same split.
    clear_cache()
    again = load_dataset(f"folder:{root}", "test")
    np.testing.assert_array_equal(again.images, test.images)


def test_image_folder_grayscale_resized_and_given_splits(tmp_path):
    root = tmp_path / "gray"
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                size = (20 + 7 * i, 40)
                _write_png(root / split / cls / f"{i}.png", RNG.integers(0, 256, size, dtype=np.uint8))
    flat = np.full((16, 16), 200, np.uint8)
    _write_png(root / "test" / "b" / "flat.png", flat)
    train = load_dataset(f"folder:{root}", "train", image_size=16)
    test = load_dataset(f"folder:{root}", "test", image_size=16)
    assert train.images.shape == (6, 16, 16, 1) and test.images.shape == (3, 16, 16, 1)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]  # given split, in file order
    assert test.labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(test.images[2, ..., 0], flat)  # 16x16 kept exactly
    assert train.spec.channels == 1 and len(train.spec.mean) == 1


def test_image_folder_mixed_colour_becomes_rgb(tmp_path):
    root = tmp_path / "mixed"
    gray = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    _write_png(root / "a" / "0.png", gray)
    _write_png(root / "b" / "0.png", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    images = sources.read_images(sorted(root.rglob("*.png")), 8)
    assert images.shape == (2, 8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(images[0, ..., c], gray)


def test_image_folder_missing_or_empty_raises(tmp_path):
    with pytest.raises(DataNotFoundError, match="ImageFolder"):
        load_dataset(f"folder:{tmp_path / 'absent'}", "train")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="cls"):
        load_dataset(f"folder:{tmp_path / 'empty'}", "train")


# ----------------------------------------------------------------------- sample
def test_sample_loads_offline_balanced_and_real(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = load_dataset("sample", "train")
    test = load_dataset("sample", "test")
    assert train.images.shape == (10 * TRAIN_PER_CLASS, 28, 28, 1)
    assert test.images.shape == (10 * TEST_PER_CLASS, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [TRAIN_PER_CLASS] * 10
    assert np.bincount(test.labels).tolist() == [TEST_PER_CLASS] * 10
    assert train.spec.num_classes == 10 and train.spec.channels == 1
    assert train.images.std() > 50 and len(np.unique(train.images)) > 200
    assert len({img.tobytes() for img in train.images}) == len(train)  # no duplicates
    assert not np.array_equal(train.labels[:50], np.sort(train.labels[:50]))  # shuffled order
    mean, std = specs.channel_stats(train.images)
    np.testing.assert_allclose(train.spec.mean, mean, atol=5e-5)
    np.testing.assert_allclose(train.spec.std, std, atol=5e-5)


def test_sample_found_through_installed_distribution(tmp_path, monkeypatch):
    repo = Path(loading.__file__).resolve().parents[2]

    class FakeDist:
        def read_text(self, name):
            return json.dumps({"url": repo.as_uri(), "dir_info": {"editable": True}}) \
                if name == "direct_url.json" else None

        def locate_file(self, path):
            return tmp_path / "site-packages" / path

    monkeypatch.setattr(loading.importlib.metadata, "distribution", lambda name: FakeDist())
    candidates = loading.sample_dir_candidates()
    assert candidates[1] == repo / "fedtrust" / "data" / "sample"
    assert candidates[2] == tmp_path / "site-packages" / "fedtrust" / "data" / "sample"
    # As in an unpacked Flower App bundle: nothing next to the module.
    assert loading.find_sample_dir([tmp_path / "bundle", *candidates[1:]]) == candidates[1]
    with pytest.raises(DataNotFoundError, match="make_sample"):
        loading.find_sample_dir([tmp_path / "bundle", candidates[2]])


def test_installed_fashion_mnist_package_is_used(monkeypatch, tmp_path):
    system = loading.DEBIAN_FASHION_MNIST_DIR
    if not (system / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    monkeypatch.setenv("HOME", str(tmp_path))
    test = load_dataset("fashion-mnist", "test")
    assert len(test) == 10_000 and np.bincount(test.labels).tolist() == [1000] * 10


def test_resize_builtin(monkeypatch):
    data = load_dataset("sample", "test", image_size=32)
    assert data.images.shape == (1000, 32, 32, 1) and data.spec.image_size == 32
    assert load_dataset("sample", "test").spec.image_size == 28


# -------------------------------------------------------------------- not found
@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loading, "SYSTEM_DIRS", {})
    return home


@pytest.mark.parametrize("name,layout,hub_id", [
    ("cifar10", "<data-dir>/cifar-10-batches-py/", "uoft-cs/cifar10"),
    ("cifar100", "<data-dir>/cifar-100-python/", "uoft-cs/cifar100"),
    ("mnist", "<data-dir>/MNIST/raw/", "ylecun/mnist"),
    ("fashion-mnist", "<data-dir>/FashionMNIST/raw/", "zalando-datasets/fashion_mnist"),
])
def test_missing_data_says_how_to_get_it(offline_home, tmp_path, name, layout, hub_id):
    empty = tmp_path / "empty"
    empty.mkdir()
    t0 = time.perf_counter()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, "train", data_dir=str(empty))
    assert time.perf_counter() - t0 < 5.0
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert layout in message and hub_id in message and str(empty) in message
    assert str(offline_home / ".cache" / "fedtrust" / "data") in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")


def test_data_dir_that_does_not_exist(offline_home, tmp_path):
    with pytest.raises(DataNotFoundError, match="is not a folder") as info:
        load_dataset("cifar10", "test", data_dir=str(tmp_path / "nope"))
    assert "torchvision.datasets.CIFAR10(root='<data-dir>', download=True)" in str(info.value)


def test_cache_folder_is_searched(offline_home):
    written = write_mnist_like(offline_home / ".cache" / "fedtrust" / "data" / "MNIST" / "raw", gz=True)
    data = load_dataset("mnist", "test")
    np.testing.assert_array_equal(data.labels, written["test"][1])


def test_unreachable_hub_fails_fast(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", *sources._PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(sources.HubUnavailableError, match="127.0.0.1:9"):
        sources.read_hub("cifar10", "train", timeout=2.0)
    assert time.perf_counter() - t0 < 4.0


def test_hub_rows_convert_to_arrays():
    import datasets

    rgb = RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ds = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in rgb], "fine_label": [5, 99, 0], "coarse_label": [1, 2, 3]},
        features=datasets.Features({"img": datasets.Image(), "fine_label": datasets.Value("int64"),
                                    "coarse_label": datasets.Value("int64")}))
    raw = sources.hub_to_raw(ds, "cifar100")
    np.testing.assert_array_equal(raw.images, rgb)
    assert raw.labels.tolist() == [5, 99, 0]
    gray = RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in gray], "label": [7, 1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    raw = sources.hub_to_raw(ds, "mnist")
    np.testing.assert_array_equal(raw.images[..., 0], gray)


def test_bad_names_raise_value_error():
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("sample", "validation")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("sample", "train", image_size=0)


# ------------------------------------------------------------------ ImageData
def test_loads_are_cached_and_read_only():
    a = load_dataset("sample", "train")
    assert load_dataset("sample", "train") is a
    with pytest.raises(ValueError):
        a.images[0, 0, 0, 0] = 1
    sub = a.subset([3, 1])
    np.testing.assert_array_equal(sub.images, a.images[[3, 1]])
    assert len(sub) == 2 and sub.spec is a.spec


def test_to_tensors_normalises_and_denormalize_inverts():
    data = load_dataset("sample", "test")
    idx = np.array([0, 5, 999])
    x, y = data.to_tensors(idx)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == data.labels[idx].tolist()
    expected = (data.images[idx].transpose(0, 3, 1, 2) / 255.0 - data.spec.mean[0]) / data.spec.std[0]
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    pixels = data.denormalize(x)
    np.testing.assert_array_equal(torch.round(pixels * 255).to(torch.uint8).numpy(),
                                  data.images[idx].transpose(0, 3, 1, 2))
    full_x, full_y = data.to_tensors()
    assert full_x.shape[0] == len(data) == full_y.shape[0]
    assert abs(float(full_x.mean())) < 0.2  # roughly centred


def test_normalize_round_trip_rgb():
    spec = get_spec("cifar10")
    x = torch.rand(4, 3, 8, 8)
    z = normalize(x, spec)
    assert torch.allclose(z[:, 0], (x[:, 0] - 0.4914) / 0.2470)
    assert torch.allclose(denormalize(z, spec), x, atol=1e-6)
    assert float(denormalize(z * 10, spec, clamp=True).max()) <= 1.0
    with pytest.raises(ValueError, match="3, H, W"):
        normalize(torch.rand(2, 1, 8, 8), spec)


def test_image_data_validates():
    spec = get_spec("mnist")
    with pytest.raises(ValueError, match="channels"):
        ImageData(np.zeros((2, 28, 28, 3), np.uint8), np.zeros(2, np.int64), spec)
    with pytest.raises(ValueError, match="labels"):
        ImageData(np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 10]), spec)


# ------------------------------------------------------------------ partitions
@pytest.fixture(scope="module")
def train_labels():
    return np.asarray(load_dataset("sample", "train").labels)


@pytest.mark.parametrize("partitioner", PARTITIONER_NAMES)
def test_partitions_are_disjoint_cover_and_deterministic(train_labels, partitioner):
    parts = [partition_indices(train_labels, 7, i, partitioner=partitioner, alpha=0.5, seed=3)
             for i in range(7)]
    joined = np.concatenate(parts)
    assert joined.size == train_labels.size
    assert np.array_equal(np.sort(joined), np.arange(train_labels.size))
    assert all(p.dtype == np.int64 and p.size > 0 for p in parts)
    clear_cache()
    again = partition_indices(train_labels.copy(), 7, 4, partitioner=partitioner, alpha=0.5, seed=3)
    np.testing.assert_array_equal(again, parts[4])
    other = partition_indices(train_labels, 7, 4, partitioner=partitioner, alpha=0.5, seed=4)
    assert not np.array_equal(other, parts[4])


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Largest total-variation distance between a partition's label distribution and the global one."""
    k = labels.max() + 1
    overall = np.bincount(labels, minlength=k) / labels.size
    return max(0.5 * np.abs(np.bincount(labels[p], minlength=k) / p.size - overall).sum() for p in parts)


def test_dirichlet_is_non_iid_and_iid_is_balanced(train_labels):
    iid = [partition_indices(train_labels, 5, i) for i in range(5)]
    dirichlet = [partition_indices(train_labels, 5, i, partitioner="dirichlet", alpha=0.1) for i in range(5)]
    assert sorted(p.size for p in iid) == [600] * 5
    assert _label_skew(train_labels, iid) < 0.1
    assert _label_skew(train_labels, dirichlet) > 0.4
    assert len({p.size for p in dirichlet}) > 1


def test_single_partition_is_everything(train_labels):
    only = partition_indices(train_labels, 1, 0)
    assert np.array_equal(np.sort(only), np.arange(train_labels.size))


@pytest.mark.parametrize("kwargs,match", [
    ({"num_partitions": 0, "partition_id": 0}, "num_partitions"),
    ({"num_partitions": 3, "partition_id": 3}, "partition_id"),
    ({"num_partitions": 3, "partition_id": -1}, "partition_id"),
    ({"num_partitions": 3, "partition_id": 0, "partitioner": "dirichlet", "alpha": 0.0}, "alpha"),
    ({"num_partitions": 3, "partition_id": 0, "partitioner": "shards"}, "partitioner='shards'.*iid, dirichlet"),
    ({"num_partitions": 10_000, "partition_id": 0}, "num_partitions"),
    ({"num_partitions": 3, "partition_id": 0, "seed": -1}, "seed"),
    ({"num_partitions": 300, "partition_id": 0, "partitioner": "dirichlet", "alpha": 1e-4}, "larger alpha"),
])
def test_partition_arguments_are_validated(train_labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition_indices(train_labels, **kwargs)
