"""Tests of the compressors (fedtrust.compression): math, protocols, budgets and state."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from fedtrust.compression import (
    Payload,
    check_level,
    codec_names,
    compressible_names,
    get_compressor,
    layout_of,
    max_compressible_level,
    powersgd_values_per_tensor,
)
from fedtrust.compression.base import matrix_shape
from fedtrust.compression.codecs.none import NoCompressor
from fedtrust.compression.codecs.powersgd import (
    PowerSGDCompressor,
    aggregate_p,
    aggregate_q,
    decode_allreduce,
    initial_q,
    orthogonalize,
)
from fedtrust.compression.codecs.topk import MIN_SAMPLE, THRESHOLD_SAMPLE, TopKCompressor, top_k_indices
from fedtrust.models import resnet18

try:  # PyTorch's own orthogonalisation, the reference for ours
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import (
        _orthogonalize as _torch_orthogonalize_batched,
    )

    def torch_orthogonalize(matrix: torch.Tensor) -> torch.Tensor:
        """PyTorch's ``_orthogonalize`` on one (n, r) matrix (it works in place on a batch)."""
        batch = matrix.clone().unsqueeze(0).contiguous()
        _torch_orthogonalize_batched(batch, 0)
        return batch[0]

    HAVE_TORCH_HOOK = True
except ImportError:  # a torch build without torch.distributed
    torch_orthogonalize = orthogonalize
    HAVE_TORCH_HOOK = False

# A tiny layout: a conv kernel (16x36 view, compressible up to rank 5), a bias, a
# matrix compressible up to rank 6, one compressible at rank 1 only, one never.
TINY: dict[str, tuple[int, ...]] = {
    "conv.weight": (16, 4, 3, 3),
    "conv.bias": (16,),
    "fc1.weight": (24, 32),
    "thin.weight": (3, 8),
    "small.weight": (4, 4),
}
TINY_LAYOUT = tuple(TINY.items())
POWERSGD_CONFIGS = [{"mode": "allreduce"}, {"mode": "local"}]
ALL_CONFIGS = [("powersgd", {"mode": "allreduce"}), ("powersgd", {"mode": "local"}),
               ("topk", {"scope": "global"}), ("topk", {"scope": "layer"})]


def random_update(layout, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(*shape, generator=gen) for name, shape in layout}


def add(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: a[k] + b[k] for k in a}


def residual_of(compressor, layout) -> dict[str, torch.Tensor]:
    """The residual per tensor from ``state_dict`` (zero where none is kept)."""
    state = compressor.state_dict()
    return {name: state.get(f"residual/{name}", torch.zeros(shape)).reshape(shape).cpu()
            for name, shape in layout}


def assert_close_dicts(a, b, rtol=1e-5, atol=1e-5):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k].cpu().float(), b[k].cpu().float(), rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def resnet_update() -> dict[str, torch.Tensor]:
    model = resnet18(num_classes=10)
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(p.shape, generator=gen) for name, p in model.named_parameters()}


# --------------------------------------------------------------------------- levels
def test_tiny_layout_levels():
    assert compressible_names(TINY_LAYOUT, 1) == ["conv.weight", "fc1.weight", "thin.weight"]
    assert compressible_names(TINY_LAYOUT, 2) == ["conv.weight", "fc1.weight"]
    assert compressible_names(TINY_LAYOUT, 6) == ["fc1.weight"]
    assert max_compressible_level(TINY_LAYOUT) == 6
    check_level(TINY_LAYOUT, 6)
    with pytest.raises(ValueError, match=r"level=7 is too high.*largest level .* is 6"):
        check_level(TINY_LAYOUT, 7)
    with pytest.raises(ValueError, match="too high"):
        check_level((("b", (10,)),), 1)


def test_resnet18_max_level(resnet_update):
    layout = layout_of(resnet_update)
    top = max_compressible_level(layout)
    assert compressible_names(layout, top) and not compressible_names(layout, top + 1)


# --------------------------------------------------------------------------- orthogonalize
@pytest.mark.parametrize("rank", [1, 2, 3, 4, 8])
def test_orthogonalize_matches_pytorch(rank):
    a = torch.randn(40, rank, generator=torch.Generator().manual_seed(rank))
    ours = orthogonalize(a)
    torch.testing.assert_close(ours, torch_orthogonalize(a), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.T @ ours, torch.eye(rank), rtol=0, atol=1e-5)
    # the span is kept: projecting a onto the columns gives a back
    torch.testing.assert_close(ours @ (ours.T @ a), a, rtol=0, atol=1e-5)


def test_orthogonalize_zero_column_stays_finite():
    a = torch.zeros(10, 2)
    a[:, 0] = 1.0
    out = orthogonalize(a)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 1], torch.zeros(10))


# --------------------------------------------------------------------------- 1. Eckart-Young
@pytest.mark.parametrize("config", POWERSGD_CONFIGS, ids=lambda c: c["mode"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_powersgd_converges_to_best_rank_r(config, rank):
    gen = torch.Generator().manual_seed(7)
    u, _ = torch.linalg.qr(torch.randn(64, 48, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(48, 48, generator=gen, dtype=torch.float64))
    s = 0.6 ** torch.arange(48, dtype=torch.float64)
    a = u @ torch.diag(s) @ v.T
    best = u[:, :rank] @ torch.diag(s[:rank]) @ v[:, :rank].T  # truncated SVD
    c = PowerSGDCompressor(level=rank, error_feedback=False, seed=3, **config)
    update = {"w": a.float()}
    errors = []
    for _ in range(40):
        approx = c.decode(c.encode(update))["w"].double()
        errors.append(float(torch.linalg.norm(approx - best) / torch.linalg.norm(best)))
    assert errors[0] > 1e-2  # the random start is far from it ...
    assert errors[-1] < 1e-4  # ... warm starts converge to the best rank-r approximation
    assert c.state_dict().get("residual/w") is None


# --------------------------------------------------------------------------- 2. PyTorch's math
def reference_powersgd_step(m: torch.Tensor, q: torch.Tensor):
    """One single-worker step of PyTorch's powerSGD_hook on one matrix, written plainly."""
    q = torch_orthogonalize(q)          # the hook orthogonalises the (warm-start) Q first
    p = m @ q                           # P = M Q  (all-reduce of P: one worker)
    p = torch_orthogonalize(p)          # orthogonalise P
    q_new = m.T @ p                     # Q = M^T P (all-reduce of Q / world size 1)
    approx = p @ q_new.T                # decompress: P Q^T
    error = m - approx                  # error feedback memory
    return approx, error, q_new, q, p


@pytest.mark.parametrize("config", POWERSGD_CONFIGS, ids=lambda c: c["mode"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_single_client_equals_pytorch_hook_math(config, rank):
    seed = 11
    c = PowerSGDCompressor(level=rank, layout=TINY_LAYOUT, seed=seed, **config)
    names = compressible_names(TINY_LAYOUT, rank)
    # the shared start, rebuilt plainly: one randn(m, r) per compressible tensor in order
    gen = torch.Generator().manual_seed(seed)
    ref_q = {n: torch.randn(matrix_shape(TINY[n])[1], rank, generator=gen) for n in names}
    for n in names:
        assert torch.equal(initial_q(TINY_LAYOUT, rank, seed)[n], ref_q[n])
    ref_err = {n: torch.zeros(matrix_shape(TINY[n])) for n in names}

    for step in range(3):  # the first step and two warm-started ones
        update = random_update(TINY_LAYOUT, seed=100 + step)
        decoded = c.decode(c.encode(update))
        public = c.public_state()
        residual = residual_of(c, TINY_LAYOUT)
        for name, shape in TINY_LAYOUT:
            if name not in names:
                assert torch.equal(decoded[name], update[name])  # sent dense, exactly
                assert torch.equal(residual[name], torch.zeros(shape))
                continue
            m = update[name].reshape(matrix_shape(shape)) + ref_err[name]
            approx, ref_err[name], ref_q[name], q_used, p_hat = reference_powersgd_step(m, ref_q[name])
            torch.testing.assert_close(decoded[name].reshape(m.shape), approx, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(residual[name].reshape(m.shape), ref_err[name],
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(torch.from_numpy(public[f"Q/{name}"]), q_used,
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(torch.from_numpy(public[f"P_hat/{name}"]), p_hat,
                                       rtol=1e-4, atol=1e-5)
            assert not torch.allclose(residual[name], torch.zeros(shape))


# --------------------------------------------------------------------------- 3. error feedback
@pytest.mark.parametrize("name,options", ALL_CONFIGS, ids=lambda x: str(x))
def test_error_feedback_conserves_the_sum(name, options):
    level = 2
    c = get_compressor(name, level=level, layout=TINY_LAYOUT, **options)
    server = get_compressor(name, level=level, layout=TINY_LAYOUT, **options)  # fresh decoder
    total_in = {n: torch.zeros(s) for n, s in TINY_LAYOUT}
    total_out = {n: torch.zeros(s) for n, s in TINY_LAYOUT}
    for t in range(6):
        update = random_update(TINY_LAYOUT, seed=t)
        total_in = add(total_in, update)
        total_out = add(total_out, server.decode(c.encode(update)))
    residual = residual_of(c, TINY_LAYOUT)
    assert_close_dicts(add(total_out, residual), total_in, rtol=1e-4, atol=1e-4)
    # the residual is real: the compressor did leave something out
    assert max(float(r.abs().max()) for r in residual.values()) > 0.1


def test_error_feedback_conserves_the_sum_allreduce_three_clients():
    level, weights = 2, [1.0, 2.0, 3.0]
    clients = [PowerSGDCompressor(level=level, layout=TINY_LAYOUT, seed=5) for _ in weights]
    total_in = [{n: torch.zeros(s) for n, s in TINY_LAYOUT} for _ in weights]
    total_out = [{n: torch.zeros(s) for n, s in TINY_LAYOUT} for _ in weights]
    for t in range(5):
        updates = [random_update(TINY_LAYOUT, seed=10 * t + i) for i in range(len(weights))]
        pay_p = [c.encode_p(u) for c, u in zip(clients, updates)]
        p_hat = aggregate_p(pay_p, weights)
        pay_q = [c.encode_q(p_hat) for c in clients]
        for i, (pp, pq) in enumerate(zip(pay_p, pay_q)):
            total_in[i] = add(total_in[i], updates[i])
            total_out[i] = add(total_out[i], decode_allreduce(p_hat, pp, pq, TINY_LAYOUT))
        q_bar = aggregate_q(pay_q, weights)
        for c in clients:
            c.set_warm_start(q_bar)
    for i, c in enumerate(clients):
        assert_close_dicts(add(total_out[i], residual_of(c, TINY_LAYOUT)), total_in[i],
                           rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- 4. allreduce
def test_allreduce_weighted_mean_and_shared_warm_start():
    level, weights = 3, [1.0, 2.0, 5.0]
    names = compressible_names(TINY_LAYOUT, level)
    clients = [PowerSGDCompressor(level=level, layout=TINY_LAYOUT, seed=9) for _ in weights]
    updates = [random_update(TINY_LAYOUT, seed=i) for i in range(len(weights))]
    pay_p = [c.encode_p(u) for c, u in zip(clients, updates)]
    # every client starts from the same seeded Q
    starts = [c.public_state() for c in clients]
    for n in names:
        assert np.array_equal(starts[0][f"Q/{n}"], starts[2][f"Q/{n}"])

    p_hat = aggregate_p(pay_p, weights)
    for n in names:  # P-hat = orth(weighted mean of the P's), orthonormal
        mean_p = sum(w * torch.from_numpy(pp.arrays[f"p/{n}"]) for w, pp in zip(weights, pay_p))
        mean_p = mean_p / sum(weights)
        ph = torch.from_numpy(p_hat[n])
        torch.testing.assert_close(ph, torch_orthogonalize(mean_p), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ph.T @ ph, torch.eye(level), rtol=0, atol=1e-5)
    pay_q = [c.encode_q(p_hat) for c in clients]
    for c in clients:
        assert set(c.public_state()) == {f"{k}/{n}" for k in ("Q", "P_hat") for n in names}
    decoded = [decode_allreduce(p_hat, pp, pq, TINY_LAYOUT) for pp, pq in zip(pay_p, pay_q)]
    mean = {n: sum(w * d[n] for w, d in zip(weights, decoded)) / sum(weights) for n, _ in TINY_LAYOUT}
    q_bar = aggregate_q(pay_q, weights)
    for name, shape in TINY_LAYOUT:
        if name in names:
            expected = (torch.from_numpy(p_hat[name]) @ torch.from_numpy(q_bar[name]).T).reshape(shape)
        else:
            expected = sum(w * u[name] for w, u in zip(weights, updates)) / sum(weights)
        torch.testing.assert_close(mean[name], expected, rtol=1e-5, atol=1e-5)

    # without the server's Q-bar each client would warm-start from its own Q_i ...
    own = [c.state_dict() for c in clients]
    assert not torch.allclose(own[0][f"warm_q/{names[0]}"], own[1][f"warm_q/{names[0]}"])
    # ... with it, all start the next round from the same (orthogonalised) Q-bar
    for c in clients:
        c.set_warm_start(q_bar)
    for i, c in enumerate(clients):
        c.encode_p(random_update(TINY_LAYOUT, seed=50 + i))
    for n in names:
        expected_q = orthogonalize(torch.from_numpy(q_bar[n]))
        for c in clients:
            torch.testing.assert_close(torch.from_numpy(c.public_state()[f"Q/{n}"]), expected_q,
                                       rtol=0, atol=0)


def test_allreduce_protocol_misuse():
    c = PowerSGDCompressor(level=1, layout=TINY_LAYOUT)
    with pytest.raises(RuntimeError, match="encode_p"):
        c.encode_q({})
    with pytest.raises(ValueError, match="mode='local'"):
        PowerSGDCompressor(level=1, mode="local").encode_p(random_update(TINY_LAYOUT, 0))
    payload = c.encode_p(random_update(TINY_LAYOUT, 0))
    with pytest.raises(ValueError, match="lacks"):
        c.encode_q({})
    with pytest.raises(ValueError, match="weights"):
        aggregate_p([payload], [1.0, 2.0])
    with pytest.raises(ValueError, match="missing"):
        c.set_warm_start({})


# --------------------------------------------------------------------------- 5. Top-K
@pytest.mark.parametrize("level", [1, 2, 4, 32])
def test_topk_budget_equals_powersgd_on_resnet18(resnet_update, level):
    layout = layout_of(resnet_update)
    budget = sum(powersgd_values_per_tensor(layout, level).values())
    powersgd = PowerSGDCompressor(level=level, mode="local").encode(resnet_update)
    assert powersgd.num_values == budget
    dense_keys = {k for k in powersgd.arrays if k.startswith("dense/")}
    per_tensor = powersgd_values_per_tensor(layout, level)
    for scope in ("global", "layer"):
        payload = TopKCompressor(level=level, scope=scope).encode(resnet_update)
        assert payload.num_values == budget, scope
        assert {k for k in payload.arrays if k.startswith("dense/")} == dense_keys
        idx_keys = [k for k in payload.arrays if k.startswith("indices")]
        assert all(payload.arrays[k].dtype == np.int32 for k in idx_keys)
        if scope == "layer":
            for name in compressible_names(layout, level):
                assert payload.arrays[f"values/{name}"].size == per_tensor[name]
        else:
            assert idx_keys == ["indices"]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_topk_keeps_the_largest_magnitudes(scope):
    level = 2
    update = random_update(TINY_LAYOUT, seed=4)
    c = TopKCompressor(level=level, scope=scope, error_feedback=False)
    payload = c.encode(update)
    decoded = c.decode(payload)
    names = compressible_names(TINY_LAYOUT, level)
    budgets = powersgd_values_per_tensor(TINY_LAYOUT, level)
    groups = [names] if scope == "global" else [[n] for n in names]
    for group in groups:
        flat = torch.cat([update[n].reshape(-1) for n in group])
        k = sum(budgets[n] for n in group)
        expected = set(torch.argsort(flat.abs(), descending=True)[:k].tolist())
        key = "" if scope == "global" else f"/{group[0]}"
        got = payload.arrays[f"indices{key}"]
        assert set(got.tolist()) == expected
        np.testing.assert_array_equal(payload.arrays[f"values{key}"], flat[torch.from_numpy(got).long()].numpy())
        kept = torch.cat([decoded[n].reshape(-1) for n in group])
        threshold = flat.abs()[list(expected)].min()
        torch.testing.assert_close(kept, torch.where(flat.abs() >= threshold, flat, 0.0), rtol=0, atol=0)
    for name in TINY:
        if name not in names:
            assert torch.equal(decoded[name], update[name])


@pytest.mark.parametrize(("n", "k"), [(4 * THRESHOLD_SAMPLE + 12_345, 1), (4 * THRESHOLD_SAMPLE + 12_345, 777),
                                      (4 * THRESHOLD_SAMPLE + 12_345, 40_000),
                                      (4 * THRESHOLD_SAMPLE + 12_345, THRESHOLD_SAMPLE - 1),
                                      (16 * MIN_SAMPLE + 5, 3_000), (16 * MIN_SAMPLE + 5, 30_000),
                                      (4 * THRESHOLD_SAMPLE + 12_345, 3 * THRESHOLD_SAMPLE)])
def test_fast_top_k_selects_what_torch_topk_selects(n, k):
    """The sampled-threshold selection (used from 16 x MIN_SAMPLE values, for any k / n) picks the
    very positions ``torch.topk`` picks on continuous data, and with ties and NaNs the
    same magnitudes (NaNs first, as ``torch.topk`` ranks them)."""
    gen = torch.Generator().manual_seed(k)
    flat = torch.randn(n, generator=gen) * torch.rand(n, generator=gen) ** 3  # heavy-tailed, like a gradient
    expected = torch.sort(torch.topk(flat.abs(), k, sorted=False).indices).values
    got = top_k_indices(flat, k)
    assert torch.equal(got, expected)
    assert got.dtype == torch.int64 and bool((got[1:] > got[:-1]).all())

    tied = torch.round(flat * 50) / 50  # many equal magnitudes at the k-th largest
    tied[torch.randint(0, n, (3,), generator=gen)] = float("nan")
    ref = torch.topk(tied.abs(), k, sorted=False).values
    got = top_k_indices(tied, k)
    assert got.numel() == k and got.unique().numel() == k
    picked = tied.abs()[got]
    assert int(picked.isnan().sum()) == min(3, k) == int(ref.isnan().sum())
    assert torch.equal(torch.sort(picked[~picked.isnan()]).values, torch.sort(ref[~ref.isnan()]).values)


def test_fast_top_k_takes_zero_values_and_dtypes_numpy_lacks():
    flat = torch.randn(4 * THRESHOLD_SAMPLE, generator=torch.Generator().manual_seed(1))
    assert top_k_indices(flat, 0).numel() == 0 and top_k_indices(flat, 0).dtype == torch.int64
    half = flat.to(torch.bfloat16)
    expected = torch.sort(torch.topk(half.abs(), 5_000, sorted=False).indices).values
    got = top_k_indices(half, 5_000)
    assert torch.equal(torch.sort(half.abs()[got]).values, torch.sort(half.abs()[expected]).values)


def test_level_too_high_raises():
    for name, options in ALL_CONFIGS:
        with pytest.raises(ValueError, match=r"level=7 is too high.* 6"):
            get_compressor(name, level=7, layout=TINY_LAYOUT, **options)
        c = get_compressor(name, level=7, **options)  # layout learnt at the first encode
        with pytest.raises(ValueError, match="too high"):
            c.encode(random_update(TINY_LAYOUT, 0))


# --------------------------------------------------------------------------- 6. bytes
def test_powersgd_rank1_resnet18_sends_under_one_percent(resnet_update):
    numel = sum(t.numel() for t in resnet_update.values())
    assert numel == 11_173_962
    for mode in ("allreduce", "local"):
        c = PowerSGDCompressor(level=1, mode=mode)
        payload = c.encode(resnet_update)
        assert c.dense_nbytes() == 4 * numel
        assert payload.nbytes < 0.01 * 4 * numel, payload.nbytes / (4 * numel)
        assert all(a.dtype == np.float32 for a in payload.arrays.values())


def test_none_sends_everything():
    update = random_update(TINY_LAYOUT, seed=1)
    c = get_compressor("none", level=3, error_feedback=True)
    payload = c.encode(update)
    assert set(payload.arrays) == {f"dense/{n}" for n in TINY}
    assert payload.nbytes == c.dense_nbytes() == 4 * sum(math.prod(s) for s in TINY.values())
    decoded = NoCompressor(layout=TINY_LAYOUT).decode(payload)
    for n in TINY:
        assert torch.equal(decoded[n], update[n])
    assert c.state_dict() == {} and c.public_state() == {}


# --------------------------------------------------------------------------- 7. state
def _roundtrip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_same_payload(a: Payload, b: Payload) -> None:
    assert list(a.arrays) == list(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)


@pytest.mark.parametrize("name,options", ALL_CONFIGS, ids=lambda x: str(x))
def test_state_dict_roundtrip_continues_identically(name, options):
    first = get_compressor(name, level=2, layout=TINY_LAYOUT, **options)
    for t in range(2):
        first.encode(random_update(TINY_LAYOUT, seed=t))
    second = get_compressor(name, level=2, layout=TINY_LAYOUT, **options)
    second.load_state_dict(_roundtrip(first.state_dict()))
    assert any(k.startswith("residual/") for k in second.state_dict())
    for t in range(2, 4):
        update = random_update(TINY_LAYOUT, seed=t)
        _assert_same_payload(first.encode(update), second.encode(update))
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k
    for k, v in first.public_state().items():
        np.testing.assert_array_equal(v, second.public_state()[k])


def test_state_dict_roundtrip_between_allreduce_phases():
    first = PowerSGDCompressor(level=2, layout=TINY_LAYOUT, seed=1)
    first.encode(random_update(TINY_LAYOUT, seed=0))
    payload_p = first.encode_p(random_update(TINY_LAYOUT, seed=1))
    state = _roundtrip(first.state_dict())
    assert any(k.startswith("pending_m/") for k in state)
    second = PowerSGDCompressor(level=2, layout=TINY_LAYOUT, seed=1)
    second.load_state_dict(state)
    p_hat = aggregate_p([payload_p], [1.0])
    _assert_same_payload(first.encode_q(p_hat), second.encode_q(p_hat))
    update = random_update(TINY_LAYOUT, seed=2)
    _assert_same_payload(first.encode(update), second.encode(update))


@pytest.mark.parametrize("name,options", ALL_CONFIGS, ids=lambda x: str(x))
def test_without_error_feedback_nothing_is_carried(name, options):
    zero = {n: torch.zeros(s) for n, s in TINY_LAYOUT}
    for error_feedback in (False, True):
        c = get_compressor(name, level=1, layout=TINY_LAYOUT, error_feedback=error_feedback, **options)
        c.encode(random_update(TINY_LAYOUT, seed=0))
        has_residual = any(k.startswith("residual/") for k in c.state_dict())
        carried = c.decode(c.encode(zero))
        largest = max(float(v.abs().max()) for v in carried.values())
        assert torch.isfinite(torch.cat([v.reshape(-1) for v in carried.values()])).all()
        if error_feedback:
            assert has_residual and largest > 0.1
        else:
            assert not has_residual and largest == 0.0


def test_bad_names_and_options_raise_naming_the_key():
    assert codec_names() == ("none", "powersgd", "qsgd", "randomk", "signsgd", "topk")
    with pytest.raises(ValueError, match=r"compressor='foo' is not known; allowed: none, powersgd, qsgd, randomk, signsgd, topk"):
        get_compressor("foo")
    with pytest.raises(ValueError, match=r"'scope' is not known for compressor='powersgd'.*mode"):
        get_compressor("powersgd", scope="layer")
    with pytest.raises(ValueError, match=r"'mode' is not known for compressor='topk'.*scope"):
        get_compressor("topk", mode="local")
    with pytest.raises(ValueError, match=r"'seed' is not known for compressor='none'"):
        get_compressor("none", seed=1)
    with pytest.raises(ValueError, match=r"mode='sync' is not known; allowed: allreduce, local"):
        get_compressor("powersgd", mode="sync")
    with pytest.raises(ValueError, match=r"scope='all' is not known; allowed: global, layer"):
        get_compressor("topk", scope="all")
    with pytest.raises(ValueError, match="level"):
        get_compressor("topk", level=0)
    with pytest.raises(ValueError, match="level"):
        get_compressor("powersgd", level=1.5)
    with pytest.raises(ValueError, match="error_feedback"):
        get_compressor("topk", error_feedback="yes")
    with pytest.raises(ValueError, match="min_compression_rate"):
        get_compressor("powersgd", min_compression_rate=0)
    with pytest.raises(ValueError, match="unknown state key 'foo'"):
        PowerSGDCompressor().load_state_dict({"foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="layout"):
        get_compressor("topk", layout=TINY_LAYOUT).encode({"x": torch.zeros(64, 64)})


def test_describe_names_the_options():
    c = get_compressor("powersgd", level=4, mode="local", seed=3, error_feedback=False)
    assert c.describe() == {"compressor": "powersgd", "level": 4, "error_feedback": False,
                            "mode": "local", "seed": 3, "min_compression_rate": 2.0}
    assert get_compressor("topk", scope="layer").describe()["scope"] == "layer"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,options", ALL_CONFIGS, ids=lambda x: str(x))
def test_cuda_matches_cpu(name, options):
    update = random_update(TINY_LAYOUT, seed=3)
    cpu = get_compressor(name, level=2, **options)
    gpu = get_compressor(name, level=2, **options)
    for _ in range(2):
        out_cpu = cpu.decode(cpu.encode(update))
        out_gpu = gpu.decode(gpu.encode({k: v.cuda() for k, v in update.items()}))
        assert all(v.device.type == "cpu" for v in out_gpu.values())
        assert_close_dicts(out_gpu, out_cpu, rtol=1e-4, atol=1e-4)
