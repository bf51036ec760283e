"""Gradient inversion ("Inverting Gradients", Geiping et al. 2020) against compressed updates.

Modules: :mod:`.config` (settings as data), :mod:`.labels` (iDLG / LLG label
inference), :mod:`.targets` (the naive and adaptive attackers' views of an
update), :mod:`.reconstruct` (the batched optimisation) and :mod:`.api`.
"""

from fedtrust.attacks.gradinv.api import (
    GradInvResult,
    GradInvTarget,
    attack_intercepted,
    invert_gradients,
    invert_targets,
    make_target,
)
from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.attacks.gradinv.labels import infer_labels

__all__ = [
    "GradInvConfig",
    "GradInvResult",
    "GradInvTarget",
    "attack_intercepted",
    "infer_labels",
    "invert_gradients",
    "invert_targets",
    "make_target",
]
