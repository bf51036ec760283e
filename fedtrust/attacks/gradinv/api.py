"""Entry points: invert one observed update, many at once, or an intercepted one.

``observed`` is what the server holds of one client's update: a
:class:`~fedtrust.compression.base.Payload` (with its compressor: a
:class:`~fedtrust.compression.base.Compressor` instance or a spec dict such as
``{"compressor": "topk", "level": 1, "scope": "global"}``, plus PowerSGD's public
state ``Q/{name}``, ``P_hat/{name}``) or a dense update dict (name -> tensor over
the model's trainable parameters, in ``model.named_parameters()`` order).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.attacks.gradinv.labels import infer_labels
from fedtrust.attacks.gradinv.reconstruct import Problem, reconstruct
from fedtrust.attacks.gradinv.targets import ATTACKERS, build_views, decode_views
from fedtrust.compression.base import Compressor, Layout, Payload
from fedtrust.interception import InterceptedUpdate
from fedtrust.metrics import mean_scores, score_batch

Observed = Payload | Mapping[str, torch.Tensor]
CompressorLike = Compressor | Mapping[str, Any] | None


@dataclass
class GradInvResult:
    """What one gradient-inversion attack produced.

    Attributes
    ----------
    images:
        ``(N, C, H, W)`` reconstructions in [0, 1] (denormalised), on the CPU.
    labels:
        ``(N,)`` labels used for the reconstruction.
    label_inferred:
        Whether ``labels`` were inferred from the update (else given).
    loss:
        Final gradient-matching cost of the kept start (without the prior).
    scores:
        Per reconstruction ``{"index", "matched", "ssim", "psnr", "mse"}`` against
        the ground truth (after Hungarian matching); ``None`` without ground truth.
    seconds:
        Wall-clock seconds of the optimisation (shared by problems that ran batched).
    iterations:
        Optimisation steps.
    attacker:
        ``"naive"`` or ``"adaptive"``.
    restart:
        Which start was kept.
    batched:
        Whether it ran vectorised with other reconstructions.
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_inferred: bool
    loss: float
    scores: list[dict[str, float | int]] | None
    seconds: float
    iterations: int
    attacker: str = "naive"
    restart: int = 0
    batched: bool = False

    @property
    def mean_ssim(self) -> float:
        """Mean SSIM over the images (``nan`` without ground truth)."""
        return mean_scores(self.scores or [])["ssim"]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers (no images): for run records."""
        means = mean_scores(self.scores or [])
        return {"attacker": self.attacker, "num_images": int(self.images.shape[0]),
                "labels": [int(v) for v in self.labels], "label_inferred": self.label_inferred,
                "loss": self.loss, "seconds": self.seconds, "iterations": self.iterations,
                "restart": self.restart, "batched": self.batched,
                "ssim": means["ssim"], "psnr": means["psnr"], "mse": means["mse"],
                "scores": list(self.scores or [])}


@dataclass(frozen=True)
class GradInvTarget:
    """One observed update prepared for the attack (views and labels)."""

    problem: Problem
    label_inferred: bool
    attacker: str
    meta: dict[str, Any] = field(default_factory=dict)


def model_layout(model: nn.Module) -> Layout:
    """Names and shapes of the model's trainable parameters: the layout of an update."""
    return tuple((name, tuple(int(s) for s in p.shape)) for name, p in model.named_parameters()
                 if p.requires_grad)


def compressor_spec(compressor: CompressorLike, public_state: Mapping[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
    """A spec dict and the public state from a Compressor instance or a spec dict.

    ``public_state`` given explicitly wins over the compressor's own
    (``Compressor.public_state()`` or a ``"public_state"`` entry of the spec dict).
    """
    if compressor is None:
        return None, dict(public_state or {})
    if isinstance(compressor, Compressor):
        spec: dict[str, Any] = dict(compressor.describe())
        for attr in ("mode", "scope"):
            if attr not in spec and hasattr(compressor, attr):
                spec[attr] = getattr(compressor, attr)
        public = dict(compressor.public_state())
    elif isinstance(compressor, Mapping):
        spec = {k: v for k, v in compressor.items() if k != "public_state"}
        public = dict(compressor.get("public_state") or {})
    else:
        raise ValueError(f"compressor must be a Compressor, a spec dict or None, got {type(compressor).__name__}")
    public.update(public_state or {})
    public = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
              for k, v in public.items()}
    return spec, public


def _as_labels(labels: Any) -> torch.Tensor:
    t = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    return t.reshape(-1).to(torch.int64)


def make_target(model: nn.Module, observed: Observed, *, labels: Any = None,
                compressor: CompressorLike = None, public_state: Mapping[str, np.ndarray] | None = None,
                attacker: str = "naive", label_strategy: str = "given", num_images: int | None = None,
                decoded: Mapping[str, torch.Tensor] | None = None) -> GradInvTarget:
    """Build the attacker's views and labels of one observed update.

    Parameters
    ----------
    model:
        The model the update was computed on.
    observed:
        A Payload (with ``compressor``) or a dense update dict.
    labels:
        True labels (needed for ``label_strategy="given"``).
    compressor, public_state:
        The payload's compressor (instance or spec dict) and PowerSGD's public state.
    attacker:
        ``"naive"`` or ``"adaptive"`` (:mod:`fedtrust.attacks.gradinv.targets`).
    label_strategy:
        ``"given"`` or ``"infer"`` (:mod:`fedtrust.attacks.gradinv.labels`).
    num_images:
        Images behind the update; defaults to ``len(labels)``, else 1.
    decoded:
        The server's own decoded update, if it has one (used by the naive attacker
        and for label inference instead of decoding ``observed``).
    """
    if attacker not in ATTACKERS:
        raise ValueError(f"attacker={attacker!r} is not known; allowed: {', '.join(ATTACKERS)}")
    if label_strategy not in ("given", "infer"):
        raise ValueError(f"label_strategy={label_strategy!r} is not known; allowed: 'given', 'infer'")
    layout = model_layout(model)
    spec, public = compressor_spec(compressor, public_state)
    if isinstance(observed, Payload):
        arrays: Mapping[str, np.ndarray] | None = observed.arrays
        if spec is None:
            if not all(k.startswith("dense/") for k in arrays):
                raise ValueError("a compressed Payload needs its compressor (a Compressor or a spec dict)")
            spec = {"compressor": "none"}
        dense = dict(decoded) if decoded is not None else decode_views(arrays, layout, spec, public)
    elif isinstance(observed, Mapping):
        arrays, dense = None, {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)))
                               for k, v in observed.items()}
    else:
        raise ValueError(f"observed must be a Payload or a dict of tensors, got {type(observed).__name__}")
    views = build_views(attacker, layout, decoded=dense if attacker == "naive" or arrays is None else None,
                        arrays=arrays, spec=spec, public_state=public)
    if not views:
        raise ValueError("the observed update gives the attacker nothing to match")
    if num_images is None:
        num_images = len(_as_labels(labels)) if labels is not None else 1
    if label_strategy == "infer":
        label_t, inferred = infer_labels(dense, int(num_images)), True
    else:
        if labels is None:
            raise ValueError("label_strategy='given' needs labels=; or use label_strategy='infer'")
        label_t, inferred = _as_labels(labels), False
        if len(label_t) != int(num_images):
            raise ValueError(f"{len(label_t)} labels given for num_images={num_images}")
    return GradInvTarget(problem=Problem(views=tuple(views), labels=label_t), label_inferred=inferred,
                         attacker=attacker, meta={"compressor": spec or {"compressor": "none"}})


def _resolve_config(config: GradInvConfig | Mapping[str, Any] | None) -> GradInvConfig:
    if config is None:
        return GradInvConfig()
    if isinstance(config, GradInvConfig):
        return config
    if isinstance(config, Mapping):
        return GradInvConfig.from_dict(config)
    raise ValueError(f"config must be a GradInvConfig or a dict, got {type(config).__name__}")


def _as_images(images: Any) -> torch.Tensor:
    t = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    t = t.to(torch.float32)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"ground truth must be (N, C, H, W) in [0, 1], got shape {tuple(t.shape)}")
    return t


def _default_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def invert_targets(model: nn.Module, targets: Sequence[GradInvTarget], *,
                   config: GradInvConfig | Mapping[str, Any] | None = None,
                   image_shape: Sequence[int], mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None,
                   ground_truths: Sequence[Any | None] | None = None,
                   device: torch.device | str | None = None, progress: bool = True) -> list[GradInvResult]:
    """Invert several prepared targets together (vectorised where ``config.batched`` says so).

    Parameters
    ----------
    model:
        The model the updates were computed on (all targets share it).
    targets:
        From :func:`make_target`.
    config:
        A :class:`GradInvConfig` or a dict for :meth:`GradInvConfig.from_dict`.
    image_shape:
        ``(C, H, W)`` of one image.
    mean, std:
        Per-channel input normalisation (default 0 and 1: inputs are pixels in [0, 1]).
    ground_truths:
        Per target, its images ``(N, C, H, W)`` in [0, 1] or ``None``; for scoring only.
    device:
        Where to run (default: CUDA when available, else the CPU).
    progress:
        Show a progress bar.
    """
    cfg = _resolve_config(config)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
    channels = shape[0]
    mean_v = [0.0] * channels if mean is None else [float(v) for v in mean]
    std_v = [1.0] * channels if std is None else [float(v) for v in std]
    if len(mean_v) != channels or len(std_v) != channels:
        raise ValueError(f"mean and std need {channels} values each, got {len(mean_v)} and {len(std_v)}")
    truths = list(ground_truths) if ground_truths is not None else [None] * len(targets)
    if len(truths) != len(targets):
        raise ValueError(f"{len(truths)} ground truths for {len(targets)} targets")
    dev = _default_device(device)
    recs = reconstruct(model, [t.problem for t in targets], config=cfg, image_shape=shape,
                       mean=mean_v, std=std_v, device=dev, progress=progress)
    mean_t = torch.tensor(mean_v).reshape(channels, 1, 1)
    std_t = torch.tensor(std_v).reshape(channels, 1, 1)
    results = []
    for target, rec, truth in zip(targets, recs, truths):
        images = (rec.images * std_t + mean_t).clamp(0.0, 1.0)
        scores = score_batch(images, _as_images(truth)) if truth is not None else None
        results.append(GradInvResult(images=images, labels=target.problem.labels.clone(),
                                     label_inferred=target.label_inferred, loss=rec.loss, scores=scores,
                                     seconds=rec.seconds, iterations=rec.iterations,
                                     attacker=target.attacker, restart=rec.restart, batched=rec.batched))
    return results


def invert_gradients(model: nn.Module, observed: Observed, *, labels: Any = None,
                     compressor: CompressorLike = None, attacker: str = "naive",
                     config: GradInvConfig | Mapping[str, Any] | None = None,
                     ground_truth: Any = None, num_images: int | None = None,
                     image_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, device: torch.device | str | None = None,
                     progress: bool = True, public_state: Mapping[str, np.ndarray] | None = None,
                     decoded: Mapping[str, torch.Tensor] | None = None) -> GradInvResult:
    """Reconstruct the images behind one observed update (Geiping et al. 2020).

    Parameters
    ----------
    model:
        The model (global weights) the update was computed on.
    observed:
        A :class:`~fedtrust.compression.base.Payload` or a dense update dict.
    labels:
        True labels, used when ``config.label_strategy == "given"``.
    compressor:
        The payload's compressor: a Compressor instance (its ``public_state()`` is
        used) or a spec dict (``{"compressor", "level", "mode"/"scope", ...}``,
        optionally with ``"public_state"``); ``None`` for dense updates.
    attacker:
        ``"naive"`` (match the decoded dense update) or ``"adaptive"`` (match what
        was sent, knowing the compressor).
    config:
        A :class:`GradInvConfig` or a dict of its fields (default: the paper's scale).
    ground_truth:
        ``(N, C, H, W)`` true images in [0, 1], for scoring only.
    num_images:
        Images behind the update (default ``len(labels)``, else ``len(ground_truth)``, else 1).
    image_shape:
        ``(C, H, W)``; default: the ground truth's.
    mean, std:
        Per-channel normalisation of the model inputs (default 0 and 1).
    device:
        Where to run (default: CUDA when available, else the CPU).
    progress:
        Show a tqdm bar over the iterations.
    public_state:
        PowerSGD's ``Q/{name}`` and ``P_hat/{name}``, if not carried by ``compressor``.
    decoded:
        The server's decoded update, when it has it (else decoded from ``observed``).

    Returns
    -------
    GradInvResult
    """
    cfg = _resolve_config(config)
    truth = _as_images(ground_truth) if ground_truth is not None else None
    if num_images is None and labels is None and truth is not None:
        num_images = int(truth.shape[0])
    if image_shape is None:
        if truth is None:
            raise ValueError("image_shape=(C, H, W) is needed when no ground_truth is given")
        image_shape = tuple(truth.shape[1:])
    target = make_target(model, observed, labels=labels, compressor=compressor, public_state=public_state,
                         attacker=attacker, label_strategy=cfg.label_strategy, num_images=num_images,
                         decoded=decoded)
    start = time.perf_counter()
    result = invert_targets(model, [target], config=cfg, image_shape=image_shape, mean=mean, std=std,
                            ground_truths=[truth], device=device, progress=progress)[0]
    result.seconds = time.perf_counter() - start
    return result


def _mean_std(spec_mean_std: Any) -> tuple[list[float], list[float], tuple[int, int, int] | None]:
    """(mean, std, image shape or None) from a DatasetSpec-like object or a (mean, std) pair."""
    if hasattr(spec_mean_std, "mean") and hasattr(spec_mean_std, "std"):
        mean, std = list(spec_mean_std.mean), list(spec_mean_std.std)
        shape = None
        if hasattr(spec_mean_std, "channels") and hasattr(spec_mean_std, "image_size"):
            size = int(spec_mean_std.image_size)
            shape = (int(spec_mean_std.channels), size, size)
        return mean, std, shape
    if isinstance(spec_mean_std, Sequence) and len(spec_mean_std) == 2:
        mean, std = spec_mean_std
        return [float(v) for v in mean], [float(v) for v in std], None
    raise ValueError("spec_mean_std must be a DatasetSpec (mean, std, channels, image_size) or a (mean, std) pair")


def attack_intercepted(intercepted: InterceptedUpdate, model_fn: Callable[[], nn.Module],
                       spec_mean_std: Any, config: GradInvConfig | Mapping[str, Any] | None = None,
                       attacker: str = "naive", *, labels: Any = None, ground_truth: Any = None,
                       num_images: int | None = None, image_shape: Sequence[int] | None = None,
                       device: torch.device | str | None = None, progress: bool = True) -> GradInvResult:
    """Attack an update as the server intercepted it.

    Rebuilds the model with ``model_fn()`` and loads ``intercepted.global_state``
    (the weights the client computed its update on), then inverts the payload:
    the naive attacker matches the server's decoded update
    (``intercepted.decoded``), the adaptive one the payload with the compressor
    spec and public state. ``intercepted.batch_indices`` is never used here.

    Parameters
    ----------
    intercepted:
        From the strategy or :meth:`InterceptedUpdate.load`.
    model_fn:
        Builds a fresh model of the run's architecture, e.g.
        ``lambda: get_model("resnet18", 10, 3)``.
    spec_mean_std:
        The dataset's :class:`~fedtrust.data.specs.DatasetSpec` (gives mean, std
        and image shape) or a ``(mean, std)`` pair (then pass ``image_shape``).
    config:
        Attack settings (a :class:`GradInvConfig` or a dict).
    attacker:
        ``"naive"`` or ``"adaptive"``.
    labels:
        True labels of the batch, for ``label_strategy="given"`` (the caller looks
        them up from the scoring-only ``batch_indices``).
    ground_truth:
        The batch's images in [0, 1], for scoring.
    num_images:
        Images behind the update; default ``len(labels)``, else the training
        config's ``batch-size`` capped by ``num-examples`` (for FedAvg updates
        over several steps this is an approximation: the update mixes them all).
    image_shape, device, progress:
        As :func:`invert_gradients`.
    """
    mean, std, shape = _mean_std(spec_mean_std)
    if image_shape is None:
        image_shape = shape
    if image_shape is None and ground_truth is not None:
        image_shape = tuple(_as_images(ground_truth).shape[1:])
    if image_shape is None:
        raise ValueError("image_shape is needed: pass a DatasetSpec, ground_truth or image_shape=")
    model = model_fn()
    model.load_state_dict({k: v for k, v in intercepted.global_state.items()})
    if num_images is None and labels is None:
        tc = intercepted.train_config
        batch = int(tc.get("batch-size", 1))
        examples = int(tc.get("num-examples", batch) or batch)
        num_images = max(1, min(batch, examples))
    return invert_gradients(model, Payload(dict(intercepted.payload)), labels=labels,
                            compressor=dict(intercepted.compressor), attacker=attacker, config=config,
                            ground_truth=ground_truth, num_images=num_images, image_shape=image_shape,
                            mean=mean, std=std, device=device, progress=progress,
                            public_state=dict(intercepted.public_state), decoded=dict(intercepted.decoded))
