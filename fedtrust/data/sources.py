"""Readers for the on-disk formats of the supported data sets.

Every reader returns a :class:`RawSplit`: ``(N, H, W, C)`` uint8 images and int64
labels, exactly as stored. The formats are

* CIFAR-10, ``cifar-10-batches-py/``: pickled dicts ``data_batch_1`` .. ``data_batch_5``
  and ``test_batch`` with ``b"data"``, an ``(N, 3072)`` uint8 array whose rows are
  the red, green and blue 32x32 planes in turn, and ``b"labels"``;
* CIFAR-100, ``cifar-100-python/``: pickled dicts ``train`` and ``test`` with
  ``b"data"`` as above and ``b"fine_labels"`` (the 100 classes);
* MNIST and Fashion-MNIST: IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
  gzipped (``.gz``) or not, in a folder or in torchvision's ``MNIST/raw/`` and
  ``FashionMNIST/raw/``;
* an image folder in torchvision's ``ImageFolder`` layout (one sub-folder per class);
* the Hugging Face hub (``datasets.load_dataset``), when it can be reached.

The pickles are read with an unpickler that only builds NumPy arrays, so a
tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import socket
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


class DataNotFoundError(FileNotFoundError):
    """A data set is in none of the places looked in; the message says how to get it."""


class CorruptDataError(ValueError):
    """A data file exists but is not in the expected format (the message names the file)."""


class HubUnavailableError(RuntimeError):
    """The Hugging Face hub could not be used (offline, unreachable or the load failed)."""


SPLITS = ("train", "test")


@dataclass(frozen=True)
class RawSplit:
    """Images and labels of one split, as read from disk.

    Attributes
    ----------
    images:
        ``(N, H, W, C)`` uint8.
    labels:
        ``(N,)`` int64.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, C) uint8, got {self.images.shape} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {self.labels.shape}")


def check_split(split: str) -> str:
    """Return ``split`` if it is ``"train"`` or ``"test"``, else raise ValueError."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; allowed: {', '.join(SPLITS)}")
    return split


# ------------------------------------------------------------------------ pickles
def _multiarray():
    """NumPy's ``multiarray`` module (``numpy._core`` in NumPy 2, ``numpy.core`` before)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays, nothing else."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "_codecs":
            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        return getattr(_multiarray(), name)


def load_pickle(path: Path) -> dict:
    """Read a CIFAR batch pickle (Python 2 or 3, keys as bytes).

    Raises
    ------
    CorruptDataError
        If the file is not such a pickle.
    """
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CorruptDataError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def cifar_rows_to_images(data: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """CIFAR rows ``(N, 3072)`` (R plane, G plane, B plane, each 32x32 row-major) to ``(N, 32, 32, 3)``."""
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(f"{path}: b'data' must be (N, 3072) uint8, got {data.shape} {data.dtype}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> RawSplit:
    batch = load_pickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            raise CorruptDataError(f"{path}: key {key!r} is missing (keys: {sorted(batch)})")
    images = cifar_rows_to_images(batch[b"data"], path)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise CorruptDataError(f"{path}: {images.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDataError(f"{path}: labels must be in 0..{num_classes - 1}, "
                               f"got {labels.min()}..{labels.max()}")
    return RawSplit(images, labels)


def _concat(parts: Sequence[RawSplit]) -> RawSplit:
    return RawSplit(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = {"train": ("train",), "test": ("test",)}


def _find_batches(root: Path, folder: str, files: dict[str, tuple[str, ...]], split: str) -> Path | None:
    for cand in (root / folder, root):
        if all((cand / f).is_file() for f in files[split]):
            return cand
    return None


def find_cifar10(root: Path, split: str) -> Path | None:
    """The ``cifar-10-batches-py`` folder under ``root`` (or ``root`` itself) holding ``split``, or None."""
    return _find_batches(root, CIFAR10_DIR, CIFAR10_FILES, check_split(split))


def find_cifar100(root: Path, split: str) -> Path | None:
    """The ``cifar-100-python`` folder under ``root`` (or ``root`` itself) holding ``split``, or None."""
    return _find_batches(root, CIFAR100_DIR, CIFAR100_FILES, check_split(split))


def read_cifar10(folder: Path, split: str) -> RawSplit:
    """Read a split of CIFAR-10 from a ``cifar-10-batches-py`` folder (5 train batches or ``test_batch``)."""
    return _concat([_cifar_batch(folder / f, b"labels", 10) for f in CIFAR10_FILES[check_split(split)]])


def read_cifar100(folder: Path, split: str) -> RawSplit:
    """Read a split of CIFAR-100 (fine labels) from a ``cifar-100-python`` folder."""
    return _concat([_cifar_batch(folder / f, b"fine_labels", 100) for f in CIFAR100_FILES[check_split(split)]])


# ---------------------------------------------------------------------------- IDX
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorruptDataError(f"{path}: not a valid gzip file ({type(e).__name__}: {e})") from e


def parse_idx(raw: bytes, expected_magic: int, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes of unsigned bytes (magic ``0x0801`` labels or ``0x0803`` images).

    Parameters
    ----------
    raw:
        The whole (uncompressed) file.
    expected_magic:
        :data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`.
    source:
        Name used in error messages.

    Raises
    ------
    CorruptDataError
        On a wrong magic number or a size that does not match the header.
    """
    if len(raw) < 4:
        raise CorruptDataError(f"{source}: {len(raw)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise CorruptDataError(f"{source}: IDX magic number is 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError(f"{source}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise CorruptDataError(f"{source}: IDX header says dims {dims} ({expected} bytes) "
                               f"but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw); see :func:`parse_idx`."""
    return parse_idx(_read_bytes(path), expected_magic, str(path))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array of 1 or 3 dimensions as an IDX file, gzipped if ``path`` ends in ``.gz``.

    Gzip output is reproducible (no file name or time stamp in the header).
    """
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"IDX writer takes uint8 arrays of 1 or 3 dims, got {array.shape} {array.dtype}")
    data = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape) + array.tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                      compresslevel=9, mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            cand = folder / (name + suffix)
            if cand.is_file():
                return cand
    return None


def idx_candidates(root: Path, name: str) -> tuple[Path, ...]:
    """Folders searched for the IDX files of ``name`` (``mnist`` or ``fashion-mnist``) under ``root``."""
    raw = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    return (root, root / raw / "raw")


def find_idx(root: Path, name: str, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of a split under ``root``, or None when they are not there."""
    prefix = _IDX_PREFIX[check_split(split)]
    for folder in idx_candidates(root, name):
        images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            return images, labels
    return None


def read_idx_split(images_path: Path, labels_path: Path, num_classes: int = 10) -> RawSplit:
    """Read an images file and a labels file (IDX) as a :class:`RawSplit` with one channel."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise CorruptDataError(f"{images_path} has {images.shape[0]} images but {labels_path} "
                               f"has {labels.shape[0]} labels")
    if labels.size and labels.max() >= num_classes:
        raise CorruptDataError(f"{labels_path}: labels must be in 0..{num_classes - 1}, got max {labels.max()}")
    return RawSplit(np.ascontiguousarray(images[..., None]), labels)


# ------------------------------------------------------------------- image folder
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def list_image_folder(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders) and ``(file, label)`` pairs of an ImageFolder tree.

    Files are found recursively in each class folder, sorted, with the extensions of
    torchvision's ``ImageFolder``; hidden files and folders are skipped.

    Raises
    ------
    DataNotFoundError
        If ``root`` is not a folder, has no class sub-folders, or a class has no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist. Expected {root}/<class>/<image>.png, "
                                "one sub-folder per class (torchvision ImageFolder layout)")
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise DataNotFoundError(f"image folder {root} has no class sub-folders. Expected "
                                f"{root}/<class>/<image>.png (torchvision ImageFolder layout)")
    items: list[tuple[Path, int]] = []
    empty = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            empty.append(cls)
        items.extend((f, label) for f in files)
    if empty:
        raise DataNotFoundError(f"image folder {root}: no image ({', '.join(IMG_EXTENSIONS)}) in class "
                                f"folder(s) {', '.join(empty)}")
    return classes, items


def read_images(paths: Sequence[Path], image_size: int) -> np.ndarray:
    """Read image files, resized to ``image_size`` x ``image_size`` (bilinear).

    All grayscale images give ``(N, S, S, 1)``; if any image has colour, every image
    is RGB, ``(N, S, S, 3)`` (grayscale ones replicated over the channels).

    Raises
    ------
    CorruptDataError
        If a file is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if img.mode in GRAY_MODES else "RGB")
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise CorruptDataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if not arrays:
        raise ValueError("read_images needs at least one path")
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[..., None]
    return np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays])


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-stratified train/test split of ``range(len(labels))``.

    Each class puts ``round(test_fraction * n)`` of its ``n`` items in the test split
    (keeping at least one in train); both splits are returned in a seeded random order.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = min(int(round(test_fraction * idx.size)), idx.size - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@dataclass(frozen=True)
class FolderData:
    """An image folder read as train and test splits."""

    class_names: tuple[str, ...]
    train: RawSplit
    test: RawSplit


def read_image_folder(root: Path, image_size: int = 32, test_fraction: float = 0.2,
                      seed: int = 0) -> FolderData:
    """Read an ImageFolder tree as train and test splits.

    Parameters
    ----------
    root:
        Either ``root/<class>/...`` (split here, seeded and stratified,
        ``test_fraction`` to test) or ``root/train/<class>/...`` with
        ``root/test/<class>/...`` (used as given, in file order; the classes are
        those of ``train/``).
    image_size:
        Images are resized to this square size.
    test_fraction, seed:
        The split of a tree without ``train/`` and ``test/``.
    """
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, train_items = list_image_folder(root / "train")
        test_classes, test_items = list_image_folder(root / "test")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise CorruptDataError(f"{root}/test has class folders that {root}/train lacks: {', '.join(unknown)}")
        remap = {i: classes.index(c) for i, c in enumerate(test_classes)}
        test_items = [(p, remap[label]) for p, label in test_items]
        train_images = read_images([p for p, _ in train_items], image_size)
        test_images = read_images([p for p, _ in test_items], image_size)
        if train_images.shape[-1] != test_images.shape[-1]:
            # One split has colour: make both RGB.
            train_images, test_images = (np.repeat(x, 3, axis=3) if x.shape[-1] == 1 else x
                                         for x in (train_images, test_images))
        return FolderData(classes,
                          RawSplit(train_images, np.array([y for _, y in train_items], dtype=np.int64)),
                          RawSplit(test_images, np.array([y for _, y in test_items], dtype=np.int64)))
    classes, items = list_image_folder(root)
    images = read_images([p for p, _ in items], image_size)
    labels = np.array([y for _, y in items], dtype=np.int64)
    train_idx, test_idx = split_indices(labels, test_fraction, seed)
    return FolderData(classes, RawSplit(images[train_idx], labels[train_idx]),
                      RawSplit(images[test_idx], labels[test_idx]))


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """Resize ``(N, H, W, C)`` uint8 images to ``image_size`` squared (bilinear); a no-op at that size."""
    from PIL import Image

    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((images.shape[0], image_size, image_size, images.shape[3]), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(pil.resize((image_size, image_size), Image.Resampling.BILINEAR)).reshape(out.shape[1:])
    return out


# ----------------------------------------------------------------------------- hub
HUB_IDS = {
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "mnist": "ylecun/mnist",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
}
HUB_LABEL_COLUMNS = {"cifar100": "fine_label"}
HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "ON", "YES", "TRUE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_offline_env() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) is set to a true value now."""
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hf_cache_dirs(hub_id: str) -> tuple[Path, Path]:
    """Where a hub dataset would be cached: the hub download cache and the ``datasets`` cache.

    Follows ``HF_HUB_CACHE``, ``HF_DATASETS_CACHE``, ``HF_HOME`` and ``XDG_CACHE_HOME`` as
    ``huggingface_hub`` and ``datasets`` do, without importing them (which takes seconds).
    """
    home_env = os.environ.get("HF_HOME")
    if home_env:
        home = Path(home_env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        home = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface"
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub")
    ds = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    return (hub.expanduser() / f"datasets--{hub_id.replace('/', '--')}",
            ds.expanduser() / hub_id.replace("/", "___"))


def probe_hub(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Check within ``timeout`` seconds that the hub endpoint accepts a TCP connection.

    Name resolution is covered by the timeout too (the probe runs in a daemon thread).

    Returns
    -------
    None when reachable (or a proxy is configured, which the probe cannot judge),
    else the reason it is not.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    outcome: dict[str, BaseException | bool] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as e:
            outcome["error"] = e

    thread = threading.Thread(target=connect, name="fedtrust-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    err = outcome.get("error")
    return f"cannot reach {host}:{port} ({err})" if err else f"no answer from {host}:{port} within {timeout:g} s"


def hub_to_raw(ds, name: str) -> RawSplit:
    """Convert a Hugging Face ``datasets.Dataset`` with an image column to a :class:`RawSplit`.

    The image column is the one whose feature is ``datasets.Image``; the label column
    is ``fine_label`` for CIFAR-100 and ``label`` otherwise.
    """
    import datasets

    image_cols = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
    label_col = HUB_LABEL_COLUMNS.get(name, "label")
    if not image_cols or label_col not in ds.features:
        raise CorruptDataError(f"hub dataset for {name!r} has columns {list(ds.features)}; expected an "
                               f"image column and {label_col!r}")
    images, labels = [], []
    for batch in ds.select_columns([image_cols[0], label_col]).with_format("numpy").iter(batch_size=2048):
        images.extend(np.asarray(img, dtype=np.uint8) for img in batch[image_cols[0]])
        labels.append(np.asarray(batch[label_col], dtype=np.int64))
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return RawSplit(np.ascontiguousarray(stacked), np.concatenate(labels))


def read_hub(name: str, split: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> RawSplit:
    """Load a split from the Hugging Face hub with ``datasets.load_dataset``.

    With ``HF_HUB_OFFLINE=1`` only the local Hugging Face cache is used. Otherwise the
    endpoint is probed first (``timeout`` seconds), so an offline machine fails fast.

    Raises
    ------
    HubUnavailableError
        Offline, unreachable, or the load failed (the message says which).
    """
    check_split(split)
    if name not in HUB_IDS:
        raise HubUnavailableError(f"{name!r} has no hub dataset")
    hub_id = HUB_IDS[name]
    if hub_offline_env():
        cached = hf_cache_dirs(hub_id)
        if not any(p.is_dir() for p in cached):
            raise HubUnavailableError(f"HF_HUB_OFFLINE is set and {hub_id!r} is not in the local Hugging Face "
                                      f"cache ({' or '.join(str(p) for p in cached)})")
        import datasets.config

        if not datasets.config.HF_HUB_OFFLINE:
            raise HubUnavailableError("HF_HUB_OFFLINE is set (after `datasets` was imported, so only "
                                      "the check here honours it): not going online")
    else:
        reason = probe_hub(timeout)
        if reason is not None:
            raise HubUnavailableError(reason)
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as e:
        raise HubUnavailableError(f"datasets.load_dataset({hub_id!r}, split={split!r}) failed: "
                                  f"{type(e).__name__}: {e}") from e
    return hub_to_raw(ds, name)

