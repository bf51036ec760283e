"""QSGD, EF-signSGD and random-K: one codec module each, their bytes, math, views and bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedtrust.attacks.gradinv.reconstruct import gradient_cost, nearest_allowed
from fedtrust.compression import CompressorSpec, get_codec
from fedtrust.compression.base import layout_of
from fedtrust.compression.bits import (
    pack_signs,
    pack_uint,
    packed_size,
    padding_is_zero,
    unpack_signs,
    unpack_uint,
)
from fedtrust.compression.codecs.randomk import random_positions, round_seed
from fedtrust.compression.rounds import run_round
from fedtrust.compression.validate import PayloadError, validate_payload
from fedtrust.compression.views import apply_view
from fedtrust.models import get_model


@pytest.fixture(scope="module")
def layout():
    return layout_of(dict(get_model("convnet", 10, 1).named_parameters()))


def gradients(layout, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{name: torch.randn(shape, generator=gen) * 0.01 for name, shape in layout} for _ in range(n)]


def codec_for(name, level, layout, seed=42):
    options = (("seed", seed),) if name in ("qsgd", "randomk") else ()
    return get_codec(CompressorSpec(name=name, level=level, error_feedback=name != "qsgd", options=options), layout)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6, 7, 8])
def test_packed_integers_round_trip_in_exactly_their_bits(width):
    values = np.random.default_rng(width).integers(0, 1 << width, 1001).astype(np.uint8)
    packed = pack_uint(values, width)
    assert packed.dtype == np.uint8 and packed.size == packed_size(1001, width) == math.ceil(1001 * width / 8)
    # the documented layout: every value's bits, little-endian, through np.packbits
    bits = (values[:, None] >> np.arange(width, dtype=np.uint8)) & 1
    np.testing.assert_array_equal(packed, np.packbits(bits.reshape(-1), bitorder="little"))
    np.testing.assert_array_equal(unpack_uint(packed, 1001, width), values)
    assert padding_is_zero(packed, 1001, width)
    if (1001 * width) % 8:
        spoiled = packed.copy()
        spoiled[-1] |= 0x80
        assert not padding_is_zero(spoiled, 1001, width)
        np.testing.assert_array_equal(unpack_uint(spoiled, 1001, width), values)  # why validation must look
    with pytest.raises(ValueError, match="does not fit"):
        pack_uint(np.array([1 << width]) if width < 8 else np.array([256]), width)
    signs = np.array([-1.0, 0.0, 2.0, -3.0])
    np.testing.assert_array_equal(unpack_signs(pack_signs(signs < 0), 4), [-1, 1, 1, -1])


def test_bytes_on_the_wire_are_the_packed_arrays(layout):
    grads = gradients(layout)
    sizes = [math.prod(s) for _, s in layout]
    sign = run_round(codec_for("signsgd", 0, layout), grads)[0]
    assert sum(a.nbytes for a in sign.arrays.values()) == sum(4 + math.ceil(d / 8) for d in sizes)
    for bits in (1, 4, 8):
        q = run_round(codec_for("qsgd", bits, layout), grads)[0]
        assert sum(a.nbytes for a in q.arrays.values()) == sum(4 + math.ceil(d / 8) + math.ceil(d * bits / 8)
                                                               for d in sizes)
    topk = run_round(codec_for("topk", 1, layout), grads)[0]
    randk = run_round(codec_for("randomk", 1, layout), grads)[0]
    # random-K sends Top-K's values without the indices: the same count of float32 values
    assert randk.arrays["values"].size == topk.arrays["values"].size
    dense = sum(a.nbytes for k, a in topk.arrays.items() if k.startswith("dense/"))
    assert sum(a.nbytes for a in randk.arrays.values()) == dense + 4 * topk.arrays["values"].size


def test_signsgd_sends_the_mean_magnitude_and_the_signs_and_keeps_the_rest(layout):
    codec = codec_for("signsgd", 0, layout)
    comp = codec.compressor()
    g = gradients(layout, 1)[0]
    first = comp.encode(g)
    decoded = codec.decode(first.arrays, {})
    for name, _ in layout:
        expected = torch.where(g[name] < 0, -1.0, 1.0) * g[name].abs().mean()
        torch.testing.assert_close(decoded[name], expected)
    second = comp.encode(g)  # error feedback: p = g + (g - decoded)
    for name, _ in layout:
        p = 2 * g[name] - decoded[name]
        torch.testing.assert_close(codec.decode(second.arrays, {})[name],
                                   torch.where(p < 0, -1.0, 1.0) * p.abs().mean(), rtol=1e-5, atol=1e-7)


def test_qsgd_is_unbiased_and_has_as_many_levels_as_its_bits(layout):
    g = gradients(layout, 1)[0]
    name = layout[0][0]
    mean = torch.zeros_like(g[name])
    draws = 400
    for seed in range(draws):
        codec = codec_for("qsgd", 2, layout, seed=seed)
        mean += codec.decode(codec.compressor().encode(g).arrays, {})[name] / draws
    spread = g[name].norm() / 3 / math.sqrt(draws)  # one level (||v|| / s) over sqrt(draws)
    assert float((mean - g[name]).abs().max()) < 5 * float(spread)
    comp = codec_for("qsgd", 3, layout).compressor()
    levels = comp.parts(comp.encode(g).arrays, name, layout[0][1])[1]
    assert comp.levels == 7 and float(levels.max()) <= 7 and float(levels.min()) >= 0
    with pytest.raises(ValueError, match="1..8"):
        codec_for("qsgd", 9, layout).compressor()


def test_randomk_positions_come_from_the_round_seed_and_are_shared_by_the_round(layout):
    codec = codec_for("randomk", 1, layout)
    server = codec.server()
    first = run_round(codec, gradients(layout), server=server, server_round=1)
    second = run_round(codec, gradients(layout, seed=1), server=server, server_round=2)
    assert first[0].public_state["seed"][0] == round_seed(42, 1) != second[0].public_state["seed"][0]
    support = [{n: (o.decoded[n] != 0) for n, _ in layout} for o in first]
    name = next(n for n, _ in layout if f"dense/{n}" not in first[0].arrays)
    assert torch.equal(support[0][name], support[1][name])  # one support: secure aggregation works
    pos = lambda obs: codec.views(obs.arrays, obs.public_state)[-1].aux[0]
    assert not torch.equal(pos(first[0]), pos(second[0]))
    with pytest.raises(ValueError, match="round's seed"):
        codec.client_step(codec.compressor(), 0, gradients(layout, 1)[0], {})


@pytest.mark.parametrize(("name", "level"), [("randomk", 2), ("signsgd", 0), ("qsgd", 4)])
def test_what_the_attackers_match_holds_for_the_true_gradient(layout, name, level):
    """Exact codecs: every view of the client's gradient equals what was observed. Every
    codec: the client's gradient lies within every bound, so a bound costs nothing at the
    truth, and costs something for another gradient."""
    codec = codec_for(name, level, layout)
    grads = gradients(layout)
    obs = run_round(codec, grads)[0]
    views, bounds = codec.views(obs.arrays, obs.public_state), codec.bounds(obs.arrays, obs.public_state)
    if name != "qsgd":  # QSGD's measurement is the (unbiased, noisy) decoded update
        for v in views:
            torch.testing.assert_close(apply_view(v.kind, v.params, v.aux, grads[0]).reshape(-1),
                                       v.observed.reshape(-1), rtol=1e-4, atol=1e-6)
    assert (len(bounds) > 0) == (name != "randomk")
    for b in bounds:
        truth = apply_view(b.kind, b.params, b.aux, grads[0])
        assert torch.equal(nearest_allowed(truth, b.observed), truth)
    if bounds:
        own = [apply_view(v.kind, v.params, v.aux, grads[0]) for v in views + bounds]
        other = [apply_view(v.kind, v.params, v.aux, grads[1]) for v in views + bounds]
        observed = [v.observed for v in views + bounds]
        flags = [False] * len(views) + [True] * len(bounds)
        truth_cost = float(gradient_cost(own, observed, "cosine", flags))
        assert truth_cost < float(gradient_cost(other, observed, "cosine", flags)) - 0.05
        if name == "signsgd":
            assert truth_cost < 1e-5


@pytest.mark.parametrize(("name", "level", "key", "bad", "words"), [
    ("signsgd", 0, "signs/", lambda a: a[:-1], "shape"),
    ("signsgd", 0, "scale/", lambda a: -a, "negative"),
    ("qsgd", 2, "levels/", lambda a: np.concatenate([a, a]), "shape"),
    ("qsgd", 2, "norm/", lambda a: a.astype(np.float64), "dtype"),
    ("randomk", 1, "values", lambda a: a[:-1], "shape"),
    # wrong packing: bits set after the last value (signs of 1 bit, QSGD levels of 3 bits)
    ("signsgd", 0, "signs/", lambda a: a | np.uint8(0x80) * (np.arange(a.size) == a.size - 1), "padding"),
    ("qsgd", 3, "signs/", lambda a: a | np.uint8(0x80) * (np.arange(a.size) == a.size - 1), "padding"),
    ("qsgd", 3, "levels/", lambda a: a | np.uint8(0x80) * (np.arange(a.size) == a.size - 1), "padding"),
    # out-of-range levels: every level at its top, which no unit vector rounds to
    ("qsgd", 3, "levels/", lambda a: np.full_like(a, 0xFF), "out of range"),
])
def test_a_malformed_packed_payload_is_refused_with_its_reason(layout, name, level, key, bad, words):
    codec = codec_for(name, level, layout)
    arrays = dict(run_round(codec, gradients(layout))[0].arrays)
    sizes = {f"{kind}/{n}": math.prod(s) * (level if kind == "levels" else 1)
             for n, s in layout for kind in ("signs", "levels")}
    # padding exists only where a tensor's bits do not fill whole bytes
    target = next(k for k in arrays if k.startswith(key) and (words != "padding" or sizes[k] % 8))
    arrays[target] = bad(arrays[target])
    with pytest.raises(PayloadError, match=words):
        validate_payload(arrays, codec)


def test_a_reply_naming_its_own_seed_is_refused(layout):
    """Random-K's positions come from the seed the server broadcast; a client cannot send
    another seed (nor QSGD a rounding seed): the payload carries no such array."""
    for name, level in (("randomk", 1), ("qsgd", 2)):
        codec = codec_for(name, level, layout)
        arrays = dict(run_round(codec, gradients(layout))[0].arrays)
        with pytest.raises(PayloadError, match="unexpected arrays: seed"):
            validate_payload({**arrays, "seed": np.array([7], dtype=np.int64)}, codec)


def test_randomk_positions_are_one_per_block_and_each_value_is_sent_with_probability_k_over_n():
    total, k = 1000, 37
    draws = [random_positions(total, k, seed) for seed in range(2000)]
    bounds = torch.arange(k + 1) * total // k
    for pos in draws[:50]:
        assert pos.numel() == k and bool((pos[1:] > pos[:-1]).all())
        assert bool(((pos >= bounds[:-1]) & (pos < bounds[1:])).all())  # one in each block
    counts = torch.bincount(torch.cat(draws), minlength=total).double()
    rate = counts / len(draws)
    # each of 1000 inclusion rates is a binomial mean of 2000 draws at p = K/N = 0.037
    sd = math.sqrt(k / total * (1 - k / total) / len(draws))
    assert abs(float(rate.mean()) - k / total) < 1e-12
    assert float((rate - k / total).abs().max()) < 5 * sd
    assert torch.equal(random_positions(total, k, 5), random_positions(total, k, 5))
    with pytest.raises(ValueError, match="cannot draw"):
        random_positions(10, 11, 0)


@pytest.fixture(scope="module")
def simulations(tmp_path_factory):
    """One Flower run per new codec on the embedded sample: 3 clients, 2 rounds, every update
    intercepted, both attackers on client 0's round-1 image, membership attacks."""
    from experiments.flwr_runner import LocalSuperLink

    out = tmp_path_factory.mktemp("runs")
    base = {"model": "convnet", "num-server-rounds": 2, "batch-size": 8, "eval-samples": 50,
            "intercept-rounds": "all", "intercept-clients": "all", "attack": "gradinv", "attacker": "both",
            "attack-clients": "0", "attack-iterations": 10, "mia": True, "mia-samples": 20}
    cases = {"qsgd": {"compressor": "qsgd", "level": 4}, "signsgd": {"compressor": "signsgd"},
             "randomk": {"compressor": "randomk", "level": 2}}
    results = {}
    with LocalSuperLink() as link:
        for name, extra in cases.items():
            cfg = {**base, **extra, "output-dir": str(out), "run-name": name}
            results[name] = (link.run_app(run_config=cfg, num_supernodes=3, timeout=600), out / name)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qsgd", "signsgd", "randomk"])
def test_a_simulation_with_each_new_codec_counts_the_packed_bytes_and_runs_both_attackers(simulations, name):
    import pandas as pd

    from fedtrust.interception import InterceptedUpdate

    outcome, folder = simulations[name]
    assert outcome.ok, f"{name}: {outcome.status} {outcome.details}\n{outcome.log[-3000:]}"
    rounds = pd.read_csv(folder / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["clients"] == 3).all() and (rounds["failed"] == 0).all()
    for row in rounds.itertuples():
        items = [InterceptedUpdate.load(p) for p in sorted((folder / "intercepted").glob(f"round{row.round}_*.pt"))]
        sent = sum(a.nbytes for it in items for a in it.payload.values())
        assert row.uplink_bytes == sent and row.uplink_bytes < row.dense_bytes / 3
        for it in items:
            for key, array in it.payload.items():
                numel = math.prod(it.decoded[key.split("/", 1)[1]].shape) if "/" in key else None
                if key.startswith("signs/"):
                    assert array.dtype == np.uint8 and array.size == math.ceil(numel / 8)
                if key.startswith("levels/"):
                    assert array.dtype == np.uint8 and array.size == math.ceil(numel * 4 / 8)
    attacks = pd.read_csv(folder / "gradinv.csv")
    assert set(attacks["attacker"]) == {"naive", "adaptive"} and (attacks["compressor"] == name).all()
    mia = pd.read_csv(folder / "mia.csv")
    assert mia["client"].notna().any() and mia["client"].isna().any()


@pytest.mark.parametrize(("name", "level"), [("signsgd", 0), ("randomk", 1), ("topk", 1)])
def test_error_feedback_conserves_the_sum(layout, name, level):
    """Over rounds, what was sent plus what is still owed equals everything the client had to send."""
    codec = codec_for(name, level, layout)
    comp = codec.compressor()
    server = codec.server()
    updates = gradients(layout, n=3, seed=5)
    sent = {n: torch.zeros(s) for n, s in layout}
    for server_round, update in enumerate(updates, start=1):
        broadcast = server.broadcast(server_round)
        payload = codec.client_step(comp, 0, update, broadcast)
        decoded, _ = server.decode(0, payload.arrays)
        sent = {n: sent[n] + decoded[n] for n, _ in layout}
    owed = {k.split("/", 1)[1]: v for k, v in comp.state_dict().items()}
    for n, shape in layout:
        total = sum(u[n] for u in updates)
        torch.testing.assert_close(sent[n] + owed.get(n, torch.zeros(shape)).reshape(shape), total,
                                   rtol=1e-4, atol=1e-5)


def test_randomk_server_reconstructs_the_clients_positions(layout):
    codec = codec_for("randomk", 2, layout)
    comp, server = codec.compressor(), codec.server()
    update = gradients(layout, 1)[0]
    payload = codec.client_step(comp, 0, update, server.broadcast(3))
    client_positions = comp.positions(comp.round_seed)
    decoded, public = server.decode(0, payload.arrays)
    assert torch.equal(codec.views(payload.arrays, public)[-1].aux[0], client_positions)
    sparse = [n for n, _ in layout if f"dense/{n}" not in payload.arrays]
    joined = torch.cat([decoded[n].reshape(-1) for n in sparse])
    expected = torch.cat([update[n].reshape(-1) for n in sparse])
    assert torch.equal(joined[client_positions], expected[client_positions])
    assert int((joined != 0).sum()) <= client_positions.numel()


def test_the_compression_bench_covers_every_registered_codec_at_the_levels_it_accepts():
    import sys
    from pathlib import Path

    from fedtrust.compression.registry import codec_class, codec_names

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, bench)
    try:
        import compression
    finally:
        sys.path.remove(bench)
    labels = compression.variants()
    assert {name for _, name, _ in labels} == set(codec_names())
    assert {"powersgd allreduce", "powersgd local", "topk global", "topk layer"} <= {label for label, _, _ in labels}
    assert compression.codec_levels(codec_class("qsgd"), (1, 4, 32)) == [1, 4, 8]
    assert compression.codec_levels(codec_class("topk"), (1, 4, 32)) == [1, 4, 32]
    assert compression.codec_levels(codec_class("signsgd"), (1, 4, 32)) == [1]


def test_qsgd_never_wraps_a_top_level_to_zero(monkeypatch):
    """|v_i| s / ||v|| can round to just above s (a one-value tensor: 255.0000153 at 8 bits); the
    rounding must not then go up to s + 1, which a uint8 level would wrap to 0. Uniforms of 0
    (every fraction rounds up) make the case certain."""
    from fedtrust.compression.codecs.qsgd import QSGDCompressor

    layout = (("w", (1,)), ("b", (3,)))
    update = {"w": torch.tensor([0.37]), "b": torch.tensor([0.37, -1e-3, 2e-3])}
    comp = QSGDCompressor(level=8, layout=layout, seed=1)

    class Zeros:
        def random(self, n, dtype):
            return np.zeros(n, dtype=dtype)

    monkeypatch.setattr(QSGDCompressor, "_generator", lambda self, update: Zeros())
    decoded = comp.decode(comp.encode(update))
    assert decoded["w"].item() == pytest.approx(0.37, rel=1e-6)  # level s: the whole norm, not 0


def test_sign_decoding_stays_finite_at_the_largest_scales():
    """A hostile but finite scale of 3e38 decodes to +-3e38, never to NaN (2 x 3e38 overflows float32)."""
    from fedtrust.compression.bits import signed

    negative = torch.tensor([False, True, False])
    for magnitude in (3e38, torch.tensor(3e38), 0.5):
        out = signed(negative, magnitude)
        expected = torch.where(negative, -torch.tensor(float(magnitude)), torch.tensor(float(magnitude)))
        assert torch.isfinite(out).all() and torch.equal(out, expected)


def test_negating_by_the_sign_bit_is_exact_negation_for_every_float():
    """QSGD's decode flips IEEE sign bits (:func:`negate_where`): bit for bit ``-x`` where the
    sign bit is set and ``x`` elsewhere, for zeros, subnormals, infinities and NaNs too."""
    from fedtrust.compression.bits import negate_where

    values = torch.tensor([0.0, -0.0, 1.5, -2.25, 1e-45, float("inf"), float("-inf"), 3e38, float("nan")] * 2)
    negative = torch.tensor([0] * 9 + [1] * 9, dtype=torch.uint8)
    expected = torch.where(negative.bool(), -values, values)
    got = negate_where(values.clone(), negative)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    assert torch.equal(negate_where(values.clone(), negative.bool()).view(torch.int32), expected.view(torch.int32))


def test_qsgd_decodes_a_non_finite_norm_as_the_plain_product_does():
    """A NaN or infinite norm (hostile, or a huge update's overflowed one) decodes to exactly the
    floats of ``levels * (+-step)`` (bit for bit, NaN signs included), as before sign flipping."""
    from fedtrust.compression.bits import signed
    from fedtrust.compression.codecs.qsgd import QSGDCompressor

    comp = QSGDCompressor(level=3, layout=(("w", (6,)),), seed=0)
    payload = comp.encode({"w": torch.tensor([1.0, -2.0, 0.0, -0.0, 3.0, -4.0])})
    for norm in (float("nan"), float("inf"), 5.0):
        arrays = {**payload.arrays, "norm/w": np.array([norm], dtype=np.float32)}
        got = comp.decode(type(payload)(arrays))["w"]
        levels = torch.from_numpy(unpack_uint(arrays["levels/w"], 6, 3)).to(torch.float32)
        negative = torch.from_numpy(unpack_uint(arrays["signs/w"], 6, 1)).to(torch.bool)
        expected = levels * signed(negative, norm / 7)
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), norm
