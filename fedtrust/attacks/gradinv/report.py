"""Attack intercepted updates and record the results in a run folder.

:class:`GradInvReport` is what the ServerApp registers as an interception callback
(and what ``python -m fedtrust.attacks.gradinv.replay`` runs offline on saved
updates). For each intercepted update it runs the configured attackers and writes

``gradinv.csv``
    round, client, image, label, label_inferred, attacker, compressor, level, ssim,
    psnr, mse, iterations, seconds, seed (one row per reconstructed image)
``gradinv/round{R}_client{P}_original_{i}.png`` and ``..._{attacker}_{i}.png``
    the true image and each attacker's reconstruction
``gradinv_grid.png``
    originals above each attacker's reconstructions, in the style of the paper's Figure 1

Ground truth comes from the scoring-only ``batch_indices`` of the intercepted update;
the attack itself never sees it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedtrust.attacks.gradinv.api import GradInvResult, attack_intercepted
from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.interception import InterceptedUpdate

GRADINV_COLUMNS = ("round", "client", "image", "label", "label_inferred", "attacker", "compressor",
                   "level", "ssim", "psnr", "mse", "iterations", "seconds", "seed")


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


@dataclass
class GradInvReport:
    """Interception callback that inverts updates and writes ``gradinv.csv``, PNGs and a grid.

    Parameters
    ----------
    folder:
        The run folder.
    model_fn:
        Builds a fresh model of the run's architecture.
    spec:
        The dataset's :class:`~fedtrust.data.specs.DatasetSpec` (normalisation, image shape).
    train_images, train_labels:
        The train split (uint8 ``(N, H, W, C)`` and labels), to score reconstructions.
    config:
        Attack settings.
    attackers:
        ``("naive",)``, ``("adaptive",)`` or both.
    rounds, clients:
        Which intercepted updates to attack (``None``: all).
    """

    folder: Path
    model_fn: Callable[[], nn.Module]
    spec: object
    train_images: np.ndarray
    train_labels: np.ndarray
    config: GradInvConfig
    attackers: Sequence[str] = ("naive", "adaptive")
    rounds: set[int] | None = None
    clients: set[int] | None = None
    device: torch.device | str | None = None
    progress: bool = True
    results: list[tuple[InterceptedUpdate, str, GradInvResult, torch.Tensor]] = field(default_factory=list)

    @property
    def csv_path(self) -> Path:
        return Path(self.folder) / "gradinv.csv"

    def wants(self, item: InterceptedUpdate) -> bool:
        """Whether this intercepted update is to be attacked."""
        return ((self.rounds is None or item.round in self.rounds)
                and (self.clients is None or item.partition_id in self.clients))

    def __call__(self, item: InterceptedUpdate) -> list[dict[str, object]]:
        """Attack one intercepted update with every attacker; append its rows and images."""
        if not self.wants(item):
            return []
        if item.batch_indices is None:
            raise ValueError(f"round {item.round} client {item.partition_id}: no batch indices to score "
                             "against (gradient inversion needs local-mode='fedsgd')")
        idx = np.asarray(item.batch_indices, dtype=np.int64)
        truth = to_unit_images(self.train_images[idx])
        labels = torch.as_tensor(self.train_labels[idx], dtype=torch.long)
        rows: list[dict[str, object]] = []
        for attacker in self.attackers:
            result = attack_intercepted(item, self.model_fn, self.spec, self.config, attacker,
                                        labels=labels if self.config.label_strategy == "given" else None,
                                        ground_truth=truth, num_images=len(idx), device=self.device,
                                        progress=self.progress)
            self.results.append((item, attacker, result, truth))
            rows += self._rows(item, attacker, result, labels)
            self._pngs(item, attacker, result, truth)
        self._append(rows)
        return rows

    def _rows(self, item: InterceptedUpdate, attacker: str, result: GradInvResult,
              labels: torch.Tensor) -> list[dict[str, object]]:
        rows = []
        for score in result.scores or []:
            matched = int(score["matched"])
            rows.append({
                "round": item.round, "client": item.partition_id, "image": matched,
                "label": int(labels[matched]), "label_inferred": bool(result.label_inferred),
                "attacker": attacker, "compressor": item.compressor.get("compressor"),
                "level": item.compressor.get("level") if item.compressor.get("compressor") != "none" else 0,
                "ssim": round(float(score["ssim"]), 6), "psnr": round(float(score["psnr"]), 4),
                "mse": round(float(score["mse"]), 6), "iterations": result.iterations,
                "seconds": round(result.seconds, 3), "seed": self.config.seed,
            })
        return rows

    def _pngs(self, item: InterceptedUpdate, attacker: str, result: GradInvResult, truth: torch.Tensor) -> None:
        out = Path(self.folder) / "gradinv"
        stem = f"round{item.round}_client{item.partition_id}"
        for j, image in enumerate(truth):
            path = out / f"{stem}_original_{j}.png"
            if not path.exists():
                save_png(image, path)
        matched = {int(s["index"]): int(s["matched"]) for s in (result.scores or [])}
        for i, image in enumerate(result.images):
            save_png(image, out / f"{stem}_{attacker}_{matched.get(i, i)}.png")

    def _append(self, rows: list[dict[str, object]]) -> None:
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=GRADINV_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def missing_clients(self) -> set[int]:
        """Chosen clients (``clients``) whose update was never attacked: not in the federation,
        not sampled, or failed in the attack round."""
        if self.clients is None:
            return set()
        return set(self.clients) - {item.partition_id for item, *_ in self.results}

    def write_grid(self, path: Path | None = None) -> Path | None:
        """Originals above each attacker's reconstructions (one column per attacked image)."""
        if not self.results:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        columns: list[tuple[str, torch.Tensor, dict[str, tuple[torch.Tensor, float]]]] = []
        by_key: dict[tuple[int, int, int], dict[str, tuple[torch.Tensor, float]]] = {}
        originals: dict[tuple[int, int, int], torch.Tensor] = {}
        for item, attacker, result, truth in self.results:
            scores = {int(s["index"]): s for s in (result.scores or [])}
            for i, image in enumerate(result.images):
                j = int(scores[i]["matched"]) if i in scores else i
                key = (item.round, item.partition_id, j)
                originals[key] = truth[j]
                by_key.setdefault(key, {})[attacker] = (image, float(scores[i]["ssim"]) if i in scores else float("nan"))
        for key in sorted(by_key):
            columns.append((f"r{key[0]} c{key[1]} #{key[2]}", originals[key], by_key[key]))
        attackers = [a for a in self.attackers if any(a in c[2] for c in columns)]
        spec = self.results[0][0].compressor
        algo = "SGD" if spec.get("compressor") == "none" else f"{spec.get('compressor')} level {spec.get('level')}"
        fig, axes = plt.subplots(1 + len(attackers), len(columns), squeeze=False,
                                 figsize=(1.6 * len(columns) + 1.2, 1.7 * (1 + len(attackers))))
        for col, (title, original, recon) in enumerate(columns):
            rows = [("original", original, None)] + [(a, *recon[a]) if a in recon else (a, None, None)
                                                      for a in attackers]
            for r, (label, image, ssim_value) in enumerate(rows):
                ax = axes[r][col]
                ax.set_xticks([])
                ax.set_yticks([])
                if image is not None:
                    arr = image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
                    ax.imshow(arr[:, :, 0] if arr.shape[2] == 1 else arr, cmap="gray" if arr.shape[2] == 1 else None,
                              vmin=0, vmax=1)
                if r == 0:
                    ax.set_title(title, fontsize=7)
                elif ssim_value is not None:
                    ax.set_title(f"SSIM {ssim_value:.3f}", fontsize=7)
                if col == 0:
                    ax.set_ylabel(label if r == 0 else f"{algo}\n{label}", fontsize=7)
        fig.suptitle(f"Gradient inversion: {algo}", fontsize=9)
        fig.tight_layout()
        path = path or Path(self.folder) / "gradinv_grid.png"
        fig.savefig(path, dpi=150)
        plt.close(fig)
        return path
