"""Load a split of a data set as :class:`ImageData`, from wherever it is.

``load_dataset(name, split, data_dir=None, image_size=None)`` looks, in order:

1. ``sample``: the embedded files (``fedtrust/data/sample/``), always;
2. ``folder:PATH``: the image folder ``PATH`` (see :func:`fedtrust.data.sources.read_image_folder`);
3. otherwise

   a. ``data_dir`` when given (it must be an existing folder),
   b. for Fashion-MNIST, the Debian package's ``/usr/share/datasets/fashion-mnist``,
   c. the cache folder ``~/.cache/fedtrust/data``,
   d. the Hugging Face hub (fails within seconds when offline),

   and raises :class:`DataNotFoundError`, saying how to get the data, if none has it.

Loads are cached per process, keyed by the arguments, because a Flower simulation
calls the ClientApp many times in one process. The cached arrays are read-only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch

from fedtrust.data.sources import (
    CIFAR10_DIR,
    CIFAR100_DIR,
    HUB_IDS,
    DataNotFoundError,
    HubUnavailableError,
    RawSplit,
    check_split,
    find_cifar10,
    find_cifar100,
    find_idx,
    read_cifar10,
    read_cifar100,
    read_hub,
    read_idx_split,
    read_image_folder,
    resize_images,
)
from fedtrust.data.specs import (
    BUILTIN_DATASETS,
    DATASET_NAMES,
    FOLDER_PREFIX,
    DatasetSpec,
    folder_spec,
    get_spec,
)

#: Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Folders searched after ``data_dir`` and before the cache, per dataset.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {"fashion-mnist": (DEBIAN_FASHION_MNIST_DIR,)}
SAMPLE_PACKAGE_DIR = "fedtrust/data/sample"
SAMPLE_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DEFAULT_FOLDER_IMAGE_SIZE = 32
FOLDER_TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 0
_CACHE_SIZE = 8


# ------------------------------------------------------------------ normalisation
def _stats(spec: DatasetSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 3 or x.shape[-3] != spec.channels:
        raise ValueError(f"expected (..., {spec.channels}, H, W) images for {spec.name!r}, got {tuple(x.shape)}")
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    mean = torch.tensor(spec.mean, dtype=dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=dtype, device=x.device).view(-1, 1, 1)
    return mean, std


def normalize(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Images in [0, 1], ``(..., C, H, W)``, to the model's input scale: ``(x - mean) / std``."""
    mean, std = _stats(spec, x)
    return (x - mean) / std


def denormalize(x: torch.Tensor, spec: DatasetSpec, clamp: bool = False) -> torch.Tensor:
    """Model inputs ``(..., C, H, W)`` back to pixel scale [0, 1]: ``x * std + mean``.

    Parameters
    ----------
    x:
        Normalised images.
    spec:
        Their dataset spec.
    clamp:
        Clip the result to [0, 1] (e.g. for a reconstruction that overshoots).
    """
    mean, std = _stats(spec, x)
    out = x * std + mean
    return out.clamp(0.0, 1.0) if clamp else out


# ---------------------------------------------------------------------- ImageData
@dataclass
class ImageData:
    """One split of a data set in memory.

    Attributes
    ----------
    images:
        ``(N, H, W, C)`` uint8 pixels.
    labels:
        ``(N,)`` int64 labels in ``0 .. spec.num_classes - 1``.
    spec:
        The dataset's classes, shape and normalisation.
    """

    images: np.ndarray
    labels: np.ndarray
    spec: DatasetSpec

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C) uint8, got {self.images.shape} {self.images.dtype}")
        if self.images.shape[-1] != self.spec.channels:
            raise ValueError(f"images have {self.images.shape[-1]} channels, spec {self.spec.name!r} "
                             f"says {self.spec.channels}")
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 of shape ({self.images.shape[0]},), "
                             f"got {self.labels.shape} {self.labels.dtype}")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.spec.num_classes):
            raise ValueError(f"labels must be in 0..{self.spec.num_classes - 1}, "
                             f"got {self.labels.min()}..{self.labels.max()}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageData:
        """The items at ``indices`` (a copy), with the same spec."""
        idx = _as_indices(indices, len(self))
        return ImageData(self.images[idx], self.labels[idx], self.spec)

    def to_tensors(self, indices: Sequence[int] | np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and targets.

        Parameters
        ----------
        indices:
            Items to take (all when None).

        Returns
        -------
        x:
            ``(n, C, H, W)`` float32, normalised with the spec's mean and std.
        y:
            ``(n,)`` int64 labels.
        """
        images, labels = self.images, self.labels
        if indices is not None:
            idx = _as_indices(indices, len(self))
            images, labels = images[idx], labels[idx]
        x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2).div_(255.0)
        return normalize(x, self.spec).contiguous(), torch.from_numpy(np.array(labels, dtype=np.int64))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`normalize` with this dataset's spec."""
        return normalize(x, self.spec)

    def denormalize(self, x: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """:func:`denormalize` with this dataset's spec."""
        return denormalize(x, self.spec, clamp=clamp)


def _as_indices(indices: Sequence[int] | np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D sequence of integers, got shape {idx.shape} {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"indices must be in 0..{n - 1}, got {idx.min()}..{idx.max()}")
    return idx


def _readonly(data: ImageData) -> ImageData:
    data.images.setflags(write=False)
    data.labels.setflags(write=False)
    return data


# ------------------------------------------------------------------------ where
def default_cache_dir() -> Path:
    """The per-user data folder searched when ``data_dir`` is not given: ``~/.cache/fedtrust/data``."""
    return Path.home() / ".cache" / "fedtrust" / "data"


def _direct_url_root(dist: importlib.metadata.Distribution) -> Path | None:
    """The source folder of a ``pip install -e`` / ``pip install <dir>`` from ``direct_url.json``."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        url = json.loads(text).get("url", "")
    except (json.JSONDecodeError, AttributeError):
        return None
    parsed = urlparse(url)
    return Path(url2pathname(parsed.path)) if parsed.scheme == "file" else None


def sample_dir_candidates() -> list[Path]:
    """Where the sample files may be: next to this module, then via the installed distribution.

    A Flower App bundle carries only source and text files, so a ``fedtrust`` imported
    from an unpacked bundle has no ``.gz`` files next to it; the installed distribution
    (editable: its source folder from ``direct_url.json``; normal: its package data) has.
    """
    candidates = [Path(__file__).resolve().parent / "sample"]
    try:
        dist = importlib.metadata.distribution("fedtrust")
    except importlib.metadata.PackageNotFoundError:
        return candidates
    root = _direct_url_root(dist)
    if root is not None:
        candidates.append(root / SAMPLE_PACKAGE_DIR)
    candidates.append(Path(str(dist.locate_file(SAMPLE_PACKAGE_DIR))))
    return candidates


def find_sample_dir(candidates: Sequence[Path] | None = None) -> Path:
    """The first folder holding all four sample files.

    Raises
    ------
    DataNotFoundError
        If none of the candidates has them.
    """
    candidates = sample_dir_candidates() if candidates is None else list(candidates)
    for folder in candidates:
        if all((folder / f).is_file() for f in SAMPLE_FILES):
            return folder
    raise DataNotFoundError(
        "the embedded sample (" + ", ".join(SAMPLE_FILES) + ") is in none of: "
        + ", ".join(str(c) for c in candidates)
        + ". Install fedtrust (pip install -e <repo>, or pip install <repo>) so its package data "
        "is present, or regenerate the files with `python -m fedtrust.data.make_sample`.")


def expected_layout(name: str) -> str:
    """The files ``name`` needs under a data folder, in words."""
    if name == "cifar10":
        return (f"<data-dir>/{CIFAR10_DIR}/ with data_batch_1 .. data_batch_5, test_batch and batches.meta, "
                "as made by `python -c \"import torchvision; torchvision.datasets.CIFAR10(root='<data-dir>', "
                "download=True)\"` (or by extracting cifar-10-python.tar.gz into <data-dir>)")
    if name == "cifar100":
        return (f"<data-dir>/{CIFAR100_DIR}/ with train, test and meta, as made by "
                "`python -c \"import torchvision; torchvision.datasets.CIFAR100(root='<data-dir>', "
                "download=True)\"` (or by extracting cifar-100-python.tar.gz into <data-dir>)")
    raw, tv = ("FashionMNIST", "FashionMNIST") if name == "fashion-mnist" else ("MNIST", "MNIST")
    return (f"<data-dir>/{raw}/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may be .gz), as made by "
            f"`python -c \"import torchvision; torchvision.datasets.{tv}(root='<data-dir>', download=True)\"`, "
            "or the same four IDX files directly in <data-dir>/")


def how_to_get(name: str) -> str:
    """Instructions to get a built-in dataset, for error messages."""
    lines = [
        f"  - pass data-dir=<data-dir> (run config `data-dir`, or node config `data-dir`) holding "
        f"{expected_layout(name)};",
        f"  - or put the same layout under {default_cache_dir()}/ (searched when data-dir is not given);",
    ]
    if name == "fashion-mnist":
        lines.append("  - or `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), which installs "
                     f"{DEBIAN_FASHION_MNIST_DIR}/ (found without data-dir);")
    lines.append(f"  - or run once with internet access: the Hugging Face hub dataset {HUB_IDS[name]!r} "
                 "is then loaded with `datasets.load_dataset` and kept in the Hugging Face cache "
                 "(later runs work with HF_HUB_OFFLINE=1);")
    lines.append("  - or use dataset=sample (embedded, offline) or dataset=folder:PATH (an image folder).")
    return "\n".join(lines)


# ------------------------------------------------------------------------ reading
def read_local(name: str, root: Path, split: str) -> RawSplit | None:
    """Read ``split`` of built-in dataset ``name`` from a data folder; None when its files are not there."""
    if name == "cifar10":
        folder = find_cifar10(root, split)
        return None if folder is None else read_cifar10(folder, split)
    if name == "cifar100":
        folder = find_cifar100(root, split)
        return None if folder is None else read_cifar100(folder, split)
    found = find_idx(root, name, split)
    return None if found is None else read_idx_split(*found)


def _from_raw(raw: RawSplit, spec: DatasetSpec, image_size: int | None) -> ImageData:
    if image_size is not None and image_size != spec.image_size:
        spec = dataclasses.replace(spec, image_size=image_size)
        return ImageData(resize_images(raw.images, image_size), raw.labels, spec)
    return ImageData(raw.images, raw.labels, spec)


def _load_builtin(name: str, split: str, data_dir: str | None, image_size: int | None,
                  cache_dir: str) -> ImageData:
    spec = get_spec(name)
    if name == "sample":
        folder = find_sample_dir()
        found = find_idx(folder, name, split)
        if found is None:  # pragma: no cover - find_sample_dir checked the files
            raise DataNotFoundError(f"sample files missing in {folder}")
        return _from_raw(read_idx_split(*found), spec, image_size)
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise DataNotFoundError(f"data-dir {data_dir} is not a folder. To get {name}:\n{how_to_get(name)}")
        roots.append(("data-dir", Path(data_dir)))
    roots += [("system folder", p) for p in SYSTEM_DIRS.get(name, ())]
    roots.append(("cache folder", Path(cache_dir)))
    tried = []
    for label, root in roots:
        raw = read_local(name, root, split)
        if raw is not None:
            return _from_raw(raw, spec, image_size)
        tried.append(f"  - {label} {root}: no {split} files in the expected layout")
    try:
        return _from_raw(read_hub(name, split), spec, image_size)
    except HubUnavailableError as e:
        tried.append(f"  - Hugging Face hub {HUB_IDS[name]!r}: {e}")
    raise DataNotFoundError(
        f"dataset {name!r} ({split} split) was not found. Looked in:\n" + "\n".join(tried)
        + f"\nTo get it:\n{how_to_get(name)}")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _folder_data(path: str, image_size: int) -> tuple[ImageData, ImageData]:
    folder = read_image_folder(Path(path), image_size=image_size, test_fraction=FOLDER_TEST_FRACTION,
                               seed=FOLDER_SPLIT_SEED)
    spec = folder_spec(f"{FOLDER_PREFIX}{path}", folder.train.images, folder.class_names)
    return (_readonly(ImageData(folder.train.images, folder.train.labels, spec)),
            _readonly(ImageData(folder.test.images, folder.test.labels, spec)))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(name: str, split: str, data_dir: str | None, image_size: int | None,
                 cache_dir: str) -> ImageData:
    return _readonly(_load_builtin(name, split, data_dir, image_size, cache_dir))


def load_dataset(name: str, split: str, data_dir: str | None = None,
                 image_size: int | None = None) -> ImageData:
    """Load one split of a data set (cached per process; the arrays are read-only).

    Parameters
    ----------
    name:
        ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``sample`` or
        ``folder:PATH`` (an ImageFolder tree; ``PATH`` absolute or relative to the
        working directory).
    split:
        ``"train"`` or ``"test"``.
    data_dir:
        Folder holding the data in the layout of torchvision's downloads (see
        :func:`expected_layout`); None or ``""`` searches the default places.
        Not used by ``sample`` and ``folder:PATH``.
    image_size:
        Resize the images to this square size; None keeps the native size
        (32 for a ``folder:`` dataset).

    Raises
    ------
    DataNotFoundError
        The data is nowhere; the message says how to get it.
    CorruptDataError
        A data file is there but malformed.
    ValueError
        Unknown ``name`` or ``split``, or a bad ``image_size``.
    """
    check_split(split)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    if name.startswith(FOLDER_PREFIX) and len(name) > len(FOLDER_PREFIX):
        path = Path(name[len(FOLDER_PREFIX):]).expanduser().resolve()
        train, test = _folder_data(str(path), image_size or DEFAULT_FOLDER_IMAGE_SIZE)
        return train if split == "train" else test
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"dataset={name!r} is not known; allowed: {', '.join(DATASET_NAMES)}")
    resolved = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    return _load_cached(name, split, resolved, image_size, str(default_cache_dir()))


def clear_cache() -> None:
    """Forget the loads cached by :func:`load_dataset`."""
    _load_cached.cache_clear()
    _folder_data.cache_clear()
