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
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: Algorithm families in the paper's order, with their ``compressor`` value.
FAMILIES = {"sgd": "none", "powersgd": "powersgd", "topk": "topk"}

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST",
                  "fashion-mnist": "Fashion-MNIST", "sample": "sample (Fashion-MNIST)"}


@dataclass(frozen=True, order=True)
class Algorithm:
    """SGD, PowerSGD rank ``level`` or Top-K level ``level`` (``level`` 0 for SGD)."""

    family: str
    level: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"algorithm family {self.family!r} is not known; allowed: {', '.join(FAMILIES)}")
        if (self.family == "sgd") != (self.level == 0):
            raise ValueError(f"{self.family} needs level {'0' if self.family == 'sgd' else '>= 1'}, got {self.level}")

    @property
    def key(self) -> str:
        """``sgd``, ``powersgd4``, ``topk30``."""
        return self.family if self.family == "sgd" else f"{self.family}{self.level}"

    @property
    def label(self) -> str:
        """The paper's row label (Top-K levels carry the paper's asterisk)."""
        if self.family == "sgd":
            return "Original SGD"
        if self.family == "powersgd":
            return f"PowerSGD (Rank {self.level})"
        return f"Top-K SGD (Level {self.level})*"

    @property
    def sort_key(self) -> tuple[int, int]:
        """The paper's row order: SGD, then per level PowerSGD before Top-K."""
        return (self.level, list(FAMILIES).index(self.family))

    def run_config(self) -> dict[str, Any]:
        """The run-config values that select this algorithm."""
        return {"compressor": FAMILIES[self.family], "level": max(self.level, 1)}

    @classmethod
    def parse(cls, text: str) -> Algorithm:
        """``sgd``, ``powersgd4``, ``topk1`` (as :attr:`key` writes them)."""
        text = text.strip().lower()
        match = re.fullmatch(r"(sgd|powersgd|topk)(\d*)", text)
        if not match or (match.group(1) != "sgd" and not match.group(2)):
            raise ValueError(f"algorithm {text!r}: expected sgd, powersgdN or topkN")
        return cls(match.group(1), int(match.group(2) or 0))


def algorithms_for(levels: tuple[int, ...]) -> tuple[Algorithm, ...]:
    """SGD, then PowerSGD and Top-K at each level, in the paper's order."""
    algos = [Algorithm("sgd")] + [Algorithm(f, lv) for lv in levels for f in ("powersgd", "topk")]
    return tuple(sorted(algos, key=lambda a: a.sort_key))


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
    levels:
        PowerSGD ranks and Top-K levels (SGD is always included).
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
    levels: tuple[int, ...]
    kinds: Mapping[str, KindSettings]
    cell_timeout_s: float = 3600.0
    gpu_client_share: float = 0.1
    figure_images: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", _frozen(self.kinds))

    @property
    def algorithms(self) -> tuple[Algorithm, ...]:
        return algorithms_for(self.levels)


#: Geiping et al. (2020) reference settings: 24,000 signed-Adam iterations, TV 1e-4, and
#: one restart (``--restarts`` default of ``inversefed/options.py``).
GEIPING = {"attack-iterations": 24000, "attack-restarts": 1, "tv-weight": 1e-4}

PAPER = Profile(
    name="paper",
    description=("The paper's grid: CIFAR-10, CIFAR-100, MNIST; ResNet-18; SGD, PowerSGD rank and Top-K "
                 "level 1, 2, 4, 30, 50; 10 reconstructed images per configuration (10 clients, one "
                 "image each, round 1); Geiping's attack (24,000 iterations, 1 restart, TV 1e-4); "
                 "MIA on models trained by FedAvg for 50 rounds."),
    datasets=("cifar10", "cifar100", "mnist"),
    levels=(1, 2, 4, 30, 50),
    kinds={
        "gradinv": KindSettings({
            "model": "resnet18", "local-mode": "fedsgd", "num-server-rounds": 1, "batch-size": 32,
            "attack": "gradinv", "attack-round": 1, "attack-clients": "all", "attack-images": 1,
            "attacker": "both", "attack-labels": "given", **GEIPING,
            "intercept-rounds": "1", "intercept-clients": "none", "eval-samples": 1000,
        }, num_supernodes=10),
        "mia": KindSettings({
            "model": "resnet18", "local-mode": "fedavg", "num-server-rounds": 50, "local-epochs": 1,
            "batch-size": 32, "lr": 0.05, "mia": True, "mia-samples": 5000,
            "intercept-rounds": "none", "intercept-clients": "none", "eval-samples": 0,
        }, num_supernodes=10),
        "update": KindSettings({
            "model": "resnet18", "local-mode": "fedsgd", "num-server-rounds": 1, "batch-size": 32,
            "mia": True, "mia-samples": 1000, "intercept-rounds": "1", "intercept-clients": "all",
            "eval-samples": 1000,
        }, num_supernodes=10),
    },
    cell_timeout_s=12 * 3600.0,
    gpu_client_share=0.1,
    figure_images=3,
)

SMOKE = Profile(
    name="smoke",
    description=("CPU smoke test: the embedded sample (real Fashion-MNIST subset, offline); ConvNet; SGD, "
                 "PowerSGD rank 1 and 4, Top-K level 1 and 4; 3 reconstructed images per configuration "
                 "(3 clients, one image each, round 1), 300 attack iterations (TV 1e-4, 1 restart), "
                 "both attackers; MIA on models trained by FedAvg for 3 rounds (2 local epochs)."),
    datasets=("sample",),
    levels=(1, 4),
    kinds={
        "gradinv": KindSettings({
            "model": "convnet", "local-mode": "fedsgd", "num-server-rounds": 1, "batch-size": 32,
            "attack": "gradinv", "attack-round": 1, "attack-clients": "all", "attack-images": 1,
            "attacker": "both", "attack-labels": "given", "attack-iterations": 300,
            "attack-restarts": 1, "tv-weight": 1e-4,
            "intercept-rounds": "1", "intercept-clients": "none", "eval-samples": 500,
        }, num_supernodes=3),
        "mia": KindSettings({
            "model": "convnet", "local-mode": "fedavg", "num-server-rounds": 3, "local-epochs": 2,
            "batch-size": 32, "lr": 0.05, "mia": True, "mia-samples": 500,
            "intercept-rounds": "none", "intercept-clients": "none", "eval-samples": 0,
        }, num_supernodes=3),
        "update": KindSettings({
            "model": "convnet", "local-mode": "fedsgd", "num-server-rounds": 1, "batch-size": 16,
            "mia": True, "mia-samples": 200, "intercept-rounds": "1", "intercept-clients": "all",
            "eval-samples": 500,
        }, num_supernodes=3),
    },
    cell_timeout_s=1800.0,
    gpu_client_share=0.25,
    figure_images=3,
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (SMOKE, PAPER)})


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
