"""Gradient inversion ("Inverting Gradients", Geiping et al. 2020) against compressed updates.

:func:`attack` inverts an intercepted update (the one entry point);
:func:`reconstruct_batch` runs the optimisation on many prepared problems at once.
Modules: :mod:`.config` (settings as data), :mod:`.labels` (iDLG / LLG label
inference), :mod:`.targets` (the naive and adaptive attackers' views of an update),
:mod:`.reconstruct` (the batched optimisation), :mod:`.api` (the attack),
:mod:`.report` (a run folder's ``gradinv.csv`` and PNGs) and :mod:`.replay` (attack
saved updates again, offline).
"""

from fedtrust.attacks.gradinv.api import GradInvResult, attack
from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.attacks.gradinv.labels import infer_labels
from fedtrust.attacks.gradinv.reconstruct import Problem, Reconstruction, reconstruct_batch

__all__ = ["GradInvConfig", "GradInvResult", "Problem", "Reconstruction", "attack", "infer_labels",
           "reconstruct_batch"]
