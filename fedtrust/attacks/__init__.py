"""Attacks of an honest-but-curious server on intercepted updates.

Gradient inversion lives in :mod:`fedtrust.attacks.gradinv`; membership
inference, when present, in :mod:`fedtrust.attacks.mia`.
"""

from fedtrust.attacks.gradinv import (
    GradInvConfig,
    GradInvResult,
    attack_intercepted,
    infer_labels,
    invert_gradients,
    invert_targets,
    make_target,
)

__all__ = [
    "GradInvConfig",
    "GradInvResult",
    "attack_intercepted",
    "infer_labels",
    "invert_gradients",
    "invert_targets",
    "make_target",
]
