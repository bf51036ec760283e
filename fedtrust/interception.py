"""What an honest-but-curious server sees of one client's update.

The strategy builds an :class:`InterceptedUpdate` for each chosen client and round
and hands it to the attackers; it is also saved in the run folder so that attacks
can be re-run offline with other settings. Everything in it is what a real server
holds, except ``batch_indices``, which is kept for scoring the attack only (which
images were really in the batch) and must never be used by an attack.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtrust.compression.spec import CompressorSpec

FORMAT_VERSION = 1


@dataclass
class InterceptedUpdate:
    """One client's update as the server received it.

    Attributes
    ----------
    round:
        Server round (1-based).
    node_id:
        Flower node id of the client.
    partition_id:
        The client's data partition.
    payload:
        The raw arrays the client sent (both exchanges for PowerSGD allreduce).
    decoded:
        The dense update the server decoded from ``payload``.
    global_state:
        The global model state dict (parameters and buffers) the update was computed on.
    train_config:
        The client's training configuration: ``local-mode``, ``batch-size``, ``lr``,
        ``local-epochs``, ``num-examples`` and the model/dataset names.
    compressor:
        Compressor name and options: ``{"compressor", "level", "error_feedback", ...}``.
    public_state:
        Compressor state a server knows: PowerSGD's ``Q/{name}`` and ``P_hat/{name}``.
    batch_indices:
        Train-split indices of the client's batch. For scoring only.
    """

    round: int
    node_id: int
    partition_id: int
    payload: dict[str, np.ndarray]
    decoded: dict[str, torch.Tensor]
    global_state: dict[str, torch.Tensor]
    train_config: dict[str, Any]
    compressor: dict[str, Any]
    public_state: dict[str, np.ndarray] = field(default_factory=dict)
    batch_indices: np.ndarray | None = None

    @property
    def spec(self) -> CompressorSpec:
        """The compressor spec (``compressor`` is its stored dict form)."""
        return CompressorSpec.from_dict(self.compressor)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write to ``path`` (``torch.save``; readable with ``weights_only=True``).

        An existing file is never replaced unless ``overwrite``: the new file is linked into
        place, which fails atomically (``FileExistsError``) when the name is taken.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = asdict(self)
        blob["payload"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.payload.items()}
        blob["public_state"] = {k: torch.from_numpy(np.ascontiguousarray(v))
                                for k, v in self.public_state.items()}
        blob["batch_indices"] = (None if self.batch_indices is None
                                 else torch.from_numpy(np.asarray(self.batch_indices, dtype=np.int64)))
        blob["decoded"] = {k: v.detach().cpu() for k, v in self.decoded.items()}
        blob["global_state"] = {k: v.detach().cpu() for k, v in self.global_state.items()}
        blob["format_version"] = FORMAT_VERSION
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(blob, tmp)
        if overwrite:
            tmp.replace(path)
            return path
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path} exists: an intercepted update is never overwritten") from None
        finally:
            tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | Path) -> InterceptedUpdate:
        """Read a file written by :meth:`save` (safe: ``weights_only=True``)."""
        blob = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        version = blob.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: intercepted-update format {version!r}, expected {FORMAT_VERSION}")
        blob["payload"] = {k: v.numpy() for k, v in blob["payload"].items()}
        blob["public_state"] = {k: v.numpy() for k, v in blob["public_state"].items()}
        if blob["batch_indices"] is not None:
            blob["batch_indices"] = blob["batch_indices"].numpy()
        return cls(**blob)
