"""The server's bounds on what one client, one resume or one operator slip can do (no Flower run).

Each test drives the real strategy, run folder or ClientApp function with real models,
real compressed updates and real files; the Flower runs that show the same end to end
are in test_hostile_clients.py and test_flower_simulation.py.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedtrust.config import ConfigError, parse_run_config
from fedtrust.data import load_dataset, partition_indices
from fedtrust.interception import InterceptedUpdate
from fedtrust.records import REDACTED, RunFolder, redact_argv
from fedtrust.robust import NormBound, l2_norm, lower_median
from strategies.aggregation import aggregate, bound_norms
from strategies.compressed_fedavg import CheckpointError, CompressedFedAvg, RejectedReply, load_checkpoint
from strategies.server_app import check_resumable
from tests.test_hostile_payloads import honest, pack, strategy_for


def replies_of(strat, content, scales):
    """One parsed, decoded reply per scale: the honest update times that scale (partitions 0, 1, ...)."""
    out = []
    for pid, scale in enumerate(scales):
        content["metrics"]["partition-id"] = pid
        payload = dict(content["payload"])
        content["payload"] = {k: (v * np.float32(scale) if v.dtype.kind == "f" else v) for k, v in payload.items()}
        reply = strat.checker.parse_reply(pid + 1, pack(content))
        content["payload"] = payload
        strat.exchange.decode(reply)
        out.append(reply)
    return out


# --------------------------------------------------------------------------- norm bound (case 1)
def test_lower_median_bounds_one_hostile_client_of_two():
    assert lower_median([1.0, 1e30]) == 1.0  # the plain median, 5e29, would bound nothing
    assert lower_median([3.0, 1.0, 2.0]) == 2.0
    verdicts = NormBound(10.0).judge([1.0, 1e30])
    assert [v.refused for v in verdicts] == [False, True]


def test_norms_do_not_overflow_for_the_largest_float32():
    assert math.isfinite(l2_norm([np.full(1000, 3e38, np.float32)]))
    assert l2_norm([np.array([1.0, np.inf], np.float32)]) == math.inf


@pytest.mark.parametrize("compressor", ["none", "topk", "powersgd"])
def test_an_update_far_above_the_median_is_refused(compressor, tmp_path):
    extra = {"powersgd-mode": "local"} if compressor == "powersgd" else {}
    cfg, model, content = honest(compressor, **extra)
    strat = strategy_for(cfg, model, tmp_path)
    huge = 1e15 if compressor == "powersgd" else 1e30  # P and Q both scaled: the update by 1e30
    replies = replies_of(strat, content, [1.0, 1.5, huge])
    kept, refused, clipped = bound_norms(strat.bound, 1, replies, model.state_dict())
    assert [r.partition_id for r in kept] == [0, 1] and refused == 1 and clipped == 0
    new = aggregate(model.state_dict(), kept, strat.step)
    assert all(torch.isfinite(v).all() for v in new.values())


def test_clip_scales_an_outlier_down_to_the_bound(tmp_path):
    cfg, model, content = honest("none", **{"max-norm-action": "clip", "max-norm-ratio": 4.0})
    strat = strategy_for(cfg, model, tmp_path)
    replies = replies_of(strat, content, [1.0, 1.0, 1e6])
    median = l2_norm(replies[0].decoded.values())
    kept, refused, clipped = bound_norms(strat.bound, 1, replies, model.state_dict())
    assert len(kept) == 3 and refused == 0 and clipped == 1
    assert l2_norm(kept[2].decoded.values()) == pytest.approx(4.0 * median, rel=1e-5)
    assert kept[2].scale == pytest.approx(4.0 / 1e6, rel=1e-5)


def test_the_bound_can_be_switched_off(tmp_path):
    cfg, model, content = honest("none", **{"max-norm-ratio": 0})
    strat = strategy_for(cfg, model, tmp_path)
    kept, refused, _ = bound_norms(strat.bound, 1, replies_of(strat, content, [1.0, 1.0, 1e6]), model.state_dict())
    assert len(kept) == 3 and refused == 0


def test_batchnorm_statistics_far_from_the_global_ones_are_refused(tmp_path):
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    strat.checker.buffer_shapes = {"bn.running_mean": (4,)}
    state = {**model.state_dict(), "bn.running_mean": torch.zeros(4)}
    replies = []
    for pid, value in enumerate([0.1, 0.2, 1e30]):
        content["metrics"]["partition-id"] = pid
        content["buffers"] = {"bn.running_mean": np.full(4, value, np.float32)}
        reply = strat.checker.parse_reply(pid + 1, pack(content))
        strat.exchange.decode(reply)
        replies.append(reply)
    kept, refused, _ = bound_norms(strat.bound, 1, replies, state)
    assert [r.partition_id for r in kept] == [0, 1] and refused == 1
    assert float(aggregate(state, kept, strat.step)["bn.running_mean"].abs().max()) < 1


# --------------------------------------------------------------------------- who claims what (cases 2-4)
def test_a_repeated_partition_is_refused_for_every_claimant(tmp_path):
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    content["metrics"].update({"partition-id": 0, "num-partitions": 2})
    a, b = strat.checker.parse_reply(7, pack(content)), strat.checker.parse_reply(9, pack(content))
    strat.checker.settle_num_partitions([a, b])
    claims = {0: [7, 9]}
    for reply in (a, b):
        with pytest.raises(RejectedReply, match=r"claimed by nodes \[7, 9\]"):
            strat.checker.check_sender(reply, 1, claims)
    strat.checker.check_sender(a, 1, {0: [7]})  # alone, it passes


def test_an_intercepted_update_is_never_overwritten(tmp_path):
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    reply = replies_of(strat, content, [1.0])[0]
    path = strat.run_folder.intercepted_file(1, 0)
    strat.interceptor(1, [reply], model.state_dict())
    first = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        strat.interceptor(1, [reply], model.state_dict())
    assert path.read_bytes() == first
    assert not list(path.parent.glob("*.tmp"))
    assert InterceptedUpdate.load(path).partition_id == 0


@pytest.mark.parametrize("claim", [0.5, 5e-324, 1.5])
def test_num_examples_must_be_a_whole_number(claim, tmp_path):
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    content["metrics"]["num-examples"] = claim
    with pytest.raises(RejectedReply, match="positive integer"):
        strat.checker.parse_reply(1, pack(content))


@pytest.fixture(scope="module")
def sample_labels():
    return load_dataset("sample", "train").labels


def sizes_of(labels, cfg):
    return lambda num, pid: len(partition_indices(labels, num, pid, partitioner=cfg.partitioner,
                                                  alpha=cfg.dirichlet_alpha, seed=cfg.seed))


def test_fedavg_num_examples_must_be_the_partition_size(tmp_path, sample_labels):
    _, model, content = honest("none")
    cfg = parse_run_config({"model": "convnet", "local-mode": "fedavg", "compressor": "none", "attack": "none"})
    layout = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    strat = CompressedFedAvg(cfg, layout, RunFolder.create(tmp_path, "run"), num_train=len(sample_labels),
                             partition_size=sizes_of(sample_labels, cfg))
    content["metrics"].update({"partition-id": 1, "num-partitions": 3, "num-examples": 1000})
    reply = strat.checker.parse_reply(2, pack(content))
    strat.checker.settle_num_partitions([reply])
    strat.checker.check_sender(reply, 1, {})  # the truth passes
    content["metrics"]["num-examples"] = 3000  # 60% of the aggregate instead of a third
    reply = strat.checker.parse_reply(2, pack(content))
    with pytest.raises(RejectedReply, match="not the 1000 that partition 1 of 3 gives"):
        strat.checker.check_sender(reply, 1, {})


def test_fedsgd_num_examples_is_the_batch_or_the_attacked_batch(tmp_path, sample_labels):
    _, model, _ = honest("none")
    cfg = parse_run_config({"model": "convnet", "batch-size": 8, "attack": "gradinv", "attack-clients": "1",
                            "attack-images": 2})
    layout = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    strat = CompressedFedAvg(cfg, layout, RunFolder.create(tmp_path, "run"), num_train=len(sample_labels),
                             partition_size=sizes_of(sample_labels, cfg))
    strat.checker.num_partitions = 3
    assert strat.checker.expected_examples(1, 0) == 8 and strat.checker.expected_examples(1, 1) == 2
    assert strat.checker.expected_examples(2, 1) == 8


def test_partition_counts_are_bounded_and_agreed(tmp_path):
    cfg, model, content = honest("none")
    layout = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    strat = CompressedFedAvg(cfg, layout, RunFolder.create(tmp_path, "run"), num_train=3000)
    content["metrics"]["num-partitions"] = 1_000_000
    with pytest.raises(RejectedReply, match="num-partitions=1000000 is more than the 3000 train samples"):
        strat.checker.parse_reply(1, pack(content))
    replies = []
    for node, num in [(1, 3), (2, 3), (3, 2)]:
        content["metrics"].update({"num-partitions": num, "partition-id": node % num})
        replies.append(strat.checker.parse_reply(node, pack(content)))
    strat.checker.settle_num_partitions(replies)
    assert strat.num_partitions == 3  # the majority's
    with pytest.raises(RejectedReply, match="num-partitions=2 is not the run's 3"):
        strat.checker.check_sender(replies[2], 1, {})
    fixed = parse_run_config({"model": "convnet", "batch-size": 8, "num-partitions": 4, "compressor": "none"})
    strat = CompressedFedAvg(fixed, layout, RunFolder.create(tmp_path, "fixed"), num_train=3000)
    with pytest.raises(RejectedReply, match="not the run's num-partitions=4"):
        strat.checker.parse_reply(1, pack(content))


# --------------------------------------------------------------------------- configuration (cases 7-9)
def test_the_node_data_dir_wins_over_one_that_exists_only_on_the_server(tmp_path):
    from clients.client_app import _data_dir, _run_config

    node_dir = tmp_path / "node-data"
    node_dir.mkdir()
    run_config = {"model": "convnet", "data-dir": "/exists/only/on/the/server"}
    node = {"partition-id": 0, "num-partitions": 2, "data-dir": str(node_dir)}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config)
    cfg = _run_config(context)
    assert _data_dir(context, cfg) == str(node_dir)
    del node["data-dir"]  # without the node's folder, the run's is checked here, where it is read
    with pytest.raises(ConfigError, match="data-dir='/exists/only/on/the/server' is not a folder on this machine"):
        _run_config(Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config))
    node["data-dir"] = str(tmp_path / "missing-on-the-node")
    with pytest.raises(ConfigError, match="node config data-dir="):
        _run_config(Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config))


@pytest.mark.parametrize("name", ["..", ".", "../elsewhere", "a/b"])
def test_a_run_name_cannot_leave_the_output_dir(name, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError)):
        RunFolder.open(tmp_path / "out", name)
    with pytest.raises(ValueError, match="inside output-dir"):
        RunFolder.create(tmp_path / "out", name) if name not in ("a/b",) else RunFolder._child(tmp_path, name)


def test_resume_with_another_configuration_lists_the_differences(tmp_path):
    cfg = parse_run_config({"compressor": "powersgd", "level": 2, "run-name": "r"})
    folder = RunFolder.create(tmp_path, "r")
    folder.write_config(cfg.as_flat_dict())
    same = parse_run_config({"compressor": "powersgd", "level": 2, "run-name": "r", "resume": True,
                             "round-timeout": 30.0, "device": "cpu"})
    check_resumable(folder, same)  # resume, timeout and device cannot change the results
    other = parse_run_config({"compressor": "powersgd", "level": 4, "lr": 0.2, "run-name": "r", "resume": True})
    with pytest.raises(ConfigError, match=r"level: 2 -> 4; lr: 0.1 -> 0.2"):
        check_resumable(folder, other)


def test_a_truncated_checkpoint_is_named(tmp_path):
    cfg, model, _ = honest("topk")
    strat = strategy_for(cfg, model, tmp_path)
    strat.checkpoint(3, model.state_dict())
    path = strat.run_folder.checkpoint
    assert load_checkpoint(path)["round"] == 3
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        strat.restore(path)


# --------------------------------------------------------------------------- results (cases 10, 14)
def write_csv(path, rows):
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_discard_after_drops_rows_and_files_written_after_the_checkpoint(tmp_path):
    folder = RunFolder.create(tmp_path, "run")
    write_csv(folder.path / "mia.csv", [
        {"attack": "loss", "round": 1, "client": 0}, {"attack": "loss", "round": 2, "client": 0},
        {"attack": "loss", "round": 2, "client": ""}])  # the final model's row, written after round 2
    write_csv(folder.path / "gradinv.csv", [{"round": 1, "client": 0, "ssim": 0.5},
                                            {"round": 2, "client": 1, "ssim": 0.4}])
    for r in (1, 2):
        (folder.intercepted_dir / f"round{r}_client0.pt").write_bytes(b"x")
    assert folder.discard_after(2) == {"gradinv.csv": 0, "mia.csv": 1}
    assert folder.discard_after(1) == {"gradinv.csv": 1, "mia.csv": 1}
    with (folder.path / "mia.csv").open() as fh:
        assert [r["round"] for r in csv.DictReader(fh)] == ["1"]
    assert sorted(p.name for p in folder.intercepted_dir.iterdir()) == ["round1_client0.pt"]


def test_no_credential_reaches_config_json(tmp_path, monkeypatch):
    argv = ["flwr-serverapp", "--serverappio-api-address", "127.0.0.1:9091", "--token", "s3cr3t-token",
            "--run-once", "--api-key=abc123", "--password", "pw"]
    assert redact_argv(argv) == ["flwr-serverapp", "--serverappio-api-address", "127.0.0.1:9091", "--token",
                                 REDACTED, "--run-once", f"--api-key={REDACTED}", "--password", REDACTED]
    monkeypatch.setattr("sys.argv", argv)
    folder = RunFolder.create(tmp_path, "run")
    text = folder.write_config({"seed": 1}).read_text()
    assert "s3cr3t-token" not in text and "abc123" not in text and json.loads(text)["argv"][4] == REDACTED


def test_more_partitions_than_train_images_is_refused_before_round_1():
    from strategies.server_app import check_num_partitions

    check_num_partitions(parse_run_config({"num-partitions": 3000}), 3000)
    with pytest.raises(ConfigError, match=r"num-partitions=5000 is more than the 3000 images .* 1\.\.3000"):
        check_num_partitions(parse_run_config({"num-partitions": 5000}), 3000)
