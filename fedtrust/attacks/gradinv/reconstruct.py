"""The optimisation of "Inverting Gradients" (Geiping et al. 2020), for many problems at once.

A *problem* is one observed update (its views, :mod:`fedtrust.attacks.gradinv.targets`)
and the labels of its ``N`` images. Dummy images ``x`` (normalised, ``(N, C, H, W)``)
are optimised so that the views of their gradient match the observed ones:

    minimise  cost(views(grad_w CE(f_w(x), y)), observed) + tv_weight * TV(x)

with signed Adam, a step decay at 3/8, 5/8 and 7/8 of the run and ``x`` clamped to
the normalised pixel box after each step; each problem is started ``restarts``
times and the start with the lowest final cost is kept.

Independent problems (several clients, restarts) run as one vectorised problem:
the per-problem objective is written with ``torch.func`` (``functional_call`` and
an inner ``grad`` for the model's gradient) and its gradient with respect to the
dummy is mapped over the problems with ``vmap``, so one optimisation step advances
all of them. Adam, the sign, the schedule and the clamp act element-wise, so the
batched run takes the same steps as running the problems one after another.
Run one by one, a problem uses plain autograd (``create_graph=True``), which is
faster than ``torch.func`` for a single problem on a CPU. ``batched="auto"``
vectorises on CUDA and elsewhere times one step both ways and keeps the faster.

:func:`reconstruct_batch` is the low-level entry point: prepared problems in,
reconstructions (pixels in [0, 1]) out; :func:`fedtrust.attacks.gradinv.api.attack`
builds the problem of an intercepted update and scores the result.

Departures from Geiping's reference code: many problems run at once (taking the same
steps, see above), and besides the reference's eval mode (the default) the model can be
differentiated in train mode (``model_mode="train"``: BatchNorm normalises with the
dummy batch's statistics and updates no running statistics), as a FedSGD client's
``model.train()`` gradient is computed.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap
from torch.nn import functional as F
from tqdm.auto import tqdm

from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.attacks.gradinv.targets import View, apply_view
from fedtrust.training import select_device

if TYPE_CHECKING:
    from fedtrust.data.specs import DatasetSpec

#: Floor of squared norms in the cosine costs (keeps them finite for all-zero views).
_TINY = 1e-30
#: Where the step size is multiplied by 0.1 (fractions of the run), as Geiping's code.
DECAY_AT = (3 / 8, 5 / 8, 7 / 8)


@dataclass(frozen=True)
class Problem:
    """One observed update to invert.

    Attributes
    ----------
    views:
        The attacker's views of the update: the objective, and the judge of every start.
    labels:
        ``(N,)`` int64 labels of the ``N`` images behind it.
    surrogates:
        Other objectives (view sets) optimised as further starts; what each reaches is
        judged by the cost of ``views`` like any start, so a surrogate is kept only
        where the attacker's own cost prefers it.
    """

    views: tuple[View, ...]
    labels: torch.Tensor
    surrogates: tuple[tuple[View, ...], ...] = ()

    def objectives(self) -> tuple[tuple[View, ...], ...]:
        """The view sets optimised: ``views`` (objective 0), then the surrogates."""
        return (self.views, *self.surrogates)


@dataclass(frozen=True)
class Reconstruction:
    """The best start of one problem.

    Attributes
    ----------
    images:
        ``(N, C, H, W)`` images on the CPU: pixels in [0, 1] as :func:`reconstruct_batch`
        returns them (the dummies in the normalised space while they are optimised).
    loss:
        Gradient-matching cost (without the prior) of ``images``.
    restart:
        Which start it was.
    objective:
        Which objective that start optimised (0: the problem's views; ``j``: surrogate ``j``).
    seconds:
        Wall-clock seconds of the optimisation run it was part of.
    iterations:
        Optimisation steps taken.
    batched:
        Whether it ran vectorised with other problems.
    """

    images: torch.Tensor
    loss: float
    restart: int
    seconds: float
    iterations: int
    batched: bool
    objective: int = 0


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (Geiping's anisotropic TV)."""
    dx = (x[..., :, :-1] - x[..., :, 1:]).abs().mean()
    dy = (x[..., :-1, :] - x[..., 1:, :]).abs().mean()
    return dx + dy


def nearest_allowed(value: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """The element-wise nearest tensor to ``value`` that a bound view's ``observed`` allows:
    ``clamp(value, -t, t)`` for a threshold ``t`` (one element), ``clamp(value, lo, hi)`` for
    limits ``bound = stack(lo, hi)`` of the flattened value."""
    if bound.numel() == 1:
        return torch.minimum(torch.maximum(value, -bound), bound)
    flat = value.reshape(-1)
    return torch.minimum(torch.maximum(flat, bound[0]), bound[1]).reshape(value.shape)


def gradient_cost(reconstructed: Sequence[torch.Tensor], observed: Sequence[torch.Tensor],
                  cost: str, bounded: Sequence[bool] = ()) -> torch.Tensor:
    """Matching cost between the dummy's views and the observed ones.

    ``cosine``: Geiping's ``1 - sum_l <r_l, o_l> / (sqrt(sum_l |r_l|^2) sqrt(sum_l |o_l|^2))``;
    ``layerwise-cosine``: ``sum_l (1 - cos(r_l, o_l))``; ``l2``: ``sum_l |r_l - o_l|^2``.

    ``bounded[l]`` marks a bound view: ``observed[l]`` is a threshold ``t`` that every
    element of the client's ``r_l`` stayed within, or (shape ``(2, k)``) the limits
    ``lo, hi`` of each element. Its observation is the nearest one the bound allows,
    ``o_l = clamp(a r_l, -t, t)`` or ``clamp(a r_l, lo, hi)``, with ``a`` the ratio of the observed
    to the dummy's norm over the measured views (the cosine costs are scale-free, so
    the dummy's gradient is brought to the observation's scale first; ``a = 1`` for
    ``l2``). At the true image ``o_l = r_l``: a bound adds nothing there, and elsewhere
    it penalises exactly the coordinates the dummy makes larger than the client's could
    have been. Departure from Geiping et al.: their attacker has no bounds.
    """
    flags = tuple(bounded) or (False,) * len(observed)
    measured = [j for j, b in enumerate(flags) if not b]
    if len(measured) < len(flags):
        if cost == "l2":
            scale = torch.ones((), dtype=reconstructed[0].dtype, device=reconstructed[0].device)
        else:
            rec_m = torch.stack([reconstructed[j].pow(2).sum() for j in measured]).sum()
            obs_m = torch.stack([observed[j].pow(2).sum() for j in measured]).sum()
            scale = torch.sqrt(obs_m / rec_m.clamp_min(_TINY))
        observed = [nearest_allowed(scale * r, o) if b else o for r, o, b in zip(reconstructed, observed, flags)]
    if cost == "l2":
        return torch.stack([(r - o).pow(2).sum() for r, o in zip(reconstructed, observed)]).sum()
    dots = torch.stack([(r * o).sum() for r, o in zip(reconstructed, observed)])
    rec_sq = torch.stack([r.pow(2).sum() for r in reconstructed])
    obs_sq = torch.stack([o.pow(2).sum() for o in observed])
    if cost == "cosine":
        return 1.0 - dots.sum() * torch.rsqrt(rec_sq.sum().clamp_min(_TINY)) \
            * torch.rsqrt(obs_sq.sum().clamp_min(_TINY))
    if cost == "layerwise-cosine":
        return (1.0 - dots * torch.rsqrt(rec_sq.clamp_min(_TINY)) * torch.rsqrt(obs_sq.clamp_min(_TINY))).sum()
    raise ValueError(f"cost={cost!r} is not known; allowed: cosine, layerwise-cosine, l2")


def attack_model(model: nn.Module, mode: str, device: torch.device
                 ) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A copy of ``model`` on ``device`` in the attack's mode, its trainable parameters and the rest.

    ``mode="train"`` replaces BatchNorm's running statistics so that it always
    normalises with the batch's own statistics and updates nothing (vmap-safe).
    """
    net = copy.deepcopy(model).to(device)
    if mode == "train":
        replace_all_batch_norm_modules_(net)
        net.train()
    else:
        net.eval()
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    consts = {n: p.detach() for n, p in net.named_parameters() if not p.requires_grad}
    consts.update({n: b.detach() for n, b in net.named_buffers()})
    return net, params, consts


def make_objective_grad(net: nn.Module, params: dict[str, torch.Tensor], consts: dict[str, torch.Tensor],
                        transforms: Sequence[tuple[str, tuple[str, ...], bool]], cost: str,
                        tv_weight: float) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``(x, labels, auxes, observed) -> (d objective / d x, gradient cost)`` for one problem.

    Written with ``torch.func`` and pure in its arguments, so it can be mapped
    over stacked problems with ``vmap`` (the batched path). ``transforms`` are the
    views' ``(kind, params, bound)``.
    """
    bounded = tuple(b for _, _, b in transforms)

    def objective(x: torch.Tensor, labels: torch.Tensor, auxes: tuple[tuple[torch.Tensor, ...], ...],
                  observed: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        def loss_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(net, (p, consts), (x,)), labels)

        grads = grad(loss_of)(params)
        rec = [apply_view(kind, names, aux, grads) for (kind, names, _), aux in zip(transforms, auxes)]
        match = gradient_cost(rec, observed, cost, bounded)
        return match + tv_weight * total_variation(x), match

    return grad(objective, has_aux=True)


def make_autograd_step(net: nn.Module, transforms: Sequence[tuple[str, tuple[str, ...], bool]], cost: str,
                       tv_weight: float) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The same gradient as :func:`make_objective_grad` with plain autograd, for one problem at a time.

    ``(x, labels, auxes, observed)`` carry a leading problem axis of size 1. On a
    CPU this double backward is faster than ``torch.func``'s (no functorch
    wrapping), which is why the sequential path uses it.
    """
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    plist = [p for _, p in named]
    bounded = tuple(b for _, _, b in transforms)

    def step(x: torch.Tensor, labels: torch.Tensor, auxes: tuple[tuple[torch.Tensor, ...], ...],
             observed: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        dummy = x[0].detach().requires_grad_(True)
        loss = F.cross_entropy(net(dummy), labels[0])
        grads = dict(zip(names, torch.autograd.grad(loss, plist, create_graph=True)))
        rec = [apply_view(kind, pnames, tuple(a[0] for a in aux), grads)
               for (kind, pnames, _), aux in zip(transforms, auxes)]
        match = gradient_cost(rec, [o[0] for o in observed], cost, bounded)
        (g,) = torch.autograd.grad(match + tv_weight * total_variation(dummy), dummy)
        return g.unsqueeze(0), match.detach().reshape(1)

    return step


def initial_images(config: GradInvConfig, restart: int, shape: tuple[int, ...],
                   low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The start of restart ``restart`` (CPU, seeded by ``config.seed`` and the restart)."""
    gen = torch.Generator().manual_seed(int(config.seed) * 1_000_003 + restart)
    if config.init == "randn":
        return torch.randn(shape, generator=gen)
    if config.init == "rand":
        return low.cpu() + (high - low).cpu() * torch.rand(shape, generator=gen)
    return torch.zeros(shape)


def use_batching(config: GradInvConfig, device: torch.device) -> bool | None:
    """Whether to vectorise: as configured; for ``"auto"`` yes on CUDA and ``None`` (measure) elsewhere."""
    if isinstance(config.batched, bool):
        return config.batched
    return True if device.type == "cuda" else None


def _slice(args: tuple[Any, ...], j: int) -> tuple[Any, ...]:
    """Problem ``j`` of stacked ``(labels, auxes, observed)``, keeping a problem axis of size 1."""
    labels, auxes, observed = args
    return (labels[j:j + 1], tuple(tuple(a[j:j + 1] for a in view) for view in auxes),
            tuple(o[j:j + 1] for o in observed))


def batching_is_faster(batched_step: Callable[..., Any], single_step: Callable[..., Any],
                       x: torch.Tensor, args: tuple[Any, ...]) -> bool:
    """Time one step of all problems vectorised and one by one (each after a warm-up call)."""
    def vectorised() -> None:
        batched_step(x, *args)

    def one_by_one() -> None:
        for j in range(x.shape[0]):
            single_step(x[j:j + 1], *_slice(args, j))

    timings = []
    for fn in (vectorised, one_by_one):
        fn()
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return timings[0] < timings[1]


def _optimise(step: Callable[..., tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
              args: tuple[Any, ...], config: GradInvConfig, low: torch.Tensor, high: torch.Tensor,
              bar: tqdm) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the optimiser on stacked dummies ``x`` (P, N, C, H, W); return them and their final costs."""
    x = x.detach().clone()
    if config.boxed:
        x = torch.maximum(torch.minimum(x, high), low)
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([x], lr=config.lr)
    else:
        opt = torch.optim.SGD([x], lr=config.lr, momentum=0.9, nesterov=True)
    milestones = sorted({max(1, int(config.iterations * f)) for f in DECAY_AT}) if config.lr_decay else []
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    cost = torch.full((x.shape[0],), float("nan"), device=x.device)
    for it in range(config.iterations):
        g, cost = step(x, *args)
        x.grad = g.sign() if config.signed else g
        opt.step()
        sched.step()
        if config.boxed:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        bar.update(x.shape[0])
        if not bar.disable and (it % 50 == 0 or it == config.iterations - 1):
            bar.set_postfix(cost=f"{float(cost.min()):.4f}")
    _, cost = step(x, *args)
    return x.detach(), cost.detach()


@dataclass(frozen=True)
class _Setup:
    """What every group of one :func:`reconstruct_batch` call shares."""

    net: nn.Module
    params: dict[str, torch.Tensor]
    consts: dict[str, torch.Tensor]
    config: GradInvConfig
    image_shape: tuple[int, int, int]
    low: torch.Tensor
    high: torch.Tensor
    device: torch.device


#: One optimisation run of :func:`reconstruct_batch`: (problem, restart, objective).
_Run = tuple[int, int, int]


def _views(problems: Sequence[Problem], run: _Run) -> tuple[View, ...]:
    return problems[run[0]].objectives()[run[2]]


def _signature(problems: Sequence[Problem], run: _Run) -> tuple[Any, ...]:
    """Runs with equal signatures can be stacked and vmapped."""
    return (tuple(v.signature() for v in _views(problems, run)), tuple(problems[run[0]].labels.shape))


def _stack(problems: Sequence[Problem], chunk: Sequence[_Run],
           device: torch.device) -> tuple[list[tuple[str, tuple[str, ...], bool]], tuple[Any, ...]]:
    """The view transforms of a group of equal-signature runs and their stacked ``(labels, auxes, observed)``."""
    views = [_views(problems, run) for run in chunk]
    transforms = [v.transform for v in views[0]]
    labels = torch.stack([problems[i].labels for i, _, _ in chunk]).to(device)
    auxes = tuple(tuple(torch.stack([vs[j].aux[a] for vs in views]).to(device) for a in range(len(views[0][j].aux)))
                  for j in range(len(views[0])))
    observed = tuple(torch.stack([vs[j].observed for vs in views]).to(device) for j in range(len(views[0])))
    return transforms, (labels, auxes, observed)


def _run_group(setup: _Setup, problems: Sequence[Problem], chunk: Sequence[_Run],
               batched: bool | None, bar: tqdm) -> list[Reconstruction]:
    """Optimise one group of runs of equal signature, vectorised or one by one."""
    config = setup.config
    transforms, args = _stack(problems, chunk, setup.device)
    num = int(problems[chunk[0][0]].labels.shape[0])
    x0 = torch.stack([initial_images(config, k, (num, *setup.image_shape), setup.low, setup.high)
                      for _, k, _ in chunk]).to(setup.device)
    single = make_autograd_step(setup.net, transforms, config.cost, config.tv_weight)
    vectorised = vmap(make_objective_grad(setup.net, setup.params, setup.consts, transforms, config.cost,
                                          config.tv_weight))
    use_vmap = batched
    if use_vmap is None:
        use_vmap = len(chunk) > 1 and batching_is_faster(vectorised, single, x0, args)
    start = time.perf_counter()
    if use_vmap:
        images, costs = _optimise(vectorised, x0, args, config, setup.low, setup.high, bar)
    else:
        parts = [_optimise(single, x0[j:j + 1], _slice(args, j), config, setup.low, setup.high, bar)
                 for j in range(len(chunk))]
        images = torch.cat([p[0] for p in parts])
        costs = torch.cat([p[1] for p in parts])
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    seconds = time.perf_counter() - start
    return [Reconstruction(images=img, loss=float(c), restart=k, seconds=seconds, iterations=config.iterations,
                           batched=bool(use_vmap), objective=o)
            for (_, k, o), img, c in zip(chunk, images.cpu(), costs.cpu().tolist())]


def _judge(setup: _Setup, problem: Problem, rec: Reconstruction) -> Reconstruction:
    """``rec`` (a surrogate's start) with its loss replaced by the problem's own matching cost."""
    transforms, args = _stack([problem], [(0, rec.restart, 0)], setup.device)
    step = make_autograd_step(setup.net, transforms, setup.config.cost, 0.0)
    _, cost = step(rec.images.unsqueeze(0).to(setup.device), *args)
    return dataclasses.replace(rec, loss=float(cost[0]))


def _to_pixels(rec: Reconstruction, dataset: DatasetSpec) -> Reconstruction:
    """``rec`` with its images de-normalised to pixels and clamped to [0, 1]."""
    mean = torch.tensor([float(v) for v in dataset.mean]).reshape(dataset.channels, 1, 1)
    std = torch.tensor([float(v) for v in dataset.std]).reshape(dataset.channels, 1, 1)
    return dataclasses.replace(rec, images=(rec.images * std + mean).clamp(0.0, 1.0))


def reconstruct_batch(model: nn.Module, problems: Sequence[Problem], *, config: GradInvConfig,
                      dataset: DatasetSpec, device: torch.device | None = None,
                      progress: bool = True) -> list[Reconstruction]:
    """Invert every problem (with ``config.restarts`` starts of each of its objectives); return
    the start of each problem whose matching cost (of its ``views``) is lowest.

    Independent ``(problem, restart, objective)`` runs of equal signature are stacked
    and optimised together (see the module docstring).

    Parameters
    ----------
    model:
        The model the updates were computed with, holding the weights they were computed
        on (not modified: a copy is used).
    problems:
        The observed updates and their labels.
    config:
        Optimisation settings.
    dataset:
        The images' shape (``channels``, ``image_size``) and the per-channel
        normalisation of the model's inputs (``mean``, ``std``).
    device:
        Where to run (``None``: :func:`fedtrust.training.select_device`'s ``"auto"``).
    progress:
        Show a tqdm bar over the iterations.

    Returns
    -------
    list of Reconstruction
        One per problem, in order, its images de-normalised to pixels in [0, 1].
    """
    device = select_device("auto") if device is None else device
    mean = torch.as_tensor(list(dataset.mean), dtype=torch.float32, device=device).reshape(dataset.channels, 1, 1)
    std = torch.as_tensor(list(dataset.std), dtype=torch.float32, device=device).reshape(dataset.channels, 1, 1)
    net, params, consts = attack_model(model, config.model_mode, device)
    setup = _Setup(net=net, params=params, consts=consts, config=config,
                   image_shape=(dataset.channels, dataset.image_size, dataset.image_size),
                   low=(0.0 - mean) / std, high=(1.0 - mean) / std, device=device)
    batched = use_batching(config, device)
    # Every (problem, restart, objective) is one independent run; stack those of equal signature.
    groups: dict[tuple[Any, ...], list[_Run]] = {}
    for i, problem in enumerate(problems):
        for o in range(len(problem.objectives())):
            for k in range(config.restarts):
                groups.setdefault(_signature(problems, (i, k, o)), []).append((i, k, o))
    best: dict[int, Reconstruction] = {}
    runs = sum(len(chunk) for chunk in groups.values())
    with torch.enable_grad(), tqdm(total=config.iterations * runs, desc="gradinv",
                                   disable=not progress, leave=False) as bar:
        for chunk in groups.values():
            for (i, _, o), cand in zip(chunk, _run_group(setup, problems, chunk, batched, bar)):
                cand = _judge(setup, problems[i], cand) if o else cand
                if i not in best or cand.loss < best[i].loss:
                    best[i] = cand
    return [_to_pixels(best[i], dataset) for i in range(len(problems))]
