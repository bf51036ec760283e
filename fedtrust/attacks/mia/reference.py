"""Reference models for LiRA and RMIA: trained like the target, on a population pool, cached.

The attacker trains ``count`` models the way the target was trained (architecture,
optimiser, learning rate, batch size, steps) on data from a *population pool* it may
use. Reference model ``i`` trains on a seeded random half of the pool
(``ReferenceSpec.seed`` and ``i``), so every pool sample is IN for about half of them:
what online LiRA needs for the candidates it scores (put them in the pool), and what
offline attacks ignore (they use the OUT models).

The target of a fedtrust run is trained by FedAvg over clients, and so is a reference
model: its half of the candidates is dealt into ``clients`` shards, and for ``rounds``
rounds every shard trains ``local_epochs`` of SGD from the current model, whose new
weights are the shards' mean weighted by their sizes (FedAvg at server step 1, what
the target's server does by default). Differences that remain: the target's clients
hold their partitions (non-IID with the Dirichlet partitioner) and the reference's
shards are IID; a FedSGD target is approximated by ``clients = rounds = 1`` and the
epochs its steps amount to.

Caching: the models and their IN masks are saved under ``cache_dir / spec.key()``,
where the key hashes every field of the :class:`ReferenceSpec` (the pool included, by the
caller's ``pool_id``); an identical spec reuses them, any change trains new ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fedtrust.models import get_model
from fedtrust.training import fedavg_train, weighted_mean


@dataclass(frozen=True)
class ReferenceSpec:
    """How the reference models are trained (every field enters the cache key).

    Attributes
    ----------
    model, num_classes, in_channels:
        The architecture (:func:`fedtrust.models.get_model`).
    count:
        Reference models.
    rounds, local_epochs, clients:
        FedAvg as the target was trained: rounds, each shard's epochs per round, shards.
    batch_size, lr:
        SGD as the target's clients ran it.
    pool_id:
        What the pool is (e.g. the data set and a hash of its indices): a different pool
        must give a different key.
    seed:
        Seed of the halves and of each model's initialisation and batches.
    """

    model: str
    num_classes: int
    in_channels: int
    count: int
    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    pool_id: str
    clients: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        counts = {"count": self.count, "rounds": self.rounds, "local_epochs": self.local_epochs,
                  "batch_size": self.batch_size, "clients": self.clients}
        bad = {k: v for k, v in counts.items() if not (isinstance(v, int) and v >= 1)}
        if bad or not self.lr > 0:
            raise ValueError(f"reference models: {', '.join(f'{k}={v!r}' for k, v in bad.items())} must be "
                             f"integers >= 1 and lr={self.lr!r} > 0")

    def key(self) -> str:
        """The cache folder's name: a hash of every field."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReferenceModels:
    """Trained reference models.

    Attributes
    ----------
    states:
        Each model's ``state_dict`` (CPU).
    pool_in:
        ``(count, pool size)``: whether model ``i`` trained on pool sample ``j``.
    trained, reused:
        How many were trained now and how many came from the cache.
    folder:
        Where they are cached.
    """

    spec: ReferenceSpec
    states: tuple[dict[str, torch.Tensor], ...]
    pool_in: np.ndarray
    trained: int
    reused: int
    folder: Path

    def model(self, i: int, device: torch.device | str = "cpu") -> torch.nn.Module:
        """Reference model ``i``, in eval mode on ``device``."""
        net = get_model(self.spec.model, self.spec.num_classes, self.spec.in_channels)
        net.load_state_dict(self.states[i])
        return net.to(device).eval()


def pool_halves(spec: ReferenceSpec, pool_size: int) -> np.ndarray:
    """``(count, pool_size)`` IN masks: model ``i`` trains on a seeded half of the pool."""
    masks = np.zeros((spec.count, pool_size), dtype=bool)
    for i in range(spec.count):
        order = np.random.default_rng([spec.seed, i]).permutation(pool_size)
        masks[i, order[: pool_size // 2]] = True
    return masks


def _train_one(spec: ReferenceSpec, i: int, x: torch.Tensor, y: torch.Tensor,
               device: torch.device | str) -> dict[str, torch.Tensor]:
    """Reference model ``i`` by FedAvg on ``(x, y)`` dealt into ``spec.clients`` shards."""
    seeds = np.random.SeedSequence([spec.seed, i]).generate_state(3)
    torch.manual_seed(int(seeds[0]))
    net = get_model(spec.model, spec.num_classes, spec.in_channels).to(device)
    generator = torch.Generator().manual_seed(int(seeds[1]))
    shards = [s for s in np.array_split(np.random.default_rng(int(seeds[2])).permutation(len(x)), spec.clients)
              if s.size]
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for _ in range(spec.rounds):
        states, weights = [], []
        for shard in shards:
            net.load_state_dict(state)
            idx = torch.from_numpy(shard).to(x.device)
            fedavg_train(net, x[idx], y[idx], spec.local_epochs, spec.batch_size, spec.lr, generator)
            states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
            weights.append(float(shard.size))
        floats = [k for k, v in state.items() if v.is_floating_point()]
        mean = weighted_mean([{k: s[k] for k in floats} for s in states], weights)
        state = {k: mean[k].to(v.dtype) if k in mean else states[0][k] for k, v in state.items()}
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def train_reference_models(spec: ReferenceSpec, pool_x: torch.Tensor, pool_y: torch.Tensor,
                           cache_dir: str | Path, *, device: torch.device | str = "cpu",
                           progress: Callable[[int, int], None] | None = None) -> ReferenceModels:
    """Train (or load from ``cache_dir``) the reference models of ``spec`` on the pool.

    Parameters
    ----------
    spec:
        How to train them.
    pool_x, pool_y:
        The population pool (images and labels).
    cache_dir:
        The cache (a run folder's, or one shared by a sweep).
    device:
        Where to train.
    progress:
        Called with ``(done, count)`` after each model.
    """
    if len(pool_x) != len(pool_y) or len(pool_x) < 2:
        raise ValueError(f"the pool needs at least 2 samples with labels; got {len(pool_x)} and {len(pool_y)}")
    folder = Path(cache_dir) / spec.key()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(asdict(spec), indent=1, sort_keys=True) + "\n")
    masks = pool_halves(spec, len(pool_x))
    states: list[dict[str, torch.Tensor]] = []
    trained = 0
    for i in range(spec.count):
        path = folder / f"ref{i}.pt"
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["pool_size"] == len(pool_x) and np.array_equal(saved["pool_in"].numpy(), masks[i]):
                states.append(saved["state"])
                if progress:
                    progress(i + 1, spec.count)
                continue
        half = torch.from_numpy(np.flatnonzero(masks[i]))
        state = _train_one(spec, i, pool_x[half].to(device), pool_y[half].to(device), device)
        tmp = path.with_suffix(".tmp")
        torch.save({"state": state, "pool_in": torch.from_numpy(masks[i]), "pool_size": len(pool_x)}, tmp)
        tmp.replace(path)  # a model is in the cache whole or not at all
        states.append(state)
        trained += 1
        if progress:
            progress(i + 1, spec.count)
    return ReferenceModels(spec, tuple(states), masks, trained, spec.count - trained, folder)
