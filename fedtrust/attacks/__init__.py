"""Attacks of an honest-but-curious server on intercepted updates.

Gradient inversion lives in :mod:`fedtrust.attacks.gradinv` (one entry point,
:func:`fedtrust.attacks.gradinv.attack`); membership inference in
:mod:`fedtrust.attacks.mia`.
"""

from fedtrust.attacks.gradinv import GradInvConfig, GradInvResult, attack, infer_labels

__all__ = ["GradInvConfig", "GradInvResult", "attack", "infer_labels"]
