"""What each data set is: classes, image shape and normalisation constants.

The mean and standard deviation are per channel over the train split, with
pixels scaled to [0, 1]; they are the usual published values for CIFAR-10,
CIFAR-100, MNIST and Fashion-MNIST. The embedded ``sample`` uses its own train
images (see ``fedtrust/data/sample/README.md``) and an image folder
(``folder:PATH``) computes them from its train split when it is loaded
(:func:`folder_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOLDER_PREFIX = "folder:"
#: Every dataset name :func:`fedtrust.data.load_dataset` takes (``folder:PATH`` is a pattern).
DATASET_NAMES = ("cifar10", "cifar100", "mnist", "fashion-mnist", "sample", "folder:PATH")
#: The names with a fixed :class:`DatasetSpec` (all but ``folder:PATH``).
BUILTIN_DATASETS = DATASET_NAMES[:-1]


@dataclass(frozen=True)
class DatasetSpec:
    """A data set's classes, image shape and per-channel normalisation.

    Attributes
    ----------
    name:
        The dataset name as given to :func:`fedtrust.data.load_dataset`.
    num_classes:
        Number of classes; labels are ``0 .. num_classes - 1``.
    channels:
        1 (grayscale) or 3 (RGB).
    image_size:
        Height and width of the (square) images, in pixels.
    mean, std:
        Per-channel mean and standard deviation of the train images in [0, 1];
        one value per channel.
    class_names:
        Name of each class, indexed by label.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"DatasetSpec {self.name!r}: channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"DatasetSpec {self.name!r}: mean and std need {self.channels} values each, "
                             f"got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"DatasetSpec {self.name!r}: std must be positive, got {self.std}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"DatasetSpec {self.name!r}: {self.num_classes} classes but "
                             f"{len(self.class_names)} class names")
        if self.image_size < 1:
            raise ValueError(f"DatasetSpec {self.name!r}: image_size must be >= 1, got {self.image_size}")


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
    "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe",
    "whale", "willow_tree", "wolf", "woman", "worm",
)

MNIST_CLASSES = tuple(str(d) for d in range(10))

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

#: Normalisation of the embedded sample: its 3000 train images, as printed by
#: ``python -m fedtrust.data.make_sample`` (and checked by tests/test_data.py).
SAMPLE_MEAN = (0.2852,)
SAMPLE_STD = (0.3515,)

SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           CIFAR10_CLASSES),
    "cifar100": DatasetSpec("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            CIFAR100_CLASSES),
    "mnist": DatasetSpec("mnist", 10, 1, 28, (0.1307,), (0.3081,), MNIST_CLASSES),
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), FASHION_MNIST_CLASSES),
    "sample": DatasetSpec("sample", 10, 1, 28, SAMPLE_MEAN, SAMPLE_STD, FASHION_MNIST_CLASSES),
}


def get_spec(name: str) -> DatasetSpec:
    """The fixed spec of a built-in dataset.

    Parameters
    ----------
    name:
        One of :data:`BUILTIN_DATASETS`.

    Raises
    ------
    ValueError
        If ``name`` is not a built-in dataset (a ``folder:PATH`` spec depends on the folder).
    """
    if name not in SPECS:
        raise ValueError(f"dataset={name!r} is not known; allowed: {', '.join(DATASET_NAMES)}")
    return SPECS[name]


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1].

    Parameters
    ----------
    images:
        ``(N, H, W, C)`` uint8 array with ``N >= 1``.

    Returns
    -------
    mean, std:
        Tuples of ``C`` floats; a zero std (constant images) is replaced by 1.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"channel_stats needs (N, H, W, C) images with N >= 1, got shape {images.shape}")
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def folder_spec(name: str, train_images: np.ndarray, class_names: tuple[str, ...]) -> DatasetSpec:
    """The spec of an image-folder dataset, with statistics from its train images.

    Parameters
    ----------
    name:
        The dataset name (``folder:PATH``).
    train_images:
        ``(N, S, S, C)`` uint8 train images.
    class_names:
        Class folder names, indexed by label.
    """
    mean, std = channel_stats(train_images)
    return DatasetSpec(name=name, num_classes=len(class_names), channels=int(train_images.shape[-1]),
                       image_size=int(train_images.shape[1]), mean=mean, std=std,
                       class_names=tuple(class_names))
