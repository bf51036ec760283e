"""The strategy's checkpoint: everything a resumed run needs, written after each round.

``checkpoint.pt`` holds the round, the global state, the codec's server state (PowerSGD's
shared and per-client Q), the train-split indices the accepted FedSGD batches used,
the partitions that took part, the run's partition count, the attack errors so far and,
with client-level DP, the rounds each partition took part in.
It is written to a temporary file and renamed (a crash leaves the last good one), and is
readable with ``torch.load(weights_only=True)``: tensors, ints, strings and dicts only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A ``checkpoint.pt`` that cannot be read (truncated, corrupt, not fedtrust's)."""


@dataclass
class Checkpoint:
    """The strategy's state after ``round``."""

    round: int
    global_state: dict[str, torch.Tensor]
    codec_state: dict[str, Any] = field(default_factory=dict)
    trained_indices: list[np.ndarray] = field(default_factory=list)
    partitions_seen: set[int] = field(default_factory=set)
    num_partitions: int = 0
    attack_errors: list[str] = field(default_factory=list)
    #: Client-level DP: rounds each partition took part in.
    dp_rounds: dict[int, int] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename)."""
        blob = {
            "round": int(self.round),
            "global_state": {k: v.detach().cpu() for k, v in self.global_state.items()},
            "codec": self.codec_state,
            "trained_indices": [torch.from_numpy(np.asarray(i, dtype=np.int64)) for i in self.trained_indices],
            "partitions_seen": sorted(int(p) for p in self.partitions_seen),
            "num_partitions": int(self.num_partitions),
            "attack_errors": list(self.attack_errors),
            "dp_rounds": {int(k): int(v) for k, v in self.dp_rounds.items()},
        }
        tmp = path.with_suffix(".pt.tmp")
        torch.save(blob, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read a checkpoint, or :class:`CheckpointError` naming the file and what to do."""
        blob = load_checkpoint(path)
        return cls(round=int(blob["round"]), global_state=blob["global_state"], codec_state=blob.get("codec", {}),
                   trained_indices=[t.numpy() for t in blob.get("trained_indices", [])],
                   partitions_seen=set(blob.get("partitions_seen", [])),
                   num_partitions=int(blob.get("num_partitions", 0)),
                   attack_errors=[str(e) for e in blob.get("attack_errors", [])],
                   dp_rounds={int(k): int(v) for k, v in blob.get("dp_rounds", {}).items()})


def load_checkpoint(path: Path) -> dict:
    """A run folder's checkpoint as stored, or :class:`CheckpointError` naming the file and what to do."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or "round" not in blob or "global_state" not in blob:
            raise ValueError("not a fedtrust checkpoint (no round or global_state)")
    except Exception as err:  # noqa: BLE001 - truncated zip, unpickling error, wrong content, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt. "
            "Move it away to restart the run from round 1, or start a new run") from None
    return blob
