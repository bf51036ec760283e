"""Which samples an attack is asked about, and how they are split.

*Members* are samples the clients trained on; *non-members* are held-out
samples no client ever saw (e.g. the test split, or train-split samples outside
every partition: :func:`heldout_indices`). The attack gets a seeded draw of
candidates from both pools (by default equally many of each, as the paper's
"attack success rate" assumes) and splits them, stratified by membership, into
a *calibration* part (used only to choose thresholds) and a disjoint
*evaluation* part (the only one metrics are reported on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MembershipSplit:
    """A draw of candidates and their calibration/evaluation split.

    Candidates are ordered members first, then non-members: candidate ``i`` is
    ``member_pool[members[i]]`` for ``i < len(members)`` and
    ``nonmember_pool[nonmembers[i - len(members)]]`` after.

    Attributes
    ----------
    members:
        Chosen positions in the member pool.
    nonmembers:
        Chosen positions in the non-member pool.
    calibration:
        Sorted candidate positions used to choose thresholds.
    evaluation:
        Sorted candidate positions the metrics are computed on; disjoint from
        ``calibration``, together they cover every candidate.
    """

    members: np.ndarray
    nonmembers: np.ndarray
    calibration: np.ndarray
    evaluation: np.ndarray

    def __post_init__(self) -> None:
        n = self.num_candidates
        cal, ev = np.asarray(self.calibration), np.asarray(self.evaluation)
        if np.intersect1d(cal, ev).size:
            raise ValueError("calibration and evaluation candidates overlap")
        if not np.array_equal(np.sort(np.r_[cal, ev]), np.arange(n)):
            raise ValueError("calibration and evaluation must partition the candidates")
        if len(np.unique(self.members)) != len(self.members) or \
                len(np.unique(self.nonmembers)) != len(self.nonmembers):
            raise ValueError("a pool position was drawn twice")
        member = self.is_member
        for part, idx in (("calibration", cal), ("evaluation", ev)):
            if not member[idx].any() or member[idx].all():
                raise ValueError(f"the {part} part needs members and non-members")

    @property
    def num_candidates(self) -> int:
        """Members plus non-members drawn."""
        return len(self.members) + len(self.nonmembers)

    @property
    def is_member(self) -> np.ndarray:
        """Boolean membership of every candidate, in candidate order."""
        return np.r_[np.ones(len(self.members), dtype=bool), np.zeros(len(self.nonmembers), dtype=bool)]


def draw_membership_split(num_member_pool: int, num_nonmember_pool: int, *, seed: int,
                          calibration_fraction: float = 0.5, balance: bool = True,
                          max_per_side: int | None = None) -> MembershipSplit:
    """Draw candidates from both pools and split them into calibration and evaluation parts.

    Parameters
    ----------
    num_member_pool, num_nonmember_pool:
        Sizes of the member and non-member pools.
    seed:
        Seed of the draw and of the split.
    calibration_fraction:
        Share of each side (members, non-members) put in the calibration part;
        strictly between 0 and 1.
    balance:
        Draw equally many members and non-members (the smaller pool's size, or
        ``max_per_side``). With ``False`` every sample of both pools is a
        candidate (up to ``max_per_side`` per side).
    max_per_side:
        Upper bound on the candidates drawn per side.

    Returns
    -------
    MembershipSplit
    """
    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must lie in (0, 1), got {calibration_fraction}")
    if num_member_pool < 2 or num_nonmember_pool < 2:
        raise ValueError("each pool needs at least 2 samples (one per part)")
    rng = np.random.default_rng(seed)
    n_mem, n_non = int(num_member_pool), int(num_nonmember_pool)
    if balance:
        n_mem = n_non = min(n_mem, n_non)
    if max_per_side is not None:
        n_mem, n_non = min(n_mem, int(max_per_side)), min(n_non, int(max_per_side))
    members = np.sort(rng.choice(num_member_pool, size=n_mem, replace=False))
    nonmembers = np.sort(rng.choice(num_nonmember_pool, size=n_non, replace=False))

    def take(count: int, offset: int) -> np.ndarray:
        k = min(max(int(round(calibration_fraction * count)), 1), count - 1)
        return offset + rng.permutation(count)[:k]

    calibration = np.sort(np.r_[take(n_mem, 0), take(n_non, n_mem)]).astype(np.int64)
    evaluation = np.setdiff1d(np.arange(n_mem + n_non), calibration).astype(np.int64)
    return MembershipSplit(members=members, nonmembers=nonmembers,
                           calibration=calibration, evaluation=evaluation)


def heldout_indices(num_samples: int, used: np.ndarray) -> np.ndarray:
    """Indices in ``range(num_samples)`` that are not in ``used`` (a non-member pool)."""
    used = np.asarray(used, dtype=np.int64).reshape(-1)
    if used.size and (used.min() < 0 or used.max() >= num_samples):
        raise ValueError(f"used indices must lie in [0, {num_samples})")
    return np.setdiff1d(np.arange(int(num_samples), dtype=np.int64), used)
