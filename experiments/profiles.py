"""Sweep profiles as data: which datasets, algorithms and fixed app settings each script runs.

A *profile* fixes, per cell kind, the run-config values of the app and the number of
simulated clients:

``gradinv`` (Table 1, Figure 1)
    FedSGD, one round; every client is attacked in round 1 with a one-image batch
    (``attack-images = 1``), so ``num_supernodes`` is the number of reconstructed
    images per configuration; both attackers.
``mia`` (Table 2, trade-off)
    FedAvg training for several rounds, then the black-box attacks on the final
    model (``mia = true``); nothing intercepted.
``update`` (Table 2, beyond the paper)
    One FedSGD round with every client intercepted and the update attacks run on
    each intercepted update (``mia = true``).

The trade-off script runs the ``gradinv`` and ``mia`` cells of the same profile, so
after Tables 1 and 2 it computes nothing new.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from fedtrust.compression.codec import Codec
from fedtrust.compression.registry import codec_class, codec_names

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST",
                  "fashion-mnist": "Fashion-MNIST", "sample": "sample (Fashion-MNIST)"}


def codec_families() -> dict[str, type[Codec]]:
    """Algorithm family (the sweeps' key: ``sgd`` for no compression) -> its codec class,
    in the registry's order (the uncompressed one first), which is the tables' order."""
    return {codec_class(name).family: codec_class(name) for name in codec_names()}


@dataclass(frozen=True, order=True)
class Algorithm:
    """A codec family at a level: SGD, PowerSGD rank ``level``, Top-K level ``level`` ...

    ``level`` is 0 exactly for the families whose codec takes no level (SGD). Keys,
    labels, figure tags and styles come from the codec.
    """

    family: str
    level: int = 0

    def __post_init__(self) -> None:
        known = codec_families()
        if self.family not in known:
            raise ValueError(f"algorithm family {self.family!r} is not known; allowed: {', '.join(known)}")
        if known[self.family].levelled != (self.level != 0) or self.level < 0:
            need = ">= 1" if known[self.family].levelled else "0"
            raise ValueError(f"{self.family} needs level {need}, got {self.level}")

    @property
    def codec(self) -> type[Codec]:
        """The codec class of this family."""
        return codec_families()[self.family]

    @property
    def key(self) -> str:
        """``sgd``, ``powersgd4``, ``topk30``."""
        return self.codec.algorithm_key(self.level)

    @property
    def label(self) -> str:
        """The paper's row label (Top-K levels carry the paper's asterisk)."""
        return self.codec.label(self.level)

    @property
    def tag(self) -> str:
        """A figure's point label (``SGD``, ``r4``, ``L4``)."""
        return self.codec.tag(self.level)

    @property
    def baseline(self) -> bool:
        """Whether this is the uncompressed reference the tables' "% of SGD" divides by
        (its codec sends the update as it is; signSGD has no level but is no baseline)."""
        return self.codec.uncompressed

    @property
    def sort_key(self) -> tuple[int, int]:
        """The paper's row order: SGD, then per level the families in the registry's order
        (PowerSGD before Top-K)."""
        return (self.level, list(codec_families()).index(self.family))

    def run_config(self) -> dict[str, Any]:
        """The run-config values that select this algorithm."""
        return {"compressor": self.codec.name, "level": max(self.level, 1)}

    @classmethod
    def parse(cls, text: str) -> Algorithm:
        """``sgd``, ``powersgd4``, ``topk1`` (as :attr:`key` writes them)."""
        text = text.strip().lower()
        known = sorted(codec_families().items(), key=lambda item: -len(item[0]))  # the longest family first
        for family, codec in known:
            level = text[len(family):] if text.startswith(family) else None
            if level is not None and (level.isdigit() if codec.levelled else level == ""):
                return cls(family, int(level or 0))
        expected = [f"{f}N" if codec.levelled else f for f, codec in codec_families().items()]
        raise ValueError(f"algorithm {text!r}: expected {', '.join(expected[:-1])} or {expected[-1]}")


def algorithms_for(families: Sequence[str], levels: Sequence[int]) -> tuple[Algorithm, ...]:
    """Each family, at each level where its codec takes one, in the paper's order."""
    known = codec_families()
    unknown = [f for f in families if f not in known]
    if unknown:
        raise ValueError(f"algorithm families {unknown} are not known; allowed: {', '.join(known)}")
    algos = [Algorithm(f, lv) for f in families for lv in (levels if known[f].levelled else (0,))]
    return tuple(sorted(dict.fromkeys(algos), key=lambda a: a.sort_key))


def dataset_label(name: str) -> str:
    """Display name of a dataset (``folder:PATH`` shows the folder's name)."""
    if name.startswith("folder:"):
        return f"folder:{name.rstrip('/').rsplit('/', 1)[-1]}"
    return DATASET_LABELS.get(name, name)


def dataset_slug(name: str) -> str:
    """A run-name-safe short name of a dataset (letters, digits, ``-``)."""
    if name.startswith("folder:"):
        name = "folder-" + name.rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    return slug[:40] or "data"


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class KindSettings:
    """Fixed settings of one cell kind: run-config values and the simulation size.

    Attributes
    ----------
    run_config:
        Run-config values on top of the app's defaults (dataset and algorithm are added per cell).
    num_supernodes:
        Simulated clients (``num-supernodes`` of the federation config).
    """

    run_config: Mapping[str, Any]
    num_supernodes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_config", _frozen(self.run_config))
        if self.num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {self.num_supernodes}")


@dataclass(frozen=True)
class Profile:
    """A sweep: datasets, algorithm levels and the fixed settings of each cell kind.

    Attributes
    ----------
    name, description:
        For the command line and the tables' footers.
    datasets:
        Default ``--datasets``.
    families:
        The algorithm families swept (codec families: ``sgd`` for no compression).
    levels:
        The levels of the families that take one (PowerSGD ranks, Top-K levels).
    kinds:
        :class:`KindSettings` per cell kind (``gradinv``, ``mia``, ``update``).
    cell_timeout_s:
        Longest a single cell's Flower run may take before it counts as failed.
    gpu_client_share:
        ``client-resources-num-gpus`` of each simulated client on a GPU worker
        (the clients of one run share that worker's GPU).
    figure_images:
        Reconstructed images per dataset shown in Figure 1.
    """

    name: str
    description: str
    datasets: tuple[str, ...]
    families: tuple[str, ...]
    levels: tuple[int, ...]
    kinds: Mapping[str, KindSettings]
    cell_timeout_s: float = 3600.0
    gpu_client_share: float = 0.1
    figure_images: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", _frozen(self.kinds))

    @property
    def algorithms(self) -> tuple[Algorithm, ...]:
        return algorithms_for(self.families, self.levels)


#: The paper's algorithms: SGD, PowerSGD and Top-K (codec families).
PAPER_FAMILIES = ("sgd", "powersgd", "topk")

#: Geiping et al. (2020) reference settings: 24,000 signed-Adam iterations, TV 1e-4, and
#: one restart (``--restarts`` default of ``inversefed/options.py``).
GEIPING = {"attack-iterations": 24000, "attack-restarts": 1, "tv-weight": 1e-4}
#: The paper's (and Geiping et al.'s code's) BatchNorm setting: the FedSGD gradient of a
#: model in eval mode (running statistics). In train mode, ResNet-18 with one image is
#: not inverted at all (README, "BatchNorm mode").
PAPER_MODEL_MODE = {"client-model-mode": "eval"}

#: What makes a cell of each kind the experiment it is (see the module docstring); a
#: profile adds the model, the sizes and the attack's budget.
KIND_BASE = MappingProxyType({
    "gradinv": {"local-mode": "fedsgd", "num-server-rounds": 1, "attack": "gradinv", "attack-round": 1,
                "attack-clients": "all", "attack-images": 1, "attacker": "both", "attack-labels": "given",
                "intercept-rounds": "1", "intercept-clients": "none", "mia": False},
    "mia": {"local-mode": "fedavg", "mia": True, "intercept-rounds": "none", "intercept-clients": "none",
            "eval-samples": 0, "attack": "none"},
    "update": {"local-mode": "fedsgd", "num-server-rounds": 1, "mia": True, "intercept-rounds": "1",
               "intercept-clients": "all", "attack": "none"},
})


def kind_settings(kind: str, num_supernodes: int, run_config: Mapping[str, Any]) -> KindSettings:
    """:data:`KIND_BASE` of ``kind`` with a profile's own run-config values on top."""
    return KindSettings({**KIND_BASE[kind], **run_config}, num_supernodes=num_supernodes)


PAPER = Profile(
    name="paper",
    description=("The paper's grid: CIFAR-10, CIFAR-100, MNIST; ResNet-18; SGD, PowerSGD rank and Top-K "
                 "level 1, 2, 4, 30, 50; 10 reconstructed images per configuration (10 clients, one "
                 "image each, round 1); Geiping's attack (24,000 iterations, 1 restart, TV 1e-4); "
                 "MIA on models trained by FedAvg for 50 rounds."),
    datasets=("cifar10", "cifar100", "mnist"),
    families=PAPER_FAMILIES,
    levels=(1, 2, 4, 30, 50),
    kinds={
        "gradinv": kind_settings("gradinv", 10, {"model": "resnet18", "batch-size": 32, **GEIPING,
                                                 **PAPER_MODEL_MODE, "eval-samples": 1000}),
        "mia": kind_settings("mia", 10, {"model": "resnet18", "num-server-rounds": 50, "local-epochs": 1,
                                         "batch-size": 32, "lr": 0.05, "mia-samples": 5000}),
        "update": kind_settings("update", 10, {"model": "resnet18", "batch-size": 32, "mia-samples": 1000,
                                               **PAPER_MODEL_MODE, "eval-samples": 1000}),
    },
    cell_timeout_s=12 * 3600.0,
    gpu_client_share=0.1,
    figure_images=3,
)

def convnet_kinds(clients: int, iterations: int, mia_rounds: int) -> dict[str, dict[str, Any]]:
    """The run settings of the CPU-sized profiles (ConvNet on the embedded sample), per kind of cell:
    ``clients`` clients (one reconstructed image each), ``iterations`` attack iterations, and
    FedAvg for ``mia_rounds`` rounds of 2 local epochs for the black-box MIA."""
    return {
        "gradinv": kind_settings("gradinv", clients, {"model": "convnet", "batch-size": 32,
                                                      "attack-iterations": iterations, "attack-restarts": 1,
                                                      "tv-weight": 1e-4, "eval-samples": 500}),
        "mia": kind_settings("mia", clients, {"model": "convnet", "num-server-rounds": mia_rounds,
                                              "local-epochs": 2, "batch-size": 32, "lr": 0.05,
                                              "mia-samples": 500}),
        "update": kind_settings("update", clients, {"model": "convnet", "batch-size": 16, "mia-samples": 200,
                                                    "eval-samples": 500}),
    }


SMOKE = Profile(
    name="smoke",
    description=("CPU smoke test: the embedded sample (real Fashion-MNIST subset, offline); ConvNet; SGD, "
                 "PowerSGD rank 1 and 4, Top-K level 1 and 4; 3 reconstructed images per configuration "
                 "(3 clients, one image each, round 1), 300 attack iterations (TV 1e-4, 1 restart), "
                 "both attackers; MIA on models trained by FedAvg for 3 rounds (2 local epochs)."),
    datasets=("sample",),
    families=PAPER_FAMILIES,
    levels=(1, 4),
    kinds=convnet_kinds(clients=3, iterations=300, mia_rounds=3),
    cell_timeout_s=1800.0,
    gpu_client_share=0.25,
    figure_images=3,
)

#: Attack iterations of the cpu profile: where uncompressed SGD's reconstructions have stopped
#: improving on the ConvNet (``python -m experiments.convergence``; docs/cpu-results/convergence.md).
CPU_ITERATIONS = 500

CPU = Profile(
    name="cpu",
    description=("A study a 2-core CPU finishes in under 2 hours: the embedded sample (real Fashion-MNIST "
                 "subset, offline); ConvNet; SGD, PowerSGD rank and Top-K level 1, 2 and 4 (the paper's "
                 "levels 30 and 50 leave every ConvNet tensor dense, so they are SGD here); 10 "
                 f"reconstructed images per configuration (10 clients, one image each, round 1), "
                 f"{CPU_ITERATIONS} attack iterations (where SGD's reconstructions have converged), TV 1e-4, "
                 "1 restart, both attackers, 95% bootstrap intervals; MIA on models trained by FedAvg for 5 "
                 "rounds (2 local epochs, 10 clients)."),
    datasets=("sample",),
    families=PAPER_FAMILIES,
    levels=(1, 2, 4),
    kinds=convnet_kinds(clients=10, iterations=CPU_ITERATIONS, mia_rounds=5),
    cell_timeout_s=1800.0,
    gpu_client_share=0.1,
    figure_images=4,
)

#: The FedAvg setting in which the ConvNet overfits the embedded sample: 3 clients of 100
#: images (30 partitions, 3 SuperNodes), 30 rounds of 10 local epochs at lr 0.1.
OVERFIT_MIA = {"model": "convnet", "num-partitions": 30, "num-server-rounds": 30, "local-epochs": 10,
               "batch-size": 32, "lr": 0.1, "mia-samples": 300, "mia-reference-models": 8}

OVERFIT = replace(
    SMOKE,
    name="overfit",
    description=("Membership at stake: the smoke profile's grid, but the MIA model overfits (FedAvg, 3 clients "
                 "of 100 images, 30 rounds of 10 local epochs at lr 0.1) and is attacked by LiRA and RMIA with "
                 "8 reference models (RMIA also with 2) beside the threshold attacks (Table 2e); 300 member "
                 "and 300 non-member candidates."),
    kinds={**SMOKE.kinds, "mia": kind_settings("mia", 3, OVERFIT_MIA)},
    cell_timeout_s=3600.0,
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (SMOKE, CPU, PAPER, OVERFIT)})


@dataclass(frozen=True)
class Cell:
    """One Flower run of a sweep.

    Attributes
    ----------
    kind:
        ``gradinv``, ``mia`` or ``update``.
    dataset, algorithm:
        What the cell measures.
    run_config:
        The complete, canonical run config (every app key; no ``output-dir``/``run-name``).
    num_supernodes:
        Simulated clients.
    key:
        Hash of ``kind``, ``run_config`` and ``num_supernodes``: the cell's identity in the store.
    """

    kind: str
    dataset: str
    algorithm: Algorithm
    run_config: Mapping[str, Any] = field(compare=False)
    num_supernodes: int
    key: str

    @property
    def name(self) -> str:
        """Run-folder name: ``<kind>-<dataset>-<algorithm>-<key>``."""
        return f"{self.kind}-{dataset_slug(self.dataset)}-{self.algorithm.key}-{self.key}"

    @property
    def seed(self) -> int:
        return int(self.run_config["seed"])
