"""Attack intercepted updates and record the results in a run folder.

:class:`GradInvReport` is what the ServerApp registers as an interception callback
(and what ``python -m fedtrust.attacks.gradinv.replay`` runs offline on saved
updates). For each intercepted update it runs the configured attackers
(:func:`fedtrust.attacks.gradinv.api.attack`) and writes

``gradinv.csv``
    one :class:`~fedtrust.records.GradInvRow` per reconstructed image and attacker: round,
    client, image, label, label_inferred, attacker, compressor, level, ssim, psnr, mse,
    iterations, seconds, seed
``gradinv/round{R}_client{P}_original_{i}.png`` and ``..._{attacker}_{i}.png``
    the true image and each attacker's reconstruction, named by
    :func:`fedtrust.records.gradinv_png`
``gradinv_grid.png``
    originals above each attacker's reconstructions, in the style of the paper's Figure 1

Ground truth comes from the scoring-only ``batch_indices`` of the intercepted update;
the attack itself never sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from fedtrust.attacks.gradinv.api import GradInvResult, attack
from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.compression.registry import codec_class
from fedtrust.compression.spec import CompressorSpec
from fedtrust.interception import InterceptedUpdate
from fedtrust.records import GRADINV_CSV, GradInvRow, append_rows, compressor_cells, gradinv_png

if TYPE_CHECKING:
    from fedtrust.data.specs import DatasetSpec


def to_unit_images(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` images as float ``(N, C, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def save_png(image: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Save a ``(C, H, W)`` image in [0, 1] as a PNG, enlarged ``scale`` times (nearest)."""
    from PIL import Image

    arr = (image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    mode = "L" if arr.shape[2] == 1 else "RGB"
    img = Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode=mode)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@dataclass(frozen=True)
class Attacked:
    """One attacker's result on one intercepted update (what the grid is drawn from)."""

    round: int
    client: int
    spec: CompressorSpec
    attacker: str
    result: GradInvResult
    truth: torch.Tensor

    def matched(self) -> list[tuple[int, torch.Tensor, float]]:
        """``(true image index, reconstruction, SSIM)`` of each reconstruction."""
        scores = {int(s["index"]): s for s in (self.result.scores or [])}
        return [(int(scores[i]["matched"]), image, float(scores[i]["ssim"])) if i in scores
                else (i, image, float("nan")) for i, image in enumerate(self.result.images)]


@dataclass
class GradInvReport:
    """Interception callback that inverts updates and writes ``gradinv.csv``, PNGs and a grid.

    Parameters
    ----------
    folder:
        The run folder (or a replay's output folder).
    model_fn:
        Builds a fresh model of the run's architecture (one per attack).
    spec:
        The data set's spec (normalisation, image shape).
    train_images, train_labels:
        The train split (uint8 ``(N, H, W, C)`` and labels), to score reconstructions.
    config:
        Attack settings.
    attackers:
        ``("naive",)``, ``("adaptive",)`` or both.
    rounds, clients:
        Which intercepted updates to attack (``None``: all).
    device, progress:
        Where the attacks run (``None``: the ``"auto"`` device) and whether to show a progress bar.
    """

    folder: Path
    model_fn: Callable[[], nn.Module]
    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    config: GradInvConfig
    attackers: Sequence[str] = ("naive", "adaptive")
    rounds: set[int] | None = None
    clients: set[int] | None = None
    device: torch.device | None = None
    progress: bool = True
    results: list[Attacked] = field(default_factory=list)

    @property
    def csv_path(self) -> Path:
        return Path(self.folder) / GRADINV_CSV

    def wants(self, item: InterceptedUpdate) -> bool:
        """Whether this intercepted update is to be attacked."""
        return ((self.rounds is None or item.round in self.rounds)
                and (self.clients is None or item.partition_id in self.clients))

    def __call__(self, item: InterceptedUpdate) -> list[GradInvRow]:
        """Attack one intercepted update with every attacker; append its rows and images."""
        if not self.wants(item):
            return []
        if item.batch_indices is None:
            raise ValueError(f"round {item.round} client {item.partition_id}: no batch indices to score "
                             "against (gradient inversion needs local-mode='fedsgd')")
        idx = np.asarray(item.batch_indices, dtype=np.int64)
        truth = to_unit_images(self.train_images[idx])
        labels = torch.as_tensor(self.train_labels[idx], dtype=torch.long)
        rows: list[GradInvRow] = []
        for attacker in self.attackers:
            result = attack(item, self.model_fn(), self.config, attacker, dataset=self.spec,
                            labels=labels if self.config.label_strategy == "given" else None,
                            ground_truth=truth, device=self.device, progress=self.progress)
            done = Attacked(round=item.round, client=item.partition_id, spec=item.spec, attacker=attacker,
                            result=result, truth=truth)
            self.results.append(done)
            rows += self._rows(done, labels)
            self._pngs(done)
        append_rows(self.csv_path, rows)
        return rows

    def _rows(self, done: Attacked, labels: torch.Tensor) -> list[GradInvRow]:
        cells = compressor_cells(done.spec)
        result = done.result
        return [GradInvRow(round=done.round, client=done.client, image=int(s["matched"]),
                           label=int(labels[int(s["matched"])]), label_inferred=bool(result.label_inferred),
                           attacker=done.attacker, **cells, ssim=round(float(s["ssim"]), 6),
                           psnr=round(float(s["psnr"]), 4), mse=round(float(s["mse"]), 6),
                           iterations=result.iterations, seconds=round(result.seconds, 3), seed=self.config.seed,
                           model_mode=self.config.model_mode)
                for s in result.scores or []]

    def _pngs(self, done: Attacked) -> None:
        for j, image in enumerate(done.truth):
            path = gradinv_png(self.folder, done.round, done.client, "original", j)
            if not path.exists():
                save_png(image, path)
        for j, image, _ in done.matched():
            save_png(image, gradinv_png(self.folder, done.round, done.client, done.attacker, j))

    def missing_clients(self) -> set[int]:
        """Chosen clients (``clients``) whose update was never attacked: not in the federation,
        not sampled, or failed in the attack round."""
        if self.clients is None:
            return set()
        return set(self.clients) - {done.client for done in self.results}

    def write_grid(self, path: Path | None = None) -> Path | None:
        """Originals above each attacker's reconstructions (one column per attacked image)."""
        if not self.results:
            return None
        by_key: dict[tuple[int, int, int], dict[str, tuple[torch.Tensor, float]]] = {}
        originals: dict[tuple[int, int, int], torch.Tensor] = {}
        for done in self.results:
            for j, image, ssim_value in done.matched():
                key = (done.round, done.client, j)
                originals[key] = done.truth[j]
                by_key.setdefault(key, {})[done.attacker] = (image, ssim_value)
        keys = sorted(by_key)
        attackers = [a for a in self.attackers if any(a in by_key[k] for k in keys)]
        spec = self.results[0].spec
        algo = codec_class(spec.name).label(spec.level)
        fig = Figure(figsize=(1.6 * len(keys) + 1.2, 1.7 * (1 + len(attackers))))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1 + len(attackers), len(keys), squeeze=False)
        for col, key in enumerate(keys):
            _draw(axes[0][col], originals[key], f"r{key[0]} c{key[1]} #{key[2]}")
            for r, attacker in enumerate(attackers, start=1):
                image, ssim_value = by_key[key].get(attacker, (None, None))
                _draw(axes[r][col], image, None if ssim_value is None else f"SSIM {ssim_value:.3f}")
        axes[0][0].set_ylabel("original", fontsize=7)
        for r, attacker in enumerate(attackers, start=1):
            axes[r][0].set_ylabel(f"{algo}\n{attacker}", fontsize=7)
        fig.suptitle(f"Gradient inversion: {algo}", fontsize=9)
        fig.tight_layout()
        path = path or Path(self.folder) / "gradinv_grid.png"
        fig.savefig(path, dpi=150)
        return path


def _draw(ax: Axes, image: torch.Tensor | None, title: str | None) -> None:
    """One panel of the grid: ``image`` (``(C, H, W)`` in [0, 1], or none) under ``title``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is not None:
        arr = image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        gray = arr.shape[2] == 1
        ax.imshow(arr[:, :, 0] if gray else arr, cmap="gray" if gray else None, vmin=0, vmax=1)
    if title is not None:
        ax.set_title(title, fontsize=7)
