"""LiRA, RMIA, reference models and the metrics' bootstrap intervals (issue 15, Flower-free)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from fedtrust.attacks.mia.intervals import (
    MIN_FALSE_POSITIVES,
    fpr_resolution,
    metric_intervals,
    threshold_at_fpr,
)
from fedtrust.attacks.mia.metrics import roc_auc, tpr_at_fpr
from fedtrust.attacks.mia.reference import ReferenceSpec, pool_halves, train_reference_models
from fedtrust.attacks.mia.reference_attacks import (
    lira_scores,
    logit_scaled_confidence,
    rmia_scores,
    true_label_probability,
)

PHI = NormalDist()


def synthetic(n=2000, m=16, shift=1.0, noise=0.5, seed=0):
    """Per-sample difficulty d ~ N(0, 1); a model's logit-scaled confidence on a sample is
    d + noise, plus ``shift`` when it trained on it. Half the samples are members of the
    target; each reference model trained on a random half."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=n)
    member = rng.random(n) < 0.5
    ref_in = rng.random((m, n)) < 0.5
    target = d + shift * member + noise * rng.normal(size=n)
    refs = d[None] + shift * ref_in + noise * rng.normal(size=(m, n))
    return target, refs, ref_in, member


def test_logit_scaled_confidence_is_the_log_odds_of_the_true_label():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [30.0, -30.0, 0.0]])
    labels = torch.tensor([0, 2, 0])
    p = torch.softmax(logits.double(), 1)[torch.arange(3), labels]
    expected = torch.log(p[:2] / (1 - p[:2])).numpy()
    got = logit_scaled_confidence(logits, labels)
    np.testing.assert_allclose(got[:2], expected, rtol=1e-12)
    assert np.isfinite(got[2]) and got[2] > 29  # stable where 1 - p rounds to 0
    np.testing.assert_allclose(true_label_probability(logits, labels)[:2], p[:2].numpy())


@pytest.mark.parametrize("online", [True, False])
def test_lira_orders_members_above_non_members_as_theory_says(online):
    """With the difficulty removed, member and non-member scores differ by shift / noise
    standard deviations: AUC = Phi(shift / (noise sqrt 2)) for the offline z statistic (and
    the online ratio, monotone in it here). The target's raw confidence, burdened with the
    difficulty's variance, only reaches Phi(shift / sqrt(2 (1 + noise^2)))."""
    target, refs, ref_in, member = synthetic(m=64)
    auc = roc_auc(lira_scores(target, refs, ref_in, online=online), member)
    ideal = PHI.cdf(1.0 / (0.5 * math.sqrt(2)))
    raw = PHI.cdf(1.0 / math.sqrt(2 * (1 + 0.25)))
    assert abs(roc_auc(target, member) - raw) < 0.03
    assert ideal - 0.04 < auc <= ideal + 0.03
    assert auc > roc_auc(target, member) + 0.1
    # with 8 reference models (pooled variance) LiRA still beats the raw confidence clearly
    few = lira_scores(target, refs[:8], ref_in[:8], online=online)
    assert roc_auc(few, member) > roc_auc(target, member) + 0.05


def test_rmia_orders_members_above_non_members_with_two_reference_models():
    sig = lambda v: 1 / (1 + np.exp(-v))  # probabilities from the confidences
    rng = np.random.default_rng(3)
    d = rng.normal(size=1000)  # the population: no model trained on it
    pop_t, pop_r = d + 0.5 * rng.normal(size=1000), d[None] + 0.5 * rng.normal(size=(2, 1000))
    # online: the candidates are in the reference models' pool (each IN for about half)
    target, refs, ref_in, member = synthetic(m=2, seed=1)
    scores = rmia_scores(sig(target), sig(refs), ref_in, sig(pop_t), sig(pop_r), online=True)
    assert ((scores >= 0) & (scores <= 1 + 1e-8)).all()
    assert roc_auc(scores, member) > roc_auc(target, member) + 0.05
    # offline: the reference models never saw the candidates (every one OUT)
    target, refs, was_in, member = synthetic(m=2, seed=4)
    refs = refs - 1.0 * was_in  # undo their IN shift: these models did not train on the candidates
    out_only = np.zeros_like(was_in)
    for a in (1.0, 0.5):
        offline = rmia_scores(sig(target), sig(refs), out_only, sig(pop_t), sig(pop_r), offline_a=a)
        assert roc_auc(offline, member) > roc_auc(target, member) + 0.05
    with pytest.raises(ValueError, match="offline_a"):
        rmia_scores(sig(target), sig(refs), out_only, sig(pop_t), sig(pop_r), offline_a=2.0)


def test_the_bootstrap_interval_covers_the_true_auc_at_about_the_nominal_rate():
    """Members N(mu, 1), non-members N(0, 1): the true AUC is Phi(mu / sqrt 2). Over 200
    independent samples of 100 + 100, the 95% interval should cover it about 95% of the
    time (binomial sd 1.5 points)."""
    mu = 1.0
    truth = PHI.cdf(mu / math.sqrt(2))
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for t in range(trials):
        est = metric_intervals(rng.normal(mu, 1, 100), rng.normal(0, 1, 100), resamples=400, seed=t).auc
        covered += est.low <= truth <= est.high
    assert 0.89 <= covered / trials <= 0.99


def test_interval_metrics_match_the_point_metrics_and_the_threshold_is_set_on_non_members_only():
    rng = np.random.default_rng(5)
    pos, neg = rng.normal(1.5, 1, 300), rng.normal(0, 1, 3000)
    scores = np.r_[pos, neg]
    member = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    th = threshold_at_fpr(neg[:1000], 0.01)  # from known non-members, not the evaluated ones
    assert (neg[:1000] >= th).sum() <= 10
    res = metric_intervals(pos, neg, threshold=th, resamples=200, seed=1)
    assert res.auc.value == pytest.approx(roc_auc(scores, member))
    assert res.tpr_at_1pct_fpr.value == pytest.approx(tpr_at_fpr(scores, member, 0.01))
    assert res.tpr_at_0_1pct_fpr.value == pytest.approx(tpr_at_fpr(scores, member, 0.001))
    assert res.accuracy.value == pytest.approx(((pos >= th).mean() + (neg < th).mean()) / 2)
    for est in (res.auc, res.tpr_at_1pct_fpr, res.accuracy):
        assert est.low <= est.value <= est.high
    assert res.resamples == 200 and res.seed == 1
    low, one = res.resolutions()
    assert not low.resolved and low.false_positives == 3 and "10000" in low.note()
    assert one.resolved and one.note() == ""
    assert fpr_resolution(10_000, 0.001).false_positives == MIN_FALSE_POSITIVES


def test_reference_models_are_cached_by_their_setting(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    spec = ReferenceSpec("convnet", 10, 1, count=2, rounds=2, local_epochs=1, batch_size=16, lr=0.05,
                         pool_id="test-64", clients=2, seed=3)
    first = train_reference_models(spec, x, y, tmp_path)
    assert (first.trained, first.reused) == (2, 0)
    again = train_reference_models(spec, x, y, tmp_path)
    assert (again.trained, again.reused) == (0, 2)
    for a, b in zip(first.states, again.states):
        assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(first.pool_in, pool_halves(spec, 64))
    assert (first.pool_in.sum(axis=1) == 32).all() and not np.array_equal(first.pool_in[0], first.pool_in[1])
    changed = train_reference_models(ReferenceSpec(**{**spec.__dict__, "lr": 0.1}), x, y, tmp_path)
    assert (changed.trained, changed.reused) == (2, 0) and changed.folder != first.folder
    assert not torch.equal(changed.states[0]["fc.weight"], first.states[0]["fc.weight"])
    with pytest.raises(ValueError, match="count"):
        ReferenceSpec("convnet", 10, 1, count=0, rounds=1, local_epochs=1, batch_size=16, lr=0.05, pool_id="x")


def test_the_reference_mia_table_averages_seeds_per_attack(tmp_path):
    from experiments.reference_mia import collect, render, summarise
    from fedtrust.records import MIARow, append_rows

    folders = []
    for seed, (loss_auc, lira_auc) in zip((1, 2), ((0.60, 0.70), (0.64, 0.80))):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        common = {"accuracy": 0.6, "tpr_at_1pct_fpr": 0.02, "tpr_at_0_1pct_fpr": 0.0, "members": 150,
                  "nonmembers": 150, "compressor": "none", "level": 0, "round": 30, "client": None, "seed": seed,
                  "auc_low": 0.5, "auc_high": 0.9, "tpr_at_1pct_fpr_low": 0.0, "tpr_at_1pct_fpr_high": 0.1,
                  "resamples": 1000}
        append_rows(folder / "mia.csv", [
            MIARow(attack="loss", scope="global", auc=loss_auc, **common),
            MIARow(attack="loss", scope="per_class", auc=0.5, **common),
            MIARow(attack="lira_online", scope="reference", auc=lira_auc, reference_models=8, threshold="shadow",
                   **common),
            MIARow(attack="update_cosine", scope="update", auc=0.9, **{**common, "client": 0}),
        ])
        (folder / "rounds.csv").write_text("round,test_accuracy,train_loss\n30,0.7,0.01\n")
        folders.append(folder)
    rows = collect(folders)
    assert set(rows["attack"]) == {"loss", "lira_online"}  # per-class and update rows are not in the table
    table = summarise(rows).set_index("attack")
    assert table.loc["loss", "auc"] == pytest.approx(0.62) and table.loc["lira_online", "auc_max"] == 0.80
    assert table.loc["lira_online", "seeds"] == 2 and table.loc["lira_online", "threshold"] == "shadow"
    text = render(summarise(rows), rows, "python -m experiments.reference_mia")
    assert "0.750 (0.700-0.800)" in text and "1 false positive(s) at 1% FPR" in text


def test_rmia_breaks_the_ties_of_its_fraction_by_the_likelihood_ratio():
    """The fraction of population samples an x dominates takes k + 1 values: every x above all
    of z would tie at 1. The likelihood ratio orders them (within 1e-9 of the fraction)."""
    target = np.array([0.9, 0.95, 0.99, 0.2])
    refs = np.full((2, 4), 0.5)
    pop_t, pop_r = np.array([0.3, 0.4]), np.full((2, 2), 0.5)
    scores = rmia_scores(target, refs, np.zeros((2, 4), bool), pop_t, pop_r)
    assert np.all(np.abs(scores - np.array([1, 1, 1, 0])) < 1e-8)
    assert scores[0] < scores[1] < scores[2]


def test_offline_rmia_tunes_a_on_the_reference_models_alone():
    """``a`` is the grid value whose offline RMIA scores best tell reference model 0's training
    half (model 0 as target, the others as references): never worse than no correction
    there, and independent of the real target's membership (nothing of it is passed)."""
    from fedtrust.attacks.mia.reference_run import OFFLINE_A_GRID, tune_offline_a

    sig = lambda v: 1 / (1 + np.exp(-v))
    rng = np.random.default_rng(5)
    _, refs, ref_in, _ = synthetic(n=1500, m=4, shift=1.5, seed=6)
    d = rng.normal(size=800)
    pop = d[None] + 0.5 * rng.normal(size=(4, 800))
    signals, population = (refs, sig(refs)), (pop, sig(pop))
    a = tune_offline_a(signals, population, ref_in)
    assert a in OFFLINE_A_GRID

    def shadow_auc(value):
        return roc_auc(rmia_scores(sig(refs[0]), sig(refs[1:]), ref_in[1:], sig(pop[0]), sig(pop[1:]),
                                   offline_a=value), ref_in[0])

    aucs = {v: shadow_auc(v) for v in OFFLINE_A_GRID}
    assert aucs[a] == max(aucs.values()) and aucs[a] > aucs[1.0] + 0.02  # here a = 0.5 helps
    assert a == max(v for v, auc in aucs.items() if auc == aucs[a])  # ties: the smaller correction
    with pytest.raises(ValueError, match="at least 2"):
        tune_offline_a((refs[:1], sig(refs[:1])), (pop[:1], sig(pop[:1])), ref_in[:1])
