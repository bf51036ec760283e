"""Make the embedded sample data set (``fedtrust/data/sample/``) from Fashion-MNIST.

The sample is a class-balanced, seeded subset of Fashion-MNIST: 300 images per
class from the official train file and 100 per class from the official test
file, 28x28 grayscale, written as gzipped IDX files with the same names as the
originals, plus a ``README.md`` with the provenance, the licence, the seed, the
statistics and the SHA-256 of every file. Run from the repository root::

    python -m fedtrust.data.make_sample

It reads the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); ``--source`` takes any folder with the
four original IDX files. The output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtrust.data.sources import RawSplit, find_idx, read_idx_split, write_idx
from fedtrust.data.specs import FASHION_MNIST_CLASSES, channel_stats

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
OUT_DIR = Path(__file__).resolve().parent / "sample"
SEED = 42
TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100
NUM_CLASSES = 10
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def balanced_indices(labels: np.ndarray, per_class: int, num_classes: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class drawn without replacement, in a random order.

    Parameters
    ----------
    labels:
        Labels of the source split.
    per_class:
        How many items of each class to keep.
    num_classes:
        Classes ``0 .. num_classes - 1`` are drawn in this order.
    rng:
        The generator (consumed: one draw per class, then one permutation).
    """
    chosen = []
    for cls in range(num_classes):
        idx = np.flatnonzero(labels == cls)
        if idx.size < per_class:
            raise ValueError(f"class {cls} has {idx.size} items, fewer than {per_class}")
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    return rng.permutation(np.concatenate(chosen))


@dataclass(frozen=True)
class SampleSplit:
    """One split of the sample and where it came from."""

    data: RawSplit
    source_indices: np.ndarray


def make_splits(source_dir: Path, seed: int = SEED) -> dict[str, SampleSplit]:
    """Draw the train and test splits from the Fashion-MNIST IDX files in ``source_dir``."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        found = find_idx(source_dir, "fashion-mnist", split)
        if found is None:
            raise FileNotFoundError(f"no Fashion-MNIST {split} IDX files in {source_dir} "
                                    "(sudo apt-get install dataset-fashion-mnist)")
        full = read_idx_split(*found)
        idx = balanced_indices(full.labels, per_class, NUM_CLASSES, rng)
        out[split] = SampleSplit(RawSplit(full.images[idx], full.labels[idx]), idx)
    return out


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readme_text(splits: dict[str, SampleSplit], source_dir: Path, out_dir: Path, seed: int) -> str:
    """The sample's README: what it is, provenance, licence, seed, statistics and checksums."""
    mean, std = channel_stats(splits["train"].data.images)
    source_files = [p for split in ("train", "test") for p in find_idx(source_dir, "fashion-mnist", split)]
    lines = [
        "# The embedded sample data set",
        "",
        "`dataset = \"sample\"` (the default) loads these files, offline and with no set-up.",
        "",
        "**What:** a class-balanced random subset of [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist)",
        "(Xiao, Rasul and Vollgraf, 2017): 28x28 grayscale images of 10 clothing classes",
        f"({', '.join(FASHION_MNIST_CLASSES)}; labels 0-9 in this order).",
        "",
        "| split | images | per class | drawn from |",
        "|---|---|---|---|",
        f"| train | {len(splits['train'].data.labels)} | {TRAIN_PER_CLASS} | the official train file (60,000 images) |",
        f"| test | {len(splits['test'].data.labels)} | {TEST_PER_CLASS} | the official test file (10,000 images) |",
        "",
        "The files are gzipped IDX, named as the originals, so the Fashion-MNIST reader reads them.",
        "",
        "**Where from:** the Debian/Ubuntu package `dataset-fashion-mnist`",
        f"(`{source_dir}`), which packages the official release files:",
        "",
        *[f"- `{p.name}` sha256 `{sha256(p)}`" for p in source_files],
        "",
        "**Licence:** MIT (Expat), Copyright (c) 2017 Zalando SE,",
        "https://github.com/zalandoresearch/fashion-mnist/blob/master/LICENSE",
        "(as in the Debian package's `copyright` file). The subset keeps that licence.",
        "",
        f"**How it was made:** `python -m fedtrust.data.make_sample` (`fedtrust/data/make_sample.py`), seed {seed}:",
        "`rng = numpy.random.default_rng(seed)`; for the train split and then the test split, for each",
        "class 0-9 in turn `rng.choice(indices_of_class, size=per_class, replace=False)`, then",
        "`rng.permutation` of the concatenated indices gives the order of the sample. The script writes",
        "the gzip files without a time stamp, so re-running it reproduces them byte for byte.",
        "",
        "**Statistics** (train images, pixels in [0, 1]; `fedtrust/data/specs.py` uses them for",
        f"normalisation): mean {mean[0]:.4f}, std {std[0]:.4f}.",
        "",
        "**Files** (sha256):",
        "",
        *[f"- `{name}` `{sha256(out_dir / name)}`" for split in ("train", "test") for name in FILES[split]],
        "",
    ]
    return "\n".join(lines)


def write_sample(splits: dict[str, SampleSplit], out_dir: Path) -> list[Path]:
    """Write the splits as gzipped IDX files into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, (images_name, labels_name) in FILES.items():
        data = splits[split].data
        write_idx(out_dir / images_name, data.images[..., 0])
        write_idx(out_dir / labels_name, data.labels.astype(np.uint8))
        paths += [out_dir / images_name, out_dir / labels_name]
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: make the sample and print its statistics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE_DIR,
                        help=f"folder with the Fashion-MNIST IDX files (default {SOURCE_DIR})")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    args = parser.parse_args(argv)
    splits = make_splits(args.source, args.seed)
    paths = write_sample(splits, args.out)
    (args.out / "README.md").write_text(readme_text(splits, args.source, args.out, args.seed))
    mean, std = channel_stats(splits["train"].data.images)
    for path in paths:
        print(f"{path}  {path.stat().st_size:>9,d} bytes")
    print(f"train mean {mean[0]:.4f} std {std[0]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
