"""Tests of gradient inversion (fedtrust.attacks) and the image metrics, on real images.

The images are scikit-image's bundled photographs resized to 32x32 and the
embedded Fashion-MNIST sample (28x28). The models are untrained (seeded), the
attack budgets are cut to fit a CPU test run (a few hundred iterations with a
larger step and total-variation weight than the paper's 24,000-iteration
defaults), and every reconstruction is scored with SSIM against the truth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize
from torch.nn import functional as F

from fedtrust.attacks.gradinv import (
    GradInvConfig,
    Problem,
    attack,
    infer_labels,
    reconstruct_batch,
)
from fedtrust.attacks.gradinv.reconstruct import gradient_cost
from fedtrust.attacks.gradinv.targets import apply_view, build_views, decode_views
from fedtrust.compression import Compressor, get_compressor
from fedtrust.compression.codecs.powersgd import aggregate_p, decode_allreduce, initial_q
from fedtrust.data.specs import get_spec
from fedtrust.interception import InterceptedUpdate
from fedtrust.metrics import match_images, mse, psnr, score_batch, ssim
from fedtrust.models import ConvNet, resnet18
from fedtrust.training import model_layout

CIFAR = get_spec("cifar10")  #: the photos are scored and normalised as CIFAR-10 images
CIFAR_MEAN, CIFAR_STD = CIFAR.mean, CIFAR.std
CPU = torch.device("cpu")
PHOTOS = ("astronaut", "chelsea", "coffee", "camera")
#: CPU budget for the small ConvNet (the paper runs 24,000 iterations at lr 0.1, TV 1e-4).
CONVNET_BUDGET = GradInvConfig(iterations=150, lr=0.3, tv_weight=0.01, seed=0)
#: CPU budget for ResNet-18 (about a minute on two cores).
RESNET_BUDGET = GradInvConfig(iterations=100, lr=0.5, tv_weight=0.01, seed=0)
#: The compressors the adaptive attacker is compared on (level 1, round 1).
COMPRESSORS = {
    "none": ("none", {}),
    "powersgd-allreduce": ("powersgd", {"mode": "allreduce"}),
    "powersgd-local": ("powersgd", {"mode": "local"}),
    "topk-global": ("topk", {"scope": "global"}),
}


# ----------------------------------------------------------------------------- helpers
def photo(name: str, size: int = 32) -> torch.Tensor:
    """A bundled scikit-image photo as a (3, size, size) float tensor in [0, 1]."""
    img = resize(getattr(skdata, name)(), (size, size), anti_aliasing=True)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return torch.tensor(img, dtype=torch.float32).permute(2, 0, 1).clamp(0, 1)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    c = x.shape[-3]
    return (x - torch.tensor(mean).view(c, 1, 1)) / torch.tensor(std).view(c, 1, 1)


def true_gradient(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD
                  ) -> dict[str, torch.Tensor]:
    """The client's update: gradient of the mean cross-entropy (model in eval mode, as the attack's)."""
    model.eval()
    loss = F.cross_entropy(model(normalise(images, mean, std)), labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return {name: g.detach().clone() for (name, _), g in zip(model.named_parameters(), grads)}


def intercept(model: torch.nn.Module, update: dict[str, torch.Tensor], compressor: Compressor | None = None,
              *, num_images: int = 1, server_round: int = 1) -> InterceptedUpdate:
    """What the server holds of ``update`` sent through ``compressor`` (default: dense, the ``none`` codec)."""
    comp = compressor or get_compressor("none", layout=model_layout(model))
    payload = comp.encode(update)
    return InterceptedUpdate(round=server_round, node_id=7, partition_id=0, payload=payload.arrays,
                             decoded=comp.decode(payload), global_state=model.state_dict(),
                             train_config={"local-mode": "fedsgd", "batch-size": num_images, "lr": 0.1,
                                           "num-examples": num_images, "model": "test", "dataset": "photos"},
                             compressor=comp.describe(), public_state=comp.public_state())


def invert(model, item, truth, labels, *, budget=CONVNET_BUDGET, attacker="naive", dataset=CIFAR):
    """The attack with the true labels given, scored against ``truth``."""
    return attack(item, model, budget, attacker, dataset=dataset, labels=labels, ground_truth=truth,
                  device=CPU, progress=False)


@pytest.fixture(scope="module")
def convnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return ConvNet(num_classes=10, in_channels=3).eval()


@pytest.fixture(scope="module")
def astronaut(convnet):
    """One photo, its label and the ConvNet's uncompressed gradient."""
    x = photo("astronaut")[None]
    y = torch.tensor([3])
    return x, y, true_gradient(convnet, x, y)


@pytest.fixture(scope="module")
def dense_convnet_result(convnet, astronaut):
    x, y, grad = astronaut
    return invert(convnet, intercept(convnet, grad), x, y)


# ----------------------------------------------------------------------------- metrics
def test_metrics_on_photos():
    a, b = photo("astronaut"), photo("chelsea")
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) == math.inf and mse(a, a) == 0.0
    assert ssim(a, b) < 0.5
    noisy = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 0.5 < ssim(noisy, a) < 1.0
    assert 20.0 < psnr(noisy, a) < 40.0
    gray = photo("camera")[:1]  # (1, H, W): scored as a 2-D image
    assert ssim(gray, gray[0]) == pytest.approx(1.0)
    truth = torch.stack([photo(n) for n in PHOTOS])
    shuffled = truth[[2, 0, 3, 1]]
    assert match_images(shuffled, truth) == [2, 0, 3, 1]
    scores = score_batch(shuffled, truth)
    assert [s["matched"] for s in scores] == [2, 0, 3, 1]
    assert all(s["ssim"] == pytest.approx(1.0) for s in scores)
    with pytest.raises(ValueError, match="shape"):
        ssim(a, gray)


# ----------------------------------------------------------------------------- config
def test_config_from_dict_and_errors():
    cfg = GradInvConfig.from_dict({"iterations": 200, "tv-weight": 0.01, "cost": "l2", "batched": False})
    assert (cfg.iterations, cfg.tv_weight, cfg.cost, cfg.batched) == (200, 0.01, "l2", False)
    with pytest.raises(ValueError, match="iterations='200' must be an integer"):
        GradInvConfig.from_dict({"iterations": "200"})  # text is the run config's to parse
    default = GradInvConfig()
    assert (default.iterations, default.lr, default.tv_weight, default.optimizer) == (24_000, 0.1, 1e-4, "adam")
    assert default.signed and default.boxed and default.lr_decay and default.model_mode == "eval"
    with pytest.raises(ValueError, match="unknown gradient-inversion setting 'iteration'"):
        GradInvConfig.from_dict({"iteration": 10})
    with pytest.raises(ValueError, match=r"cost='mse' is not allowed; allowed: 'cosine'"):
        GradInvConfig.from_dict({"cost": "mse"})
    with pytest.raises(ValueError, match="label_strategy"):
        GradInvConfig.from_dict({"label_strategy": "guess"})
    with pytest.raises(ValueError, match="iterations"):
        GradInvConfig.from_dict({"iterations": 0})
    with pytest.raises(ValueError, match="batched"):
        GradInvConfig(batched="yes")


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("model_name", ["convnet", "resnet18"])
def test_label_inference_single_image(model_name):
    torch.manual_seed(1)
    model = ConvNet() if model_name == "convnet" else resnet18()
    for label, name in zip((0, 4, 7, 9), PHOTOS):
        x = photo(name)[None]
        grad = true_gradient(model, x, torch.tensor([label]))
        assert infer_labels(grad, 1).tolist() == [label]


def test_label_inference_batch(convnet):
    x = torch.stack([photo(n) for n in PHOTOS])
    y = torch.tensor([7, 3, 1, 3])
    grad = true_gradient(convnet, x, y)
    assert infer_labels(grad, 4).tolist() == [1, 3, 3, 7]


def test_label_inference_batch_prefers_the_most_negative_classes():
    """A decoded compressed update can make more classes negative than it has images."""
    sums = torch.tensor([-0.1, -3.0, 0.2, -2.0, -0.05])
    update = {"fc.weight": sums[:, None].repeat(1, 4) / 4, "fc.bias": torch.zeros(5)}
    assert infer_labels(update, 2).tolist() == [1, 3]


# ----------------------------------------------------------------------------- views
def _view_cost(views, grads, cost="cosine"):
    rec = [apply_view(v.kind, v.params, v.aux, grads) for v in views]
    return float(gradient_cost(rec, [v.observed for v in views], cost, [v.bound for v in views]))


@pytest.mark.parametrize("key", list(COMPRESSORS) + ["topk-layer", "powersgd-rank3-local"])
def test_adaptive_views_are_exact_at_the_true_gradient(convnet, astronaut, key):
    """The true gradient matches every adaptive view exactly; a wrong image does not."""
    name, opts = {"topk-layer": ("topk", {"scope": "layer"}),
                  "powersgd-rank3-local": ("powersgd", {"mode": "local"})}.get(key, COMPRESSORS.get(key))
    level = 3 if "rank3" in key else 1
    layout = model_layout(convnet)
    comp = get_compressor(name, level=level, layout=layout, **opts)
    _, y, grad = astronaut
    payload = comp.encode(grad)
    views = build_views("adaptive", layout, arrays=payload.arrays, spec=comp.describe(),
                        public_state=comp.public_state())
    for cost in ("cosine", "layerwise-cosine"):
        assert abs(_view_cost(views, grad, cost)) < 1e-5
    other = true_gradient(convnet, photo("coffee")[None], y)
    assert _view_cost(views, other) > 1e-3
    decoded = decode_views(payload.arrays, layout, comp.describe(), comp.public_state())
    for tensor_name, value in comp.decode(payload).items():
        torch.testing.assert_close(decoded[tensor_name], value)


def test_allreduce_views_with_several_clients_and_raw_public_q(convnet):
    """As the strategy sees it: the P-hat of three clients and the warm-start Q before orth."""
    layout = model_layout(convnet)
    comps = [get_compressor("powersgd", level=2, layout=layout, mode="allreduce", seed=5) for _ in range(3)]
    grads = [true_gradient(convnet, photo(n)[None], torch.tensor([i])) for i, n in enumerate(PHOTOS[:3])]
    payload_p = [c.encode_p(g) for c, g in zip(comps, grads)]
    p_hat = aggregate_p(payload_p, [1.0, 2.0, 3.0])
    payload_q = [c.encode_q(p_hat) for c in comps]
    raw_q = {f"Q/{k}": v.numpy() for k, v in initial_q(layout, 2, 5).items()}
    spec = {"compressor": "powersgd", "level": 2, "mode": "allreduce"}
    for i in range(3):
        arrays = {**payload_p[i].arrays, **payload_q[i].arrays}
        public = {**raw_q, **{f"P_hat/{k}": v for k, v in p_hat.items()}}
        views = build_views("adaptive", layout, arrays=arrays, spec=spec, public_state=public)
        assert {v.kind for v in views} == {"dense", "mq", "mtp"}
        assert abs(_view_cost(views, grads[i])) < 1e-5
        server = decode_allreduce(p_hat, payload_p[i], payload_q[i], layout)
        mine = decode_views(arrays, layout, spec, public)
        for name, value in server.items():
            torch.testing.assert_close(mine[name], value)


# ----------------------------------------------------------------------------- reconstruction quality
def test_convnet_uncompressed_gradient_is_reconstructed(dense_convnet_result):
    result = dense_convnet_result
    assert result.images.shape == (1, 3, 32, 32)
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0
    assert result.iterations == CONVNET_BUDGET.iterations and result.loss < 0.05
    assert result.scores[0]["ssim"] >= 0.6, result.scores


def test_resnet18_uncompressed_gradient_is_reconstructed():
    torch.manual_seed(0)
    model = resnet18().eval()
    x, y = photo("astronaut")[None], torch.tensor([3])
    result = invert(model, intercept(model, true_gradient(model, x, y)), x, y, budget=RESNET_BUDGET)
    assert result.scores[0]["ssim"] >= 0.3, result.scores


def test_topk_level1_naive_attacker_scores_far_lower(convnet, astronaut, dense_convnet_result):
    x, y, grad = astronaut
    comp = get_compressor("topk", level=1, layout=model_layout(convnet), scope="global")
    item = intercept(convnet, grad, comp)
    assert sum(a.size for a in item.payload.values()) < 0.2 * sum(t.numel() for t in grad.values())
    result = invert(convnet, item, x, y, attacker="naive")
    dense_ssim = dense_convnet_result.scores[0]["ssim"]
    assert result.scores[0]["ssim"] < 0.5 * dense_ssim, (result.scores, dense_ssim)


@pytest.mark.parametrize("key", list(COMPRESSORS))
def test_adaptive_attacker_scores_at_least_as_high_as_naive(convnet, astronaut, key):
    x, y, grad = astronaut
    name, opts = COMPRESSORS[key]
    scores = {}
    for attacker in ("naive", "adaptive"):
        comp = get_compressor(name, level=1, layout=model_layout(convnet), **opts)
        scores[attacker] = invert(convnet, intercept(convnet, grad, comp), x, y, attacker=attacker).scores[0]["ssim"]
    if name == "none":  # nothing is hidden: both attackers see the same dense tensors
        assert scores["adaptive"] == pytest.approx(scores["naive"], abs=1e-6)
    else:
        assert scores["adaptive"] >= scores["naive"] + 0.05, scores


def test_fashion_mnist_sample_is_reconstructed():
    from fedtrust.data import load_dataset

    train = load_dataset("sample", "train")
    mean, std = tuple(train.spec.mean), tuple(train.spec.std)
    torch.manual_seed(0)
    model = ConvNet(num_classes=train.spec.num_classes, in_channels=1).eval()
    x = torch.from_numpy(train.images[:1].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    y = torch.tensor(np.array(train.labels[:1], dtype=np.int64))
    grad = true_gradient(model, x, y, mean, std)
    result = attack(intercept(model, grad), model, CONVNET_BUDGET.replace(label_strategy="infer"), "naive",
                    dataset=train.spec, ground_truth=x, device=CPU, progress=False)
    assert result.label_inferred and result.labels.tolist() == y.tolist()
    assert result.images.shape == (1, 1, 28, 28)
    assert result.scores[0]["ssim"] >= 0.6, result.scores


# ----------------------------------------------------------------------------- batching and plumbing
def dense_problem(model: torch.nn.Module, gradient: dict[str, torch.Tensor], labels: torch.Tensor) -> Problem:
    """The naive attacker's problem of a dense gradient (what the benchmarks invert)."""
    return Problem(views=tuple(build_views("naive", model_layout(model), decoded=gradient)), labels=labels)


def test_batched_runs_match_sequential_runs(convnet):
    """vmap over independent problems takes the same steps as running them one by one."""
    problems = []
    for i, name in enumerate(PHOTOS[:3]):
        x, y = photo(name)[None], torch.tensor([i])
        problems.append(dense_problem(convnet, true_gradient(convnet, x, y), y))
    results = {}
    for batched in (True, False, "auto"):
        results[batched] = reconstruct_batch(convnet, problems, config=GradInvConfig(iterations=8, restarts=2,
                                                                                   batched=batched),
                                             dataset=CIFAR, device=CPU, progress=False)
    assert all(r.batched for r in results[True]) and not any(r.batched for r in results[False])
    for a, b, c in zip(results[True], results[False], results["auto"]):
        assert a.images.shape == (1, 3, 32, 32) and 0.0 <= float(a.images.min()) <= float(a.images.max()) <= 1.0
        torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.images, c.images, atol=1e-4, rtol=0)
        assert a.restart == b.restart and a.loss == pytest.approx(b.loss, abs=1e-5)


def test_attack_runs_in_a_later_round_with_error_feedback(convnet, tmp_path):
    """Round 2: the residual of round 1 is inside what was sent; both attackers still run."""
    layout = model_layout(convnet)
    x1, x2 = photo("coffee")[None], photo("chelsea")[None]
    g1 = true_gradient(convnet, x1, torch.tensor([2]))
    g2 = true_gradient(convnet, x2, torch.tensor([5]))
    for name, opts in (("topk", {"scope": "global"}), ("powersgd", {"mode": "local"})):
        comp = get_compressor(name, level=1, layout=layout, error_feedback=True, **opts)
        comp.encode(g1)
        item = intercept(convnet, g2, comp, server_round=2)
        assert comp.state_dict(), "error feedback keeps a residual"
        loaded = InterceptedUpdate.load(item.save(tmp_path / f"round2_{name}.pt"))
        for attacker in ("naive", "adaptive"):
            result = attack(loaded, ConvNet(), GradInvConfig(iterations=5, label_strategy="infer"), attacker,
                            dataset=CIFAR, ground_truth=x2, progress=False, device=CPU)
            assert result.images.shape == (1, 3, 32, 32) and math.isfinite(result.loss)
            assert result.label_inferred and result.labels.tolist() == [5]
            assert result.attacker == attacker and len(result.scores) == 1


def test_attack_loads_the_intercepted_weights_into_a_copy(convnet, astronaut):
    """The attack runs on the global weights the update was computed on; the given model is untouched."""
    x, y, grad = astronaut
    other = ConvNet()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    config = GradInvConfig(iterations=20, lr=0.3, tv_weight=0.01)
    on_copy = invert(other, intercept(convnet, grad), x, y, budget=config)
    on_model = invert(convnet, intercept(convnet, grad), x, y, budget=config)
    torch.testing.assert_close(on_copy.images, on_model.images, atol=0, rtol=0)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)


def test_attack_rejects_bad_input(convnet, astronaut):
    _, y, grad = astronaut
    item = intercept(convnet, grad)
    one = GradInvConfig(iterations=1)
    with pytest.raises(ValueError, match="labels="):
        attack(item, convnet, one, "naive", dataset=CIFAR, progress=False)
    with pytest.raises(ValueError, match="labels= are for label_strategy='given'"):
        attack(item, convnet, one.replace(label_strategy="infer"), "naive", dataset=CIFAR, labels=y, progress=False)
    with pytest.raises(ValueError, match="2 labels given for a batch of 1 images"):
        attack(item, convnet, one, "naive", dataset=CIFAR, labels=torch.tensor([1, 2]), progress=False)
    with pytest.raises(ValueError, match="attacker='oracle'"):
        attack(item, convnet, one, "oracle", dataset=CIFAR, labels=y, progress=False)


def test_train_mode_batchnorm_matches_the_clients_train_mode_gradient():
    """model_mode="train": BatchNorm uses the dummy batch's statistics, as ``model.train()`` does."""
    import copy

    from fedtrust.attacks.gradinv.reconstruct import attack_model, make_autograd_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    x = torch.stack([photo("astronaut"), photo("coffee")])
    y = torch.tensor([1, 6])
    client = copy.deepcopy(model).train()  # the client's gradient (updates its own running stats)
    loss = F.cross_entropy(client(normalise(x, CIFAR_MEAN, CIFAR_STD)), y)
    grad = {n: g for (n, _), g in zip(client.named_parameters(), torch.autograd.grad(loss, list(client.parameters())))}
    problem = dense_problem(model, grad, y)
    args = (y[None], tuple(tuple(a[None] for a in v.aux) for v in problem.views),
            tuple(v.observed[None] for v in problem.views))
    transforms = [v.transform for v in problem.views]
    costs = {}
    for mode in ("train", "eval"):
        net, _, _ = attack_model(model, mode, CPU)
        step = make_autograd_step(net, transforms, "cosine", 0.0)
        costs[mode] = float(step(normalise(x, CIFAR_MEAN, CIFAR_STD)[None], *args)[1])
    assert abs(costs["train"]) < 1e-5 and costs["eval"] > 1e-3, costs
    runs = [reconstruct_batch(model, [problem, problem], config=GradInvConfig(iterations=3, model_mode="train",
                                                                              batched=batched),
                              dataset=CIFAR, device=CPU, progress=True)
            for batched in (True, False)]
    for a, b in zip(*runs):
        torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- the report's records
def test_report_writes_typed_rows_and_the_pngs_the_figures_read(convnet, tmp_path):
    """gradinv.csv has the GradInvRow columns (as before) and reads back as GradInvRow; PNG names come
    from gradinv_png."""
    from fedtrust.attacks.gradinv.report import GradInvReport
    from fedtrust.records import GradInvRow, csv_columns, gradinv_png, read_rows

    images = np.stack([(photo(n).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for n in PHOTOS])
    labels = np.array([2, 5, 1, 7])
    report = GradInvReport(folder=tmp_path, model_fn=ConvNet, spec=CIFAR, train_images=images, train_labels=labels,
                           config=GradInvConfig(iterations=3), device=CPU, progress=False)
    x = torch.from_numpy(images[[1]]).permute(0, 3, 1, 2).float() / 255
    item = intercept(convnet, true_gradient(convnet, x, torch.tensor([5])),
                     get_compressor("topk", level=2, layout=model_layout(convnet)))
    item.batch_indices = np.array([1])
    rows = report(item)
    header = (tmp_path / "gradinv.csv").read_text().splitlines()[0]
    assert header == ("round,client,image,label,label_inferred,attacker,compressor,level,ssim,psnr,mse,"
                      "iterations,seconds,seed,model_mode") == ",".join(csv_columns(GradInvRow))
    assert read_rows(tmp_path / "gradinv.csv", GradInvRow) == rows
    assert {r.model_mode for r in rows} == {"eval"}  # the attack config's mode
    # a file written before the model_mode column existed reads with its default (those runs were all "train")
    old = tmp_path / "old.csv"
    old.write_text("\n".join(",".join(line.split(",")[:-1]) for line in
                             (tmp_path / "gradinv.csv").read_text().splitlines()) + "\n")
    assert [r.model_mode for r in read_rows(old, GradInvRow)] == ["train", "train"]
    assert [(r.attacker, r.compressor, r.level, r.label, r.image) for r in rows] == [
        ("naive", "topk", 2, 5, 0), ("adaptive", "topk", 2, 5, 0)]
    for what in ("original", "naive", "adaptive"):
        assert gradinv_png(tmp_path, 1, 0, what, 0).is_file()
    assert report.write_grid().stat().st_size > 1000 and report.missing_clients() == set()


def test_replay_reads_the_run_config_and_attacks_saved_updates(tmp_path):
    """Offline replay: the run config's attack settings, overridden by the options, on saved updates."""
    from fedtrust.attacks.gradinv.replay import main as replay
    from fedtrust.config import parse_run_config
    from fedtrust.data import load_dataset
    from fedtrust.records import GradInvRow, RunFolder, read_rows

    cfg = parse_run_config({"dataset": "sample", "model": "convnet", "compressor": "topk", "level": 1,
                            "attack": "gradinv", "attack-iterations": 500, "seed": 3})
    folder = RunFolder.create(tmp_path, "run")
    folder.write_config(cfg.as_flat_dict())
    train = load_dataset("sample", "train")
    torch.manual_seed(0)
    model = ConvNet(num_classes=train.spec.num_classes, in_channels=1)
    x = torch.from_numpy(train.images[[4]].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    y = torch.as_tensor(train.labels[[4]], dtype=torch.long)
    codec_compressor = get_compressor("topk", level=1, layout=model_layout(model))
    item = intercept(model, true_gradient(model, x, y, train.spec.mean, train.spec.std), codec_compressor)
    item.batch_indices = np.array([4])
    item.save(folder.intercepted_file(1, 0))
    out = tmp_path / "replay"
    assert replay([str(folder.path), "--attacker", "naive", "--iterations", "2", "--out", str(out),
                   "--no-progress", "--device", "cpu"]) == 0
    rows = read_rows(out / "gradinv.csv", GradInvRow)
    assert [(r.attacker, r.compressor, r.level, r.iterations, r.seed, r.label, r.model_mode) for r in rows] == [
        ("naive", "topk", 1, 2, 3, int(y), "train")]
    assert (out / "gradinv_grid.png").is_file()


# ----------------------------------------------------------------------------- BatchNorm mode
def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(512, 10))


def test_an_eval_mode_gradient_is_inverted_better_than_a_train_mode_one():
    """client-model-mode decides the answer: on a small BatchNorm network, one image's gradient computed
    with running statistics (eval, the paper's setting) leaks more than one computed with the batch's own
    (train); the attacker takes the run's mode from the run config, as the app does."""
    from fedtrust.config import parse_run_config
    from fedtrust.training import batch_gradient

    ssim_by_mode: dict[str, list[float]] = {"train": [], "eval": []}
    for name in ("astronaut", "coffee", "chelsea"):
        x, y = photo(name)[None], torch.tensor([3])
        for mode, scores in ssim_by_mode.items():
            model = _bn_net()
            with torch.no_grad():  # running statistics from other photos, as a trained model has
                model.train()(normalise(torch.stack([photo(p) for p in PHOTOS]), CIFAR_MEAN, CIFAR_STD))
            update, _ = batch_gradient(model, normalise(x, CIFAR_MEAN, CIFAR_STD), y, mode)  # the client's
            settings = parse_run_config({"client-model-mode": mode}).gradinv_settings()
            assert settings["model_mode"] == mode
            result = invert(model.eval(), intercept(model, update), x, y,
                            budget=CONVNET_BUDGET.replace(model_mode=settings["model_mode"]))
            scores.append(float(result.scores[0]["ssim"]))
    train, evaluated = np.array(ssim_by_mode["train"]), np.array(ssim_by_mode["eval"])
    assert (evaluated > train).all(), ssim_by_mode  # measured: 0.63/0.50/0.49 against 0.45/0.40/0.25
    assert evaluated.mean() - train.mean() > 0.08, ssim_by_mode


def test_fedsgd_step_computes_its_gradient_in_the_configured_mode():
    """eval: running statistics used and left unchanged; train: batch statistics, running ones updated."""
    from fedtrust.training import fedsgd_step

    x = torch.stack([photo(p) for p in PHOTOS])
    y = torch.tensor([0, 1, 2, 3])
    out = {}
    for mode in ("train", "eval"):
        model = _bn_net()
        before = model[1].running_mean.clone()
        out[mode] = fedsgd_step(model, x, y, 2, np.random.default_rng(0), np.arange(4), mode)
        assert torch.equal(model[1].running_mean, before) == (mode == "eval")
    assert not torch.allclose(out["train"].update["0.weight"], out["eval"].update["0.weight"])
    with pytest.raises(ValueError, match="train, eval"):
        fedsgd_step(_bn_net(), x, y, 2, np.random.default_rng(0), np.arange(4), "inference")
