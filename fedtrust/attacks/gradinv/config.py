"""Configuration of the gradient-inversion attack (Geiping et al. 2020), as data.

The defaults are the paper's scale and Geiping's "Inverting Gradients" CIFAR
settings for a ResNet: 24,000 iterations of signed Adam at lr 0.1 with a x0.1
decay at 3/8, 5/8 and 7/8 of the run, a total-variation prior of weight 1e-4,
pixels kept inside the normalised box, a Gaussian start and the cosine cost.
A run builds its settings from the run config
(:meth:`fedtrust.config.RunConfig.gradinv_settings` and :meth:`GradInvConfig.from_dict`);
tests and quick runs change fields with :meth:`GradInvConfig.replace`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedtrust.training import MODEL_MODES

OPTIMIZERS = ("adam", "sgd")
INITS = ("randn", "rand", "zeros")
COSTS = ("cosine", "layerwise-cosine", "l2")
LABEL_STRATEGIES = ("given", "infer")


@dataclass(frozen=True)
class GradInvConfig:
    """Settings of one gradient-inversion attack.

    Attributes
    ----------
    iterations:
        Optimisation steps per reconstruction (24,000 in the paper).
    restarts:
        Independent starts per observed update; the one with the lowest final
        gradient-matching cost is kept (Geiping's ``restarts``).
    lr:
        Step size of the optimiser on the (normalised) dummy images.
    tv_weight:
        Weight of the total-variation prior (mean absolute difference of
        neighbouring pixels, Geiping's ``total_variation``).
    optimizer:
        ``"adam"`` (Geiping) or ``"sgd"``.
    lr_decay:
        Multiply the step size by 0.1 at 3/8, 5/8 and 7/8 of the iterations.
    signed:
        Step along the sign of the gradient (Geiping's signed Adam).
    boxed:
        After each step clamp the dummy to the normalised pixel box
        ``[(0 - mean) / std, (1 - mean) / std]``.
    init:
        Dummy start: ``"randn"`` (standard normal, Geiping), ``"rand"``
        (uniform in the pixel box) or ``"zeros"``.
    model_mode:
        ``"eval"`` (the default, Geiping's attacks: BatchNorm uses its running
        statistics) or ``"train"`` (BatchNorm normalises with the statistics of the
        dummy batch, as the client's ``model.train()`` gradient does; the running
        statistics are not updated).
    seed:
        Seed of the dummy starts. Restart ``k`` of every problem starts from the
        same draw, so two attacks with the same seed and budget start equal.
    cost:
        Gradient-matching cost over the attacker's views (see
        :mod:`fedtrust.attacks.gradinv.targets`):
        ``"cosine"``: Geiping's ``1 - sum_l <g_l, o_l> / (sqrt(sum_l |g_l|^2) sqrt(sum_l |o_l|^2))``,
        inner products and squared norms summed over the layers (views);
        ``"layerwise-cosine"``: ``sum_l (1 - cos(g_l, o_l))``, each view on its own;
        ``"l2"``: ``sum_l |g_l - o_l|^2`` (DLG; not scale-free).
    label_strategy:
        ``"given"``: the true labels are passed to the attack; ``"infer"``: they
        are read off the last layer's gradient (:mod:`fedtrust.attacks.gradinv.labels`).
    batched:
        ``"auto"``, ``True`` or ``False``: run the independent reconstructions of
        one call (restarts, clients) as one vectorised problem (``torch.func.vmap``)
        or one after another. ``"auto"`` batches on CUDA; elsewhere it times one
        step both ways and keeps the faster (on a CPU batching pays off for small
        models and not for ResNet-18; see ``bench/gradinv.py``).
    naive_start:
        Whether the adaptive attacker also optimises the naive attacker's objective
        (the decoded update taken as the gradient) as extra starts, and keeps whichever
        start its own cost (what was sent, and the codec's bounds) judges best; only
        where the two objectives differ (:mod:`fedtrust.attacks.gradinv.targets`).
    """

    iterations: int = 24_000
    restarts: int = 1
    lr: float = 0.1
    tv_weight: float = 1e-4
    optimizer: str = "adam"
    lr_decay: bool = True
    signed: bool = True
    boxed: bool = True
    init: str = "randn"
    model_mode: str = "eval"
    seed: int = 0
    cost: str = "cosine"
    label_strategy: str = "given"
    batched: str | bool = "auto"
    naive_start: bool = True

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("init", self.init, INITS)
        _choice("cost", self.cost, COSTS)
        _choice("label_strategy", self.label_strategy, LABEL_STRATEGIES)
        _choice("model_mode", self.model_mode, MODEL_MODES)
        if not (isinstance(self.batched, bool) or self.batched == "auto"):
            raise ValueError(f"batched={self.batched!r} is not allowed; allowed: 'auto', True, False")
        for key in ("lr_decay", "signed", "boxed", "naive_start"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key}={getattr(self, key)!r} must be true or false")
        for key in ("iterations", "restarts", "seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key}={value!r} must be an integer")
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations!r} is not allowed; allowed: an integer >= 1")
        if self.restarts < 1:
            raise ValueError(f"restarts={self.restarts!r} is not allowed; allowed: an integer >= 1")
        for key in ("lr", "tv_weight"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key}={value!r} must be a number")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} is not allowed; allowed: a number > 0")
        if not self.tv_weight >= 0:
            raise ValueError(f"tv_weight={self.tv_weight!r} is not allowed; allowed: a number >= 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GradInvConfig:
        """Build a config from a dict of typed values; keys may use ``-`` or ``_`` (``tv-weight``).

        Values are taken as they are: text from TOML or a command line is parsed by the
        run config (:meth:`fedtrust.config.RunConfig.gradinv_settings`) or the caller.

        Raises
        ------
        ValueError
            For an unknown key (naming it and the known keys) or a value that is
            not allowed (naming the key and the allowed values).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown gradient-inversion setting {raw_key!r}; "
                                 f"known: {', '.join(sorted(known))}")
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for run records)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> GradInvConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")

