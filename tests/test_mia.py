"""Membership inference (fedtrust.attacks.mia): metrics, scores, thresholds, attacks.

Real data only: an overfit ConvNet on tiles of scikit-image's bundled photos
(label = which photo), an untrained ConvNet and FedSGD updates on the embedded
Fashion-MNIST sample (``fedtrust.data.load_dataset("sample", ...)``).
"""

from __future__ import annotations

import csv
import inspect

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedtrust.attacks.mia import (
    ATTACKER_FPR,
    ATTACKS,
    UPDATE_ATTACKS,
    CalibrationSet,
    MembershipSplit,
    allowed_false_positives,
    attack_scores,
    balanced_accuracy,
    best_threshold,
    compute_outputs,
    draw_membership_split,
    evaluate_scores,
    fit_thresholds,
    heldout_indices,
    observed_pieces,
    per_sample_gradients,
    plot_results_roc,
    roc_auc,
    roc_curve,
    run_blackbox_mia,
    run_update_mia,
    tpr_at_fpr,
)
from fedtrust.compression import get_compressor, layout_of
from fedtrust.data import load_dataset
from fedtrust.models import ConvNet
from fedtrust.records import MIARow, append_rows, read_rows
from fedtrust.training import batch_gradient

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "page", "text")
#: The columns of mia.csv, in order (the tables read them by name).
MIA_COLUMNS = ["attack", "scope", "accuracy", "auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "members",
               "nonmembers", "reference_models", "threshold", "auc_low", "auc_high", "tpr_at_1pct_fpr_low",
               "tpr_at_1pct_fpr_high", "tpr_at_0_1pct_fpr_low", "tpr_at_0_1pct_fpr_high", "resamples",
               "accuracy_low", "accuracy_high", "compressor", "level", "round", "client", "seed"]


# ----------------------------------------------------------------------------- data
def photo_tiles(size: int = 16, min_std: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping grey tiles of scikit-image's photos with some texture; label = photo."""
    import skimage.data
    from skimage.color import rgb2gray

    xs, ys = [], []
    for label, name in enumerate(PHOTOS):
        image = getattr(skimage.data, name)()
        image = rgb2gray(image[..., :3]) if image.ndim == 3 else image / 255.0
        h, w = (image.shape[0] // size) * size, (image.shape[1] // size) * size
        tiles = image[:h, :w].reshape(h // size, size, w // size, size).transpose(0, 2, 1, 3)
        tiles = tiles.reshape(-1, size, size)
        tiles = tiles[tiles.std(axis=(1, 2)) > min_std]
        xs.append(tiles)
        ys.append(np.full(len(tiles), label))
    x = torch.tensor(np.concatenate(xs), dtype=torch.float32)[:, None]
    return (x - x.mean()) / x.std(), torch.tensor(np.concatenate(ys))


@pytest.fixture(scope="module")
def overfit_setup() -> dict[str, object]:
    """A ConvNet trained to 100% accuracy on 25 tiles per photo (200 members)."""
    x, y = photo_tiles()
    rng = np.random.default_rng(0)
    members = np.concatenate([rng.choice(np.flatnonzero(y.numpy() == c), 25, replace=False)
                              for c in range(len(PHOTOS))])
    nonmembers = heldout_indices(len(x), members)
    torch.manual_seed(0)
    model = ConvNet(num_classes=len(PHOTOS), in_channels=1, width=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mx, my = x[members], y[members]
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        model.train()
        order = torch.randperm(len(mx), generator=gen)
        for i in range(0, len(mx), 50):
            idx = order[i:i + 50]
            opt.zero_grad()
            F.cross_entropy(model(mx[idx]), my[idx]).backward()
            opt.step()
    model.eval()
    return {"model": model, "mx": mx, "my": my, "nx": x[nonmembers], "ny": y[nonmembers]}


@pytest.fixture(scope="module")
def fashion() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train_x, train_y = load_dataset("sample", "train").to_tensors()
    test_x, test_y = load_dataset("sample", "test").to_tensors()
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------- metrics
def test_roc_curve_hand_computed() -> None:
    fpr, tpr, thr = roc_curve(np.array([3.0, 2.0, 2.0, 1.0]), np.array([1, 0, 1, 0]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 3, 2, 1])


def test_auc_with_ties_hand_computed() -> None:
    # pairs (member, non-member): (.9,.5)=1 (.9,.1)=1 (.5,.5)=0.5 (.5,.1)=1 -> 3.5 / 4
    scores, member = np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, True, False, False])
    assert roc_auc(scores, member) == pytest.approx(0.875)
    assert roc_auc(np.ones(6), np.array([1, 0, 1, 0, 1, 0])) == pytest.approx(0.5)
    assert roc_auc(np.arange(4.0), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert roc_auc(np.arange(4.0), np.array([1, 1, 0, 0])) == pytest.approx(0.0)


def test_auc_matches_pairwise_count_and_trapezoid() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=300), 1)  # many ties
    member = rng.random(300) < 0.4
    s1, s0 = scores[member][:, None], scores[~member][None, :]
    brute = float(((s1 > s0) + 0.5 * (s1 == s0)).mean())
    fpr, tpr, _ = roc_curve(scores, member)
    trapezoid = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert roc_auc(scores, member) == pytest.approx(brute, abs=1e-12)
    assert trapezoid == pytest.approx(brute, abs=1e-12)


def test_tpr_at_low_fpr_counts_false_positives() -> None:
    nonmember = np.arange(1000) / 1000.0              # top two: 0.999 and 0.998
    member = np.r_[np.full(5, 2.0), np.full(3, 0.9985), np.full(2, -1.0)]
    scores = np.r_[member, nonmember]
    is_member = np.r_[np.ones(10, bool), np.zeros(1000, bool)]
    assert allowed_false_positives(1000, 0.001) == 1
    assert allowed_false_positives(999, 0.001) == 0
    assert allowed_false_positives(100, 0.01) == 1
    # 0 FPs allowed: only the 5 members above every non-member
    assert tpr_at_fpr(scores, is_member, 0.0) == pytest.approx(0.5)
    assert tpr_at_fpr(scores, is_member, 0.0009) == pytest.approx(0.5)
    # 1 FP allowed (0.999): the 3 members at 0.9985 join
    assert tpr_at_fpr(scores, is_member, 0.001) == pytest.approx(0.8)
    assert tpr_at_fpr(scores, is_member, 0.01) == pytest.approx(0.8)
    assert tpr_at_fpr(scores, is_member, 1.0) == pytest.approx(1.0)


def test_balanced_accuracy_hand_computed() -> None:
    member = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    predicted = np.array([1, 1, 1, 0, 1, 0], dtype=bool)  # TPR 3/4, TNR 1/2
    assert balanced_accuracy(predicted, member) == pytest.approx(0.625)


# ----------------------------------------------------------------------------- scores
def test_scores_hand_computed_and_stable() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1000.0, -1000.0, 0.0]])
    labels = np.array([0, 1, 1])
    s = attack_scores(logits, labels)
    p = torch.softmax(logits.double(), 1).numpy()
    np.testing.assert_allclose(s["confidence"][:2], [p[0, 0], 1 / 3], rtol=1e-12)
    np.testing.assert_allclose(s["loss"][:2], np.log([p[0, 0], 1 / 3]), rtol=1e-12)
    np.testing.assert_allclose(s["entropy"][1], -np.log(3), rtol=1e-12)
    # Mentr (Song & Mittal 2021): -(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i)
    q = p[0]
    mentr = -(1 - q[0]) * np.log(q[0]) - q[1] * np.log(1 - q[1]) - q[2] * np.log(1 - q[2])
    assert s["modified_entropy"][0] == pytest.approx(-mentr, rel=1e-12)
    for name in ATTACKS:
        assert np.isfinite(s[name]).all(), name
    # a confident wrong prediction (row 2, label 1) scores lowest on the label-aware attacks
    for name in ("confidence", "loss", "modified_entropy"):
        assert s[name][2] < min(s[name][0], s[name][1]), name


def test_compute_outputs_batched_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = ConvNet(num_classes=4, in_channels=1, width=4)
    x = torch.randn(10, 1, 16, 16)
    model.train()
    out = compute_outputs(model, x, torch.zeros(10, dtype=torch.long), batch_size=3, device="cpu")
    assert model.training
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), model.eval()(x).numpy(), rtol=1e-5, atol=1e-6)
    assert not out.requires_grad


# ----------------------------------------------------------------------------- sampling
def test_split_disjoint_balanced_and_seeded() -> None:
    split = draw_membership_split(500, 800, seed=3)
    assert len(split.members) == len(split.nonmembers) == 500
    assert np.intersect1d(split.calibration, split.evaluation).size == 0
    assert np.array_equal(np.union1d(split.calibration, split.evaluation), np.arange(1000))
    member = split.is_member
    assert member[split.calibration].sum() == member[split.evaluation].sum() == 250
    again = draw_membership_split(500, 800, seed=3)
    other = draw_membership_split(500, 800, seed=4)
    assert np.array_equal(split.calibration, again.calibration)
    assert np.array_equal(split.nonmembers, again.nonmembers)
    assert not np.array_equal(split.nonmembers, other.nonmembers)
    with pytest.raises(ValueError, match="overlap"):
        MembershipSplit(split.members, split.nonmembers, split.calibration,
                        np.r_[split.evaluation, split.calibration[:1]])
    unbalanced = draw_membership_split(8, 200, seed=0, balance=False)
    assert (len(unbalanced.members), len(unbalanced.nonmembers)) == (8, 200)
    assert np.array_equal(heldout_indices(6, np.array([4, 1])), [0, 2, 3, 5])


# ----------------------------------------------------------------------------- thresholds
def test_best_threshold_and_per_class_fallback() -> None:
    assert best_threshold(np.array([3.0, 4.0, 1.0, 2.0]), np.array([1, 1, 0, 0], bool)) == 2.5
    cal = CalibrationSet(scores=np.array([3.0, 4.0, 1.0, 2.0, 10.0, 11.0, 5.0, 0.0]),
                         labels=np.array([0, 0, 0, 0, 1, 1, 1, 2]),
                         is_member=np.array([1, 1, 0, 0, 1, 1, 0, 1], bool))
    rule = fit_thresholds(cal, scope="per_class")
    assert rule.class_thresholds == {0: 2.5, 1: 7.5}   # class 2 has no non-member: global
    assert rule.thresholds_for(np.array([2]))[0] == rule.global_threshold
    assert list(inspect.signature(fit_thresholds).parameters) == ["calibration", "scope",
                                                                  "min_per_class"]


def test_threshold_selection_never_sees_evaluated_membership() -> None:
    rng = np.random.default_rng(0)
    n = 400
    split = draw_membership_split(n, n, seed=1)
    member = split.is_member
    labels = rng.integers(0, 5, size=2 * n)
    scores = rng.normal(size=2 * n) + 1.0 * member          # informative scores
    flipped = member.copy()
    flipped[split.evaluation] = ~flipped[split.evaluation]   # evaluated membership reversed
    for scope in ("global", "per_class"):
        a = evaluate_scores("x", scope, scores, labels, member, split)
        b = evaluate_scores("x", scope, scores, labels, flipped, split)
        assert a.rule == b.rule
        assert a.accuracy > 0.6
        assert b.accuracy == pytest.approx(1.0 - a.accuracy)  # same predictions, reversed truth
        assert b.auc == pytest.approx(1.0 - a.auc)
    # the check has teeth: changing calibration membership changes the thresholds
    cal_flipped = member.copy()
    cal_flipped[split.calibration] = ~cal_flipped[split.calibration]
    c = evaluate_scores("x", "per_class", scores, labels, cal_flipped, split)
    assert c.rule != evaluate_scores("x", "per_class", scores, labels, member, split).rule


def test_the_attackers_threshold_reads_non_members_only() -> None:
    """Scope ``nonmember`` sets the threshold on calibration non-members alone (at most
    ATTACKER_FPR of them flagged): changing every member's score or membership label in the
    calibration half leaves it unchanged, while the oracle's moves; it is labelled so."""
    rng = np.random.default_rng(3)
    n = 400
    split = draw_membership_split(n, n, seed=2)
    member = split.is_member
    labels = rng.integers(0, 5, size=2 * n)
    scores = rng.normal(size=2 * n) + 1.5 * member
    result = evaluate_scores("x", "nonmember", scores, labels, member, split)
    cal_non = scores[split.calibration][~member[split.calibration]]
    assert result.threshold == "non-members" and result.rule.scope == "nonmember"
    flagged = float(np.mean(cal_non >= result.rule.global_threshold))
    assert flagged <= ATTACKER_FPR and flagged > ATTACKER_FPR - 2.0 / len(cal_non)
    moved = scores.copy()
    cal_members = split.calibration[member[split.calibration]]
    moved[cal_members] = rng.normal(size=len(cal_members)) - 5.0   # members' scores anything at all
    assert evaluate_scores("x", "nonmember", moved, labels, member, split).rule == result.rule
    assert evaluate_scores("x", "global", moved, labels, member, split).rule != \
        evaluate_scores("x", "global", scores, labels, member, split).rule
    # on the evaluated half it gives about the FPR it was set for, and less accuracy than the oracle's
    ev = split.evaluation
    fpr = float(np.mean(scores[ev][~member[ev]] >= result.rule.global_threshold))
    assert abs(fpr - ATTACKER_FPR) < 0.04
    oracle = evaluate_scores("x", "global", scores, labels, member, split)
    assert oracle.threshold == "oracle" and 0.5 < result.accuracy < oracle.accuracy
    # the accuracy's interval is the stratified bootstrap's where one threshold decides: at 5% FPR
    # the TNR is near 0.95, so it is much narrower than the normal approximation taking TPR = TNR
    from fedtrust.stats import balanced_accuracy_interval

    for r in (result, oracle):
        assert r.accuracy_low <= r.accuracy <= r.accuracy_high
    low, high = balanced_accuracy_interval(result.accuracy, result.members, result.nonmembers)
    width = result.accuracy_high - result.accuracy_low
    tpr = float(np.mean(scores[ev][member[ev]] >= result.rule.global_threshold))
    tnr = 1.0 - fpr
    separate = 1.96 * np.sqrt(tpr * (1 - tpr) / result.members + tnr * (1 - tnr) / result.nonmembers)
    assert width < high - low and abs(width - separate) < 0.25 * separate
    per_class = evaluate_scores("x", "per_class", scores, labels, member, split)
    assert per_class.accuracy_low is None and per_class.auc_low is not None


# ----------------------------------------------------------------------------- black-box attacks
def test_blackbox_on_overfit_model(overfit_setup: dict, tmp_path) -> None:
    s = overfit_setup
    model = s["model"]
    with torch.no_grad():
        train_acc = float((model(s["mx"]).argmax(1) == s["my"]).float().mean())
    assert train_acc == 1.0
    results = run_blackbox_mia(model, s["mx"], s["my"], s["nx"], s["ny"], num_classes=len(PHOTOS),
                               seed=0, progress=False)
    assert [(r.attack, r.scope) for r in results] == [(a, sc) for a in ATTACKS
                                                      for sc in ("global", "per_class", "nonmember")]
    by = {(r.attack, r.scope): r for r in results}
    loss = by[("loss", "global")]
    print("\noverfit:", {k: (round(r.accuracy, 3), round(r.auc, 3), round(r.tpr_at_1pct_fpr, 3))
                         for k, r in by.items()})
    assert (loss.members, loss.nonmembers) == (100, 100)
    assert loss.fpr_floor_1pct_n == 1 and loss.fpr_floor_0_1pct_n == 0
    assert loss.auc >= 0.8
    assert loss.tpr_at_1pct_fpr >= 0.04          # 4x the FPR (measured 0.12; 0.03-0.13 over seeds)
    assert loss.accuracy >= 0.75
    assert by[("modified_entropy", "global")].auc >= 0.8
    assert by[("loss", "per_class")].auc == loss.auc  # thresholds do not change the ROC
    # every attack reports its intervals, and its threshold is labelled as the oracle it is
    assert loss.auc_low <= loss.auc <= loss.auc_high and loss.auc_high - loss.auc_low < 0.2
    assert loss.tpr_at_1pct_fpr_low <= loss.tpr_at_1pct_fpr <= loss.tpr_at_1pct_fpr_high
    assert loss.resamples == 1000 and loss.threshold == "oracle" and loss.reference_models == 0
    rows = [MIARow.of(r, compressor="topk", level=2, round=3, client=None, seed=0) for r in results]
    append_rows(tmp_path / "mia.csv", rows[:4])
    append_rows(tmp_path / "mia.csv", rows[4:])
    with (tmp_path / "mia.csv").open() as fh:
        text = list(csv.DictReader(fh))
    assert len(text) == 12 and list(text[0]) == MIA_COLUMNS and text[3]["client"] == ""
    assert read_rows(tmp_path / "mia.csv", MIARow) == rows
    assert rows[3].auc == loss.auc and rows[3].client is None
    png = plot_results_roc([r for r in results if r.scope == "global"], tmp_path / "roc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_blackbox_on_untrained_model_is_chance(fashion: tuple) -> None:
    x, y, _, _ = fashion
    order = np.random.default_rng(0).permutation(len(x))
    mem, non = order[:1000], order[1000:2000]               # i.i.d. halves: membership is arbitrary
    torch.manual_seed(0)
    model = ConvNet(num_classes=10, in_channels=1, width=16)
    results = run_blackbox_mia(model, x[mem], y[mem], x[non], y[non], num_classes=10, seed=0,
                               progress=False)
    print("\nuntrained:", [(r.attack, r.scope, round(r.accuracy, 3), round(r.auc, 3)) for r in results])
    for r in results:
        assert (r.members, r.nonmembers) == (500, 500)
        assert abs(r.auc - 0.5) <= 0.07, (r.attack, r.scope, r.auc)
        assert abs(r.accuracy - 0.5) <= 0.07, (r.attack, r.scope, r.accuracy)


# ----------------------------------------------------------------------------- update attacks
@pytest.fixture(scope="module")
def fedsgd_update(fashion: tuple) -> dict[str, object]:
    """One FedSGD gradient of an 8-image batch at a fresh ConvNet, and 200 held-out images."""
    x, y, tx, ty = fashion
    torch.manual_seed(0)
    model = ConvNet(num_classes=10, in_channels=1, width=16)
    bx, by = x[:8], y[:8]
    grads, _ = batch_gradient(model, bx, by)
    model.eval()
    return {"model": model, "grads": grads, "bx": bx, "by": by, "nx": tx[:200], "ny": ty[:200]}


def _attack(setup: dict, name: str, level: int = 1, nx=None, ny=None, **options) -> dict:
    grads = setup["grads"]
    comp = get_compressor(name, level=level, layout=layout_of(grads), **options)
    payload = comp.encode(grads)
    results = run_update_mia(setup["model"], payload, comp.decode(payload), comp.describe(),
                             comp.public_state(), setup["bx"], setup["by"],
                             setup["nx"] if nx is None else nx, setup["ny"] if ny is None else ny,
                             step=0.1, seed=0, progress=False)
    return {r.attack: r for r in results}


def test_update_attack_uncompressed(fedsgd_update: dict) -> None:
    res = _attack(fedsgd_update, "none")
    print("\nupdate none:", {k: (round(r.auc, 3), round(r.accuracy, 3)) for k, r in res.items()})
    assert list(res) == list(UPDATE_ATTACKS)
    assert all(r.scope == "update" and (r.members, r.nonmembers) == (4, 100) for r in res.values())
    assert res["update_regression"].auc >= 0.9
    assert res["update_regression"].accuracy >= 0.9
    for name in ("update_cosine", "update_loss_drop"):
        assert res[name].auc >= 0.6, name
    # nothing is dropped without compression: the aware cosine is the cosine
    assert res["update_cosine_aware"].auc == pytest.approx(res["update_cosine"].auc)


def test_update_regression_sets_its_threshold_without_knowing_membership(fedsgd_update: dict) -> None:
    """With the batch size the server gave the client, alpha >= 1/(2 b) decides: no calibration
    candidate's membership is used, and the row says so."""
    s = fedsgd_update
    comp = get_compressor("none", layout=layout_of(s["grads"]))
    payload = comp.encode(s["grads"])
    args = (s["model"], payload, comp.decode(payload), comp.describe(), {}, s["bx"], s["by"], s["nx"], s["ny"])
    oracle = {r.attack: r for r in run_update_mia(*args, step=0.1, seed=0, progress=False)}
    free = {r.attack: r for r in run_update_mia(*args, step=0.1, seed=0, progress=False, batch_size=8)}
    assert oracle["update_regression"].threshold == "oracle"
    reg = free["update_regression"]
    assert reg.threshold == "label-free" and reg.auc == oracle["update_regression"].auc
    assert reg.accuracy >= 0.9  # members weigh 1/8, non-members about 0
    assert free["update_cosine"].threshold == "oracle"
    wrong = {r.attack: r for r in run_update_mia(*args, step=0.1, seed=0, progress=False, batch_size=10**6)}
    assert wrong["update_regression"].accuracy < reg.accuracy  # the rule follows the configured batch size
    with pytest.raises(ValueError, match="batch_size"):
        run_update_mia(*args, step=0.1, seed=0, progress=False, batch_size=0)


def test_update_regression_beats_class_matched_nonmembers(fedsgd_update: dict, fashion: tuple) -> None:
    _, _, tx, ty = fashion
    same = np.flatnonzero(np.isin(ty.numpy(), fedsgd_update["by"].numpy()))[:200]
    res = _attack(fedsgd_update, "none", nx=tx[same], ny=ty[same])
    print("\nupdate class-matched:", {k: round(r.auc, 3) for k, r in res.items()})
    assert res["update_regression"].auc >= 0.9


@pytest.mark.parametrize("name,options", [("topk", {"scope": "global"}), ("topk", {"scope": "layer"}),
                                          ("powersgd", {"mode": "allreduce"}),
                                          ("powersgd", {"mode": "local"})])
def test_update_attack_compressed(fedsgd_update: dict, name: str, options: dict) -> None:
    res = _attack(fedsgd_update, name, level=1, **options)
    print(f"\nupdate {name} {options}:", {k: round(r.auc, 3) for k, r in res.items()})
    assert list(res) == list(UPDATE_ATTACKS)
    for r in res.values():
        assert 0.0 <= r.auc <= 1.0 and 0.0 <= r.accuracy <= 1.0
        assert 0.0 <= r.tpr_at_1pct_fpr <= 1.0
    assert res["update_regression"].auc >= 0.9


@pytest.mark.parametrize("name,options", [("topk", {"scope": "global"}), ("topk", {"scope": "layer"}),
                                          ("powersgd", {"mode": "allreduce"}),
                                          ("powersgd", {"mode": "local"})])
def test_observed_pieces_reproduce_the_payload(fedsgd_update: dict, name: str, options: dict) -> None:
    """Each piece's map applied to the batch's mean per-sample gradient gives the sent array."""
    s = fedsgd_update
    grads = s["grads"]
    comp = get_compressor(name, level=2, layout=layout_of(grads), **options)
    payload = comp.encode(grads)
    pieces = observed_pieces(payload, comp.describe(), comp.public_state(), layout_of(grads))
    sent = {k for k in payload.arrays if not k.startswith("indices")}
    # PowerSGD local: p/ = orth(M Q) is not linear in M, but M Q = p (q^T Q) is, and the
    # server knows Q: the piece matches that (as the adaptive gradient-inversion attacker does).
    assert {p.key for p in pieces} == sent
    model = s["model"]
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = per_sample_gradients(model, params, {}, s["bx"], s["by"])
    for piece in pieces:
        got = piece.transform(g).mean(0)
        scale = float(piece.observed.abs().max())
        np.testing.assert_allclose(got.numpy(), piece.observed.numpy(), atol=1e-4 * scale,
                                   err_msg=piece.key)


def test_update_regression_with_count_sketch(fedsgd_update: dict) -> None:
    s = fedsgd_update
    grads = s["grads"]
    comp = get_compressor("none", layout=layout_of(grads))
    payload = comp.encode(grads)
    res = run_update_mia(s["model"], payload.arrays, comp.decode(payload), comp.describe(), {},
                         s["bx"], s["by"], s["nx"], s["ny"], step=0.1, seed=0, progress=False,
                         regression_dim=1024, chunk_size=50)
    assert res[-1].attack == "update_regression" and res[-1].auc >= 0.9
