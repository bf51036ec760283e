"""Server-side membership inference on ONE intercepted client update (beyond the paper).

An honest-but-curious server holds the round's global model, the payload a
client sent, the update it decoded and the compressor's public state (see
:mod:`fedtrust.interception`). Given candidate samples it asks: was this sample
in the client's batch? Four scores, higher = more likely a member:

``update_cosine``
    Cosine between the candidate's per-sample gradient at the global model and
    the decoded update. A batch gradient is the mean of its samples' gradients,
    so members align with it more than non-members do.
``update_cosine_aware``
    The same cosine, but only over what crossed the network, transformed the
    way the client's update was (a linear map ``T`` applied to both sides):

    the codec's views (:meth:`fedtrust.compression.codec.Codec.views`), the same
    linear maps the adaptive gradient-inversion attacker matches (each codec
    module documents its own: dense tensors as they are, Top-K's gathered
    positions, PowerSGD's ``M Q`` and ``M^T P_hat``).

    The pieces are concatenated into one vector per candidate and compared
    with the concatenated observed pieces. Compression discards the rest of the
    update, so the cosine is not diluted by coordinates the server never saw.
``update_loss_drop``
    ``loss(w) - loss(w - step * decoded)`` on the candidate: the batch's own
    samples gain most from the step the update takes.
``update_regression``
    Least-squares decomposition of what was transmitted onto the candidates'
    transformed gradients (the same linear map ``T`` as ``update_cosine_aware``):
    ``alpha = argmin ||T(u) - sum_c alpha_c T(g_c)||^2`` (a tiny ridge term keeps
    it well posed); the score is ``alpha_c``. A FedSGD update is the mean of its
    batch's gradients, and ``T`` is linear for every compressor here (Top-K
    selects given positions; PowerSGD's ``M Q`` and ``M^T P_hat`` are linear in
    ``M`` for the transmitted ``Q`` and ``P_hat``), so when every batch member is
    a candidate the members get ``alpha = 1/batch`` and the others about 0
    (up to the error-feedback residual of earlier rounds). The cosines above are
    dominated by the class of a sample (per-sample gradients of one class are
    nearly parallel, most of all near initialisation), so they separate
    members from same-class non-members poorly; the decomposition does not.
    When ``T(u)`` has more than ``regression_dim`` values, both sides are first
    reduced with a seeded count sketch (linear, so the decomposition still holds).
    Exact recovery needs more transmitted values than candidates.

Per-sample gradients use ``torch.func`` (``functional_call`` + ``vmap(grad(...))``)
in chunks, with the model in eval mode (BatchNorm uses its running statistics).

Limits: a client's BatchNorm gradient (train mode, batch statistics) is not a
mean of eval-mode per-sample gradients, and an error-feedback residual carries
earlier rounds' data into the update; both leave a part of ``T(u)`` outside the
candidates' span, which weakens ``update_regression`` most.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from tqdm.auto import tqdm

from fedtrust.attacks.mia.metrics import balanced_accuracy
from fedtrust.attacks.mia.result import MIAResult, evaluate_scores, scored_result
from fedtrust.attacks.mia.sampling import draw_membership_split
from fedtrust.compression import CompressorSpec, get_codec
from fedtrust.compression.base import Payload
from fedtrust.compression.views import apply_view_batched

#: Names of the update attacks, in report order.
UPDATE_ATTACKS: tuple[str, ...] = ("update_cosine", "update_cosine_aware", "update_loss_drop",
                                   "update_regression")

#: Bytes of per-sample gradients held at once when ``chunk_size`` is not given.
DEFAULT_GRADIENT_BUDGET = 256 * 2**20

#: Largest transmitted-vector length the regression uses without sketching.
DEFAULT_REGRESSION_DIM = 16384

#: Ridge term of the regression, relative to the mean diagonal of the Gram matrix.
RIDGE = 1e-6

_EPS = 1e-30

#: ``(per-sample gradients {name: (B, *shape)}) -> (B, k)``
Transform = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class ObservedPiece:
    """One transmitted array and the linear map that produces it from a gradient.

    Attributes
    ----------
    key:
        Payload array name (``"dense/fc.weight"``, ``"values"``, ``"p/conv.weight"`` ...).
    observed:
        The transmitted values, flattened (float32, on the attack's device).
    transform:
        Maps a chunk of per-sample gradients to ``(B, observed.numel())``.
    """

    key: str
    observed: torch.Tensor
    transform: Transform


# ------------------------------------------------------------------ per-sample math
def per_sample_gradients(model: nn.Module, params: Mapping[str, torch.Tensor],
                         buffers: Mapping[str, torch.Tensor], x: torch.Tensor,
                         y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy gradient of each sample w.r.t. ``params``: ``{name: (B, *shape)}``.

    The model must already be in the mode wanted (eval for the attack).
    """

    def loss_one(p: Mapping[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (dict(p), dict(buffers)), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(dict(params), x, y)


@torch.no_grad()
def per_sample_losses(model: nn.Module, params: Mapping[str, torch.Tensor],
                      buffers: Mapping[str, torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample under ``params`` (model mode as set by the caller)."""
    out = functional_call(model, (dict(params), dict(buffers)), (x,))
    return F.cross_entropy(out.float(), y, reduction="none")


def _as_arrays(payload: Payload | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(payload.arrays if isinstance(payload, Payload) else payload)


def _tensor(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))
    return tensor.detach().to(device=device, dtype=torch.float32)


# ------------------------------------------------------------------ what was sent
def observed_pieces(payload: Payload | Mapping[str, np.ndarray],
                    compressor_spec: CompressorSpec | Mapping[str, object],
                    public_state: Mapping[str, np.ndarray], layout: tuple[tuple[str, tuple[int, ...]], ...],
                    device: torch.device | str = "cpu") -> list[ObservedPiece]:
    """The transmitted arrays of one payload, each with the linear map that produces it from a gradient.

    The pieces are the codec's views (:meth:`fedtrust.compression.codec.Codec.views`, the
    same the adaptive gradient-inversion attacker matches), in the codec's order.

    Parameters
    ----------
    payload:
        The arrays the client sent (wire format of :mod:`fedtrust.compression.base`).
    compressor_spec:
        The compressor spec (or its dict form).
    public_state:
        What the server knows with the payload (PowerSGD's ``Q/{name}`` and ``P_hat/{name}``).
    layout:
        ``(name, shape)`` of the trainable parameters, in model order.
    device:
        Where the observed tensors are put.
    """
    device = torch.device(device)
    views = get_codec(compressor_spec, layout).views(_as_arrays(payload), dict(public_state))
    if not views:
        raise ValueError("the payload holds nothing to compare with")
    return [ObservedPiece(v.name, v.observed.reshape(-1).to(device), partial(apply_view_batched, v.to(device)))
            for v in views]


# ------------------------------------------------------------------ scores
@dataclass(frozen=True)
class UpdateScores:
    """Per-candidate scores of the update attacks (higher = member)."""

    cosine: np.ndarray
    cosine_aware: np.ndarray
    loss_drop: np.ndarray
    regression: np.ndarray

    def by_attack(self) -> dict[str, np.ndarray]:
        """``attack name -> scores`` (:data:`UPDATE_ATTACKS`)."""
        return dict(zip(UPDATE_ATTACKS, (self.cosine, self.cosine_aware, self.loss_drop,
                                         self.regression)))


@dataclass(frozen=True)
class CountSketch:
    """A seeded linear map ``R^dim -> R^width``: ``out[h[i]] += s[i] * v[i]``.

    Preserves inner products in expectation and, being linear, keeps a linear
    decomposition ``v = sum_c alpha_c x_c`` intact.
    """

    bucket: torch.Tensor
    sign: torch.Tensor
    width: int

    @classmethod
    def create(cls, dim: int, width: int, seed: int, device: torch.device) -> CountSketch:
        """Buckets and signs drawn on the CPU from ``seed`` (device-independent)."""
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        bucket = torch.randint(0, width, (dim,), generator=gen)
        sign = torch.randint(0, 2, (dim,), generator=gen).to(torch.float32) * 2 - 1
        return cls(bucket=bucket.to(device), sign=sign.to(device), width=int(width))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Sketch the rows of ``v`` ``(B, dim)`` -> ``(B, width)``."""
        out = torch.zeros(v.shape[0], self.width, dtype=v.dtype, device=v.device)
        return out.index_add_(1, self.bucket, v * self.sign.to(v.dtype))


def regression_scores(gradients: torch.Tensor, observed: torch.Tensor) -> np.ndarray:
    """Ridge least-squares weights ``alpha`` with ``observed ~ alpha @ gradients``.

    Parameters
    ----------
    gradients:
        ``(N, D)`` candidates' (transformed) gradients.
    observed:
        ``(D,)`` the (transformed) observed update.

    Returns
    -------
    numpy.ndarray
        ``alpha`` ``(N,)`` (float64).
    """
    g = gradients.to(torch.float64)
    gram = g @ g.T
    ridge = RIDGE * float(torch.diagonal(gram).mean()) + 1e-300
    rhs = g @ observed.to(torch.float64)
    eye = torch.eye(len(g), dtype=torch.float64, device=g.device)
    return torch.linalg.solve(gram + ridge * eye, rhs).cpu().numpy()


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def update_scores(model: nn.Module, pieces: list[ObservedPiece], decoded_update: Mapping[str, torch.Tensor],
                  x: torch.Tensor, y: torch.Tensor, *, step: float,
                  device: torch.device | str | None = None, chunk_size: int | None = None,
                  progress: bool = False, regression_dim: int = DEFAULT_REGRESSION_DIM,
                  sketch_seed: int = 0) -> UpdateScores:
    """The update-attack scores of candidates ``(x, y)``.

    Parameters
    ----------
    model:
        Holding the global weights the update was computed on (not modified;
        its train/eval mode is restored).
    pieces:
        :func:`observed_pieces` of the payload.
    decoded_update:
        ``name -> tensor`` over the trainable parameters, in model order.
    x, y:
        Candidate inputs and labels.
    step:
        The server step the update is applied with (``w - step * decoded``).
    device:
        Where to compute; ``None``: where the model's parameters are.
    chunk_size:
        Candidates per per-sample-gradient batch; ``None`` keeps about
        :data:`DEFAULT_GRADIENT_BUDGET` bytes of gradients at once.
    progress:
        Show a progress bar.
    regression_dim:
        Transmitted vectors longer than this are count-sketched to
        ``max(regression_dim, 2 * len(x))`` values for the regression.
    sketch_seed:
        Seed of the count sketch.

    Returns
    -------
    UpdateScores
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    params = {k: v.detach().to(device) for k, v in model.named_parameters() if v.requires_grad}
    if list(decoded_update) != list(params):
        raise ValueError("decoded_update must hold the model's trainable parameters, in order")
    buffers = {k: v.detach().to(device) for k, v in model.named_buffers()}
    update = {k: torch.as_tensor(v).to(device=device, dtype=params[k].dtype)
              for k, v in decoded_update.items()}
    after = {k: params[k] - step * update[k] for k in params}
    u_norm = math.sqrt(sum(float((u.double() ** 2).sum()) for u in update.values()))
    obs = [p.observed.to(device) for p in pieces]
    obs_norm = math.sqrt(sum(float((o.double() ** 2).sum()) for o in obs))
    if u_norm == 0.0 or obs_norm == 0.0:
        raise ValueError("the update (or what was transmitted of it) is zero")
    numel = sum(p.numel() for p in params.values())
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_GRADIENT_BUDGET // (4 * numel))
    obs_flat = torch.cat(obs)
    obs_cat = obs_flat.double()
    sketch = None
    if obs_flat.numel() > regression_dim:
        sketch = CountSketch.create(obs_flat.numel(), max(regression_dim, 2 * len(x)), sketch_seed, device)
        obs_flat = sketch(obs_flat[None])[0]
    cos, aware, drop, transformed = [], [], [], []
    was_training = model.training
    model.eval()
    try:
        for sl in tqdm(list(_chunks(len(x), chunk_size)), desc="update MIA", disable=not progress,
                       leave=False):
            xb = x[sl].to(device)
            yb = torch.as_tensor(y[sl]).to(device=device, dtype=torch.long)
            g = {k: v.detach() for k, v in per_sample_gradients(model, params, buffers, xb, yb).items()}
            b = len(xb)
            dot = torch.zeros(b, dtype=torch.float64, device=device)
            sq = torch.zeros(b, dtype=torch.float64, device=device)
            for k, u in update.items():
                gk = g[k].reshape(b, -1)
                dot += (gk @ u.reshape(-1)).double()
                sq += (gk.double() ** 2).sum(1)
            cos.append((dot / (sq.sqrt() * u_norm + _EPS)).cpu())
            t = torch.cat([piece.transform(g) for piece in pieces], dim=1)
            del g
            dot = t.double() @ obs_cat
            sq = (t.double() ** 2).sum(1)
            aware.append((dot / (sq.sqrt() * obs_norm + _EPS)).cpu())
            transformed.append(sketch(t) if sketch is not None else t)
            del t
            drop.append((per_sample_losses(model, params, buffers, xb, yb)
                         - per_sample_losses(model, after, buffers, xb, yb)).double().cpu())
    finally:
        model.train(was_training)
    regression = regression_scores(torch.cat(transformed), obs_flat)
    return UpdateScores(cosine=torch.cat(cos).numpy(), cosine_aware=torch.cat(aware).numpy(),
                        loss_drop=torch.cat(drop).numpy(), regression=regression)


def run_update_mia(model: nn.Module, observed_payload: Payload | Mapping[str, np.ndarray],
                   decoded_update: Mapping[str, torch.Tensor], compressor_spec: Mapping[str, object],
                   public_state: Mapping[str, np.ndarray], member_x: torch.Tensor, member_y: torch.Tensor,
                   nonmember_x: torch.Tensor, nonmember_y: torch.Tensor, *, step: float, seed: int,
                   device: torch.device | str | None = None, progress: bool = True,
                   calibration_fraction: float = 0.5, balance: bool = False,
                   chunk_size: int | None = None,
                   regression_dim: int = DEFAULT_REGRESSION_DIM,
                   batch_size: int | None = None) -> list[MIAResult]:
    """Membership inference against one client update.

    Parameters
    ----------
    model:
        Holding the round's global weights (``InterceptedUpdate.global_state``).
    observed_payload:
        The arrays the client sent (``InterceptedUpdate.payload``).
    decoded_update:
        The update the server decoded (``InterceptedUpdate.decoded``).
    compressor_spec:
        ``InterceptedUpdate.compressor`` (``{"compressor", "level", "mode" ...}``).
    public_state:
        ``InterceptedUpdate.public_state`` (PowerSGD's ``Q/`` and ``P_hat/``).
    member_x, member_y:
        The samples of the client's batch (known to the scorer only).
    nonmember_x, nonmember_y:
        Held-out samples no client saw.
    step:
        Server step of the update (``server-lr * lr`` for FedSGD, ``server-lr`` for FedAvg).
    seed:
        Seed of the candidate draw and of the calibration/evaluation split.
    device:
        Where to compute; ``None``: where the model's parameters are.
    progress:
        Show a progress bar.
    calibration_fraction:
        Share of each side used to choose the threshold.
    balance:
        Draw equally many members and non-members. The default ``False`` keeps
        every candidate: a batch has few members, and low-FPR rates need many
        non-members (balanced accuracy is unaffected by the imbalance).
    chunk_size:
        Candidates per per-sample-gradient batch (see :func:`update_scores`).
    regression_dim:
        Sketch size bound of ``update_regression`` (see :func:`update_scores`).
    batch_size:
        The batch size of the training configuration the server gave the client (never the
        scoring-only count of ``member_x``). With it, ``update_regression``'s accuracy uses
        the attacker's label-free rule ``alpha >= 1 / (2 batch_size)`` (a member's weight is
        ``1 / batch_size``, a non-member's about 0; ``threshold = "label-free"``); the other
        attacks keep the threshold fitted on calibration candidates (``"oracle"``).

    Returns
    -------
    list[MIAResult]
        One per attack in :data:`UPDATE_ATTACKS` (``update_cosine``,
        ``update_cosine_aware``, ``update_loss_drop``, ``update_regression``),
        scope ``"update"``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    layout = tuple((k, tuple(v.shape)) for k, v in model.named_parameters() if v.requires_grad)
    pieces = observed_pieces(observed_payload, compressor_spec, public_state, layout, device)
    split = draw_membership_split(len(member_x), len(nonmember_x), seed=seed,
                                  calibration_fraction=calibration_fraction, balance=balance)
    mem = torch.as_tensor(split.members)
    non = torch.as_tensor(split.nonmembers)
    x = torch.cat([member_x[mem], nonmember_x[non]])
    y = torch.cat([torch.as_tensor(member_y)[mem], torch.as_tensor(nonmember_y)[non]]).long()
    scores = update_scores(model, pieces, decoded_update, x, y, step=step, device=device,
                           chunk_size=chunk_size, progress=progress, regression_dim=regression_dim,
                           sketch_seed=seed)
    results = [evaluate_scores(attack, "update", s, y.numpy(), split.is_member, split, seed=seed)
               for attack, s in scores.by_attack().items()]
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        ev = split.evaluation
        s_ev, m_ev = scores.regression[ev], split.is_member[ev]
        rule = 1.0 / (2.0 * batch_size)
        accuracy = balanced_accuracy(s_ev >= rule, m_ev)
        at = [r.attack for r in results].index("update_regression")
        results[at] = scored_result("update_regression", "update", s_ev, m_ev, accuracy=float(accuracy),
                                    threshold="label-free", threshold_value=rule, seed=seed)
    return results
