"""Interval estimates (fedtrust.stats): what the tables' brackets mean."""

from __future__ import annotations

import numpy as np
import pytest

from fedtrust.stats import auc_interval, balanced_accuracy_interval, bootstrap_mean


def test_bootstrap_mean_interval():
    assert bootstrap_mean([0.5] * 6).text() == "0.500 [0.500, 0.500]"
    wide = bootstrap_mean(np.linspace(0, 1, 24), groups=np.repeat([0, 1, 2], 8))
    assert wide.low < 0.5 < wide.high and wide.n == 24 and wide.mean == pytest.approx(0.5)
    narrow = bootstrap_mean(np.linspace(0.4, 0.6, 24))
    assert wide.high - wide.low > narrow.high - narrow.low
    assert bootstrap_mean(np.linspace(0, 1, 24), seed=3) == bootstrap_mean(np.linspace(0, 1, 24), seed=3)
    assert np.isnan(bootstrap_mean([0.3]).low) and bootstrap_mean([0.3]).text() == "0.300"
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean([0.1, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean([0.1, 0.2], level=1.5)
    with pytest.raises(ValueError, match="group labels"):
        bootstrap_mean([0.1, 0.2], groups=[0])


def test_bootstrap_mean_covers_the_true_mean_about_as_often_as_it_says():
    """Coverage of the percentile interval for n = 10 draws of a uniform variable: near 95%
    (a little below: the percentile interval is somewhat too narrow at this n)."""
    rng = np.random.default_rng(0)
    covered = []
    for k in range(300):
        sample = rng.random(10)
        est = bootstrap_mean(sample, resamples=1000, seed=k)
        covered.append(est.low <= 0.5 <= est.high)
    assert 0.85 <= np.mean(covered) <= 0.97, np.mean(covered)


def test_grouped_bootstrap_is_wider_when_groups_differ():
    """Values that share a group (a seed, a model) are not independent: when the groups'
    means differ, resampling whole groups gives a wider interval than treating values alone."""
    values = np.concatenate([np.full(8, 0.2), np.full(8, 0.5), np.full(8, 0.8)]) + np.linspace(0, 0.01, 24)
    groups = np.repeat([0, 1, 2], 8)
    grouped, alone = bootstrap_mean(values, groups=groups), bootstrap_mean(values)
    assert grouped.high - grouped.low > 1.5 * (alone.high - alone.low)


def test_candidate_intervals():
    lo, hi = balanced_accuracy_interval(0.6, 250, 250)
    assert lo < 0.6 < hi and hi - lo == pytest.approx(2 * 1.959964 * np.sqrt(0.24 * (2 / 250)) / 2, rel=1e-4)
    lo_small, hi_small = balanced_accuracy_interval(0.6, 25, 25)
    assert hi_small - lo_small > hi - lo
    lo, hi = auc_interval(0.75, 100, 100)
    assert 0.6 < lo < 0.75 < hi < 0.9
    assert auc_interval(1.0, 50, 50) == (1.0, 1.0)
    assert all(np.isnan(v) for v in balanced_accuracy_interval(0.5, 0, 10))
