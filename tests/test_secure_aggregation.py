"""observe = "aggregate": the server sees only the round's mean update, as with secure aggregation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedtrust.compression import CompressorSpec, get_codec
from fedtrust.compression.base import layout_of
from fedtrust.compression.rounds import run_round
from fedtrust.compression.views import apply_view
from fedtrust.config import ConfigError, parse_run_config
from fedtrust.models import get_model

CASES = {("none", 0, ()): True, ("powersgd", 2, (("mode", "allreduce"), ("seed", 1))): True,
         ("powersgd", 2, (("mode", "local"), ("seed", 1))): False, ("topk", 2, (("scope", "global"),)): False,
         ("randomk", 2, (("seed", 1),)): True, ("qsgd", 4, (("seed", 1),)): False, ("signsgd", 0, ()): False}


@pytest.fixture(scope="module")
def layout():
    return layout_of(dict(get_model("convnet", 10, 1).named_parameters()))


@pytest.mark.parametrize(("case", "summable"), CASES.items(), ids=[f"{n}-{dict(o).get('mode', '')}" for n, _, o in CASES])
def test_a_summable_codec_sends_arrays_whose_mean_is_what_the_mean_gradient_would_send(layout, case, summable):
    name, level, options = case
    codec = get_codec(CompressorSpec(name=name, level=level, error_feedback=True, options=options), layout)
    assert codec.summable is summable
    if not summable:
        return
    gen = torch.Generator().manual_seed(3)
    grads = [{n: torch.randn(s, generator=gen) for n, s in layout} for _ in range(3)]
    weights = np.array([2.0, 1.0, 1.0]) / 4.0
    observed = run_round(codec, grads, weights=list(weights))
    mean_arrays = {k: sum(w * o.arrays[k].astype(np.float64) for w, o in zip(weights, observed)).astype(np.float32)
                   for k in observed[0].arrays}
    mean_grad = {n: sum(w * g[n] for w, g in zip(weights, grads)) for n, _ in layout}
    # the aggregate view: decoding the mean of what was sent is the mean of the decoded updates
    decoded_mean = codec.decode(mean_arrays, observed[0].public_state)
    for n, _ in layout:
        torch.testing.assert_close(decoded_mean[n], sum(w * o.decoded[n] for w, o in zip(weights, observed)).float(),
                                   rtol=1e-3, atol=1e-4)
    for view in codec.views(mean_arrays, observed[0].public_state):
        torch.testing.assert_close(apply_view(view.kind, view.params, view.aux, mean_grad).reshape(-1).float(),
                                   view.observed.reshape(-1), rtol=1e-3, atol=1e-4)


def test_aggregate_observation_needs_every_client_attacked():
    with pytest.raises(ConfigError, match="attack-clients='all'"):
        parse_run_config({"observe": "aggregate", "attack-clients": "0"})
    parse_run_config({"observe": "aggregate", "attack-clients": "all"})
    parse_run_config({"observe": "aggregate", "attack": "none"})


@pytest.mark.slow
def test_a_secure_aggregation_run_attacks_the_mean_as_one_batch_and_refuses_top_k(tmp_path):
    from experiments.flwr_runner import REPO_ROOT, LocalSuperLink
    from fedtrust.interception import InterceptedUpdate

    base = {"model": "convnet", "num-server-rounds": 1, "eval-samples": 100, "observe": "aggregate",
            "attack": "gradinv", "attack-clients": "all", "attack-images": 2, "attacker": "both",
            "attack-iterations": 20, "mia": True, "mia-samples": 50, "output-dir": str(tmp_path)}
    with LocalSuperLink() as link:
        ok = link.run_app(REPO_ROOT, run_config={**base, "compressor": "randomk", "level": 2, "run-name": "sa"},
                          num_supernodes=3, timeout=600)
        refused = link.run_app(REPO_ROOT, run_config={**base, "compressor": "topk", "run-name": "topk"},
                               num_supernodes=3, timeout=300)
    assert ok.ok, ok.log[-3000:]
    folder = tmp_path / "sa"
    assert sorted(p.name for p in (folder / "intercepted").glob("round1_*.pt")) == ["round1_aggregate.pt"]
    item = InterceptedUpdate.load(folder / "intercepted" / "round1_aggregate.pt")
    assert item.partition_id == -1 and len(item.batch_indices) == 6 and item.train_config["num-examples"] == 6
    assert item.train_config["clients"] == [0, 1, 2]
    attacks = pd.read_csv(folder / "gradinv.csv")
    assert set(attacks["client"]) == {-1} and sorted(set(attacks["image"])) == list(range(6))
    assert set(attacks["attacker"]) == {"naive", "adaptive"}
    mia = pd.read_csv(folder / "mia.csv")
    assert set(mia["client"].dropna()) == {-1.0}
    assert not refused.ok and "observe='aggregate'" in refused.log and "randomk" in refused.log
