"""Client-level differential privacy: the mechanism, its accounting, and a real run in which the
server only ever sees the clipped and noised update."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedtrust.config import ConfigError, parse_run_config
from fedtrust.models import get_model
from fedtrust.privacy import ClientDP, PrivacyLedger, epsilon, noise_generator


def update(seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(40, 30, generator=gen) * scale, "b": torch.randn(30, generator=gen) * scale}


def norm(u):
    return math.sqrt(sum(float(t.pow(2).sum()) for t in u.values()))


def test_the_update_is_clipped_to_the_norm_then_noised_with_z_times_c():
    big, small = update(scale=10.0), update(scale=0.001)
    clipped, before = ClientDP(clip=2.0, noise_multiplier=0.0).privatize(big, torch.Generator().manual_seed(0))
    assert before == pytest.approx(norm(big)) and norm(clipped) == pytest.approx(2.0, rel=1e-5)
    kept, _ = ClientDP(clip=2.0, noise_multiplier=0.0).privatize(small, torch.Generator().manual_seed(0))
    assert all(torch.equal(kept[k], small[k]) for k in small)  # under the clip: unchanged
    noised, _ = ClientDP(clip=2.0, noise_multiplier=0.5).privatize(small, noise_generator(42, 1, 0))
    noise = torch.cat([(noised[k] - small[k]).reshape(-1) for k in small])
    assert float(noise.std()) == pytest.approx(0.5 * 2.0, rel=0.1)  # 1230 draws of N(0, 1)
    again, _ = ClientDP(clip=2.0, noise_multiplier=0.5).privatize(small, noise_generator(42, 1, 0))
    other, _ = ClientDP(clip=2.0, noise_multiplier=0.5).privatize(small, noise_generator(42, 1, 1))
    assert torch.equal(again["a"], noised["a"]) and not torch.equal(other["a"], noised["a"])


def test_epsilon_is_opacus_rdp_accounting_of_the_rounds_taken_part_in():
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(20):
        accountant.step(noise_multiplier=1.1, sample_rate=1.0)
    assert epsilon(1.1, 20, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)
    assert epsilon(1.1, 10, 1e-5) < epsilon(1.1, 20, 1e-5) and epsilon(2.0, 20, 1e-5) < epsilon(1.1, 20, 1e-5)
    assert epsilon(0.0, 3, 1e-5) == math.inf and epsilon(1.0, 0, 1e-5) == 0.0
    ledger = PrivacyLedger(ClientDP(clip=1.0, noise_multiplier=1.1))
    ledger.spend([0, 1])
    assert ledger.spend([1, 2, 2]) == pytest.approx(epsilon(1.1, 2, 1e-5))  # partition 1 took part twice
    assert ledger.rounds_of == {0: 1, 1: 2, 2: 1}


def test_dp_settings_are_validated_and_refused_with_batchnorm():
    from strategies.server_app import check_dp_fits

    with pytest.raises(ConfigError, match="dp-clip"):
        parse_run_config({"dp-clip": -1.0})
    with pytest.raises(ConfigError, match="dp-delta"):
        parse_run_config({"dp-clip": 1.0, "dp-delta": 1.5})
    cfg = parse_run_config({"dp-clip": 1.0, "model": "resnet18"})
    with pytest.raises(ConfigError, match="BatchNorm"):
        check_dp_fits(cfg, get_model("resnet18", 10, 3))
    check_dp_fits(parse_run_config({"dp-clip": 1.0}), get_model("convnet", 10, 1))
    assert parse_run_config({}).client_dp() is None


@pytest.mark.slow
def test_a_dp_run_reports_epsilon_and_the_server_sees_only_the_noised_update(tmp_path):
    from experiments.flwr_runner import REPO_ROOT, LocalSuperLink
    from fedtrust.data import load_dataset
    from fedtrust.interception import InterceptedUpdate
    from fedtrust.training import batch_gradient

    cfg = {"model": "convnet", "num-server-rounds": 2, "eval-samples": 100, "compressor": "none",
           "dp-clip": 1.0, "dp-noise-multiplier": 0.05, "dp-delta": 1e-5, "intercept-rounds": "1",
           "intercept-clients": "all", "attack": "gradinv", "attacker": "both", "attack-iterations": 20,
           "mia": False, "output-dir": str(tmp_path), "run-name": "dp"}
    with LocalSuperLink() as link:
        outcome = link.run_app(REPO_ROOT, run_config=cfg, num_supernodes=2, timeout=600)
    assert outcome.ok, outcome.log[-3000:]
    folder = tmp_path / "dp"
    rounds = pd.read_csv(folder / "rounds.csv")
    dp = ClientDP(clip=1.0, noise_multiplier=0.05)
    assert list(rounds["epsilon"]) == [pytest.approx(dp.epsilon(1), rel=1e-3), pytest.approx(dp.epsilon(2), rel=1e-3)]
    privacy = json.loads((folder / "config.json").read_text())["privacy"]
    assert privacy["epsilon_all_rounds"] == pytest.approx(dp.epsilon(2)) and privacy["clip"] == 1.0
    # what the server intercepted is the clipped gradient plus N(0, (z C)^2) noise, never the gradient
    item = InterceptedUpdate.load(folder / "intercepted" / "round1_client1.pt")
    train = load_dataset("sample", "train")
    x, y = train.to_tensors(np.asarray(item.batch_indices))
    model = get_model("convnet", train.spec.num_classes, train.spec.channels)
    model.load_state_dict(item.global_state)
    clean, _ = batch_gradient(model, x, y, "train")
    factor = min(1.0, 1.0 / norm(clean))
    residual = torch.cat([(item.decoded[n] - clean[n] * factor).reshape(-1) for n in clean])
    assert float(residual.std()) == pytest.approx(0.05, rel=0.05)  # 66 k draws
    assert not any(torch.allclose(item.decoded[n], clean[n], atol=1e-3) for n in clean)
    assert set(pd.read_csv(folder / "gradinv.csv")["attacker"]) == {"naive", "adaptive"}
