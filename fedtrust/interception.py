"""What an honest-but-curious server sees of one client's update.

The strategy builds an :class:`InterceptedUpdate` for each chosen client and round
and hands it to the attackers; it is also saved in the run folder so that attacks
can be re-run offline with other settings. Everything in it is what a real server
holds, except ``batch_indices``, which is kept for scoring the attack only (which
images were really in the batch) and must never be used by an attack.

On disk (format 2) a round's global weights are written once, to a file of their own
that every intercepted update of that round names (``global_state_file``, relative to
its folder), instead of once per client: for ResNet-18 that is 45 MB a client saved. A
decoded tensor that is exactly an array the client sent (every tensor of an uncompressed
update, the dense tensors of a compressed one) is kept once, as the sent array.
:meth:`InterceptedUpdate.load` reads both formats and always returns the full record.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtrust.compression.spec import CompressorSpec

FORMAT_VERSION = 2
#: Formats :meth:`InterceptedUpdate.load` reads (1: the global weights inside every file).
READABLE_VERSIONS = (1, 2)


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

    def save(self, path: str | Path, overwrite: bool = False, global_state_file: str | Path | None = None) -> Path:
        """Write to ``path`` (``torch.save``; readable with ``weights_only=True``).

        An existing file is never replaced unless ``overwrite``: the new file is linked into
        place, which fails atomically (``FileExistsError``) when the name is taken. With
        ``global_state_file`` (in ``path``'s folder) the global weights go there instead,
        written only when that file does not exist yet: the round's other updates share it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = asdict(self)
        blob["payload"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.payload.items()}
        blob["public_state"] = {k: torch.from_numpy(np.ascontiguousarray(v))
                                for k, v in self.public_state.items()}
        blob["batch_indices"] = (None if self.batch_indices is None
                                 else torch.from_numpy(np.asarray(self.batch_indices, dtype=np.int64)))
        copies = _copies_in_payload(self.decoded, blob["payload"])
        blob["decoded"] = _cpu({k: v for k, v in self.decoded.items() if k not in copies})
        blob["decoded_in_payload"] = copies
        if global_state_file is None:
            blob["global_state"] = _cpu(self.global_state)
        else:
            shared = Path(global_state_file)
            if shared.parent.resolve() != path.parent.resolve():
                raise ValueError(f"global_state_file {shared} must be in the folder of {path}")
            if not shared.exists():
                _write_new({"round": self.round, "global_state": _cpu(self.global_state)}, shared, overwrite=True)
            blob["global_state"] = None
            blob["global_state_file"] = shared.name
        blob["format_version"] = FORMAT_VERSION
        return _write_new(blob, path, overwrite)

    @classmethod
    def load(cls, path: str | Path) -> InterceptedUpdate:
        """Read a file written by :meth:`save` (safe: ``weights_only=True``), with its global weights."""
        path = Path(path).expanduser()
        blob = torch.load(path, map_location="cpu", weights_only=True)
        version = blob.pop("format_version", None)
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{path}: intercepted-update format {version!r}, expected one of {READABLE_VERSIONS}")
        shared = blob.pop("global_state_file", None)
        if shared is not None:
            if Path(shared).name != shared:
                raise ValueError(f"{path}: global_state_file {shared!r} must name a file in the same folder")
            stored = torch.load(path.parent / shared, map_location="cpu", weights_only=True)
            if stored.get("round") != blob["round"]:
                raise ValueError(f"{path}: {shared} holds round {stored.get('round')}'s weights, "
                                 f"not round {blob['round']}'s")
            blob["global_state"] = stored["global_state"]
        copies = blob.pop("decoded_in_payload", {})
        blob["decoded"].update({name: blob["payload"][key].clone() for name, key in copies.items()})
        blob["payload"] = {k: v.numpy() for k, v in blob["payload"].items()}
        blob["public_state"] = {k: v.numpy() for k, v in blob["public_state"].items()}
        if blob["batch_indices"] is not None:
            blob["batch_indices"] = blob["batch_indices"].numpy()
        return cls(**blob)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}


def _copies_in_payload(decoded: dict[str, torch.Tensor], payload: dict[str, torch.Tensor]) -> dict[str, str]:
    """``name -> payload key`` for the decoded tensors that are exactly a sent array (a dense tensor
    sent as it is: ``name`` or ``.../name``), which the file then keeps once."""
    copies = {}
    for name, value in decoded.items():
        for key in (name, *(k for k in payload if k.endswith("/" + name))):
            sent = payload.get(key)
            if (sent is not None and sent.dtype == value.dtype and sent.shape == value.shape
                    and torch.equal(sent, value.detach().cpu())):
                copies[name] = key
                break
    return copies


def _write_new(blob: dict[str, Any], path: Path, overwrite: bool) -> Path:
    """``torch.save`` to a temporary name, then into place (never replacing ``path`` unless ``overwrite``)."""
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
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
