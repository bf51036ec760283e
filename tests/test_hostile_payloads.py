"""Broken or hostile client replies are rejected with a reason; honest ones pass.

Each case starts from an honest reply (a real gradient of the ConvNet, compressed by
the real compressor, packed into Flower records as the ClientApp does) and breaks one
thing. Without the server's checks, each of these would either crash the decoder,
poison the aggregate with NaN/Inf, or be silently accepted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from fedtrust import protocol
from fedtrust.compression import get_codec, layout_of
from fedtrust.config import parse_run_config
from fedtrust.models import ConvNet
from fedtrust.records import RunFolder
from fedtrust.training import batch_gradient, buffer_state
from strategies.aggregation import aggregate
from strategies.compressed_fedavg import CompressedFedAvg, RejectedReply
from strategies.exchanges import Tally


def record(arrays):
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def honest(compressor: str, level: int = 2, **extra):
    torch.manual_seed(0)
    model = ConvNet(num_classes=10, in_channels=1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    grads, _ = batch_gradient(model, x, y)
    cfg = parse_run_config({"model": "convnet", "compressor": compressor, "level": level,
                            "batch-size": 8, **extra})
    codec = get_codec(cfg.compressor_spec(), layout_of(grads))
    comp = codec.compressor()
    payload = codec.client_step(comp, 0, grads, {})
    content = {
        "payload": dict(payload.arrays),
        "buffers": {k: v.numpy() for k, v in buffer_state(model).items()},
        "metrics": {"num-examples": 8, "train-loss": 2.3, "uplink-bytes": payload.nbytes,
                    "dense-bytes": codec.dense_nbytes(), "buffer-bytes": 0, "partition-id": 0},
    }
    return cfg, model, content


def strategy_for(cfg, model, tmp_path):
    layout = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    strat = CompressedFedAvg(cfg, layout, RunFolder.create(tmp_path, "run"))
    strat.checker.buffer_shapes = {k: tuple(v.shape) for k, v in buffer_state(model).items()}
    return strat


def pack(content):
    return RecordDict({protocol.PAYLOAD: record(content["payload"]),
                       protocol.BUFFERS: record(content["buffers"]),
                       protocol.METRICS: MetricRecord(content["metrics"])})


CASES = {
    "missing array": ("none", lambda p: p.pop(next(iter(p))), "missing"),
    "extra array": ("none", lambda p: p.__setitem__("dense/evil", np.zeros(3, np.float32)), "unexpected"),
    "wrong shape": ("none", lambda p: p.__setitem__("dense/fc.bias", np.zeros(11, np.float32)), "shape"),
    "wrong dtype": ("none", lambda p: p.__setitem__("dense/fc.bias", p["dense/fc.bias"].astype(np.float64)), "dtype"),
    "nan": ("none", lambda p: p["dense/fc.weight"].__setitem__((0, 0), np.nan), "NaN"),
    "inf": ("topk", lambda p: p["values"].__setitem__(0, np.inf), "Inf"),
    "topk index out of range": ("topk", lambda p: p["indices"].__setitem__(0, 10**8), "outside"),
    "topk negative index": ("topk", lambda p: p["indices"].__setitem__(0, -1), "outside"),
    "topk repeated index": ("topk", lambda p: p["indices"].__setitem__(1, p["indices"][0]), "repeated"),
    "powersgd wrong rank": ("powersgd", lambda p: [p.__setitem__(k, np.zeros((v.shape[0], 3), np.float32))
                                                   for k, v in list(p.items()) if k.startswith("p/")], "rank"),
    "oversized payload": ("topk", lambda p: p.__setitem__("values", np.zeros(10**6, np.float32)), "bytes"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_payload_is_rejected_with_a_reason(case, tmp_path):
    compressor, corrupt, reason = CASES[case]
    cfg, model, content = honest(compressor)
    strat = strategy_for(cfg, model, tmp_path)
    strat.checker.parse_reply(1, pack(content))  # the honest reply passes
    corrupt(content["payload"])
    with pytest.raises(RejectedReply, match=reason):
        strat.checker.parse_reply(1, pack(content))


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("num-examples", -5, "positive"),
    ("num-examples", float("nan"), "positive"),
    ("num-examples", 10**9, "batch-size"),
    ("partition-id", float("nan"), "partition-id"),
    ("partition-id", -3, "partition-id"),
    ("partition-id", 2.5, "partition-id"),
    ("num-partitions", 1, "not below num-partitions"),
    ("train-loss", float("inf"), "train-loss"),
])
def test_hostile_metrics_are_rejected(field, value, reason, tmp_path):
    """Metrics the server reads (weights, ids, losses) are checked like the arrays."""
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    content["metrics"]["partition-id"] = 1
    content["metrics"][field] = value
    with pytest.raises(RejectedReply, match=reason):
        strat.checker.parse_reply(1, pack(content))


@pytest.mark.parametrize(("name", "values", "reason"), [
    ("bn.running_mean", [0, 0, np.inf, 0], "NaN or Inf"),
    ("bn.running_var", [1, 1, -2, 1], "variance below 0"),
])
def test_poisoned_batchnorm_buffers_are_rejected(name, values, reason, tmp_path):
    cfg, model, content = honest("none")
    # the ConvNet has no BatchNorm: give the server ResNet-like expectations by hand
    strat = strategy_for(cfg, model, tmp_path)
    strat.checker.buffer_shapes = {name: (4,)}
    content["buffers"] = {name: np.ones(4, np.float32)}
    strat.checker.parse_reply(1, pack(content))  # honest statistics pass
    content["buffers"] = {name: np.array(values, np.float32)}
    with pytest.raises(RejectedReply, match=reason):
        strat.checker.parse_reply(1, pack(content))


def test_missing_records_are_rejected(tmp_path):
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    rd = pack(content)
    del rd[protocol.PAYLOAD]
    with pytest.raises(RejectedReply, match="payload"):
        strat.checker.parse_reply(1, rd)


def test_powersgd_second_exchange_rank_is_checked():
    from fedtrust.compression import get_codec
    from fedtrust.compression.validate import PayloadError, validate_payload
    codec = get_codec({"compressor": "powersgd", "level": 2, "mode": "allreduce"}, (("w", (64, 64)),))
    validate_payload({"q/w": np.zeros((64, 2), np.float32)}, codec, exchange=1)
    with pytest.raises(PayloadError, match="rank 4"):
        validate_payload({"q/w": np.zeros((64, 4), np.float32)}, codec, exchange=1)


def test_claimed_byte_counts_are_ignored_for_measured_ones(tmp_path):
    cfg, model, content = honest("topk")
    strat = strategy_for(cfg, model, tmp_path)
    strat.checker.buffer_shapes = {"bn.running_mean": (4,)}
    content["buffers"] = {"bn.running_mean": np.zeros(4, np.float32)}
    sent = sum(a.nbytes for a in content["payload"].values())
    # a client that claims to send almost nothing, and a dense model of any size it likes
    content["metrics"].update({"uplink-bytes": 1, "dense-bytes": 7, "buffer-bytes": 10**9})
    reply = strat.checker.parse_reply(1, pack(content))
    assert reply.metrics["uplink-bytes"] == sent
    assert reply.metrics["dense-bytes"] == 4 * sum(p.numel() for p in model.parameters())
    assert reply.metrics["buffer-bytes"] == 16


@pytest.mark.parametrize(("indices", "reason"), [
    (np.array([0, 1, 2, 3, 4, 5, 6, 10**6], np.int64), "outside"),
    (np.array([0, 1, 2, 3, 4, 5, 6, -1], np.int64), "outside"),
    (np.array([0, 1, 2, 3, 4, 5, 6, 6], np.int64), "repeated"),
    (np.array([0, 1, 2], np.int64), "num-examples"),
    (np.arange(8, dtype=np.float32), "int64"),
])
def test_hostile_batch_indices_are_rejected(indices, reason, tmp_path):
    cfg, model, content = honest("none")
    layout = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    strat = CompressedFedAvg(cfg, layout, RunFolder.create(tmp_path, "run"), num_train=100)
    rd = pack(content)
    rd[protocol.AUDIT] = record({"batch-indices": np.arange(8, dtype=np.int64)})
    strat.checker.parse_reply(1, rd)  # honest indices pass
    rd[protocol.AUDIT] = record({"batch-indices": indices})
    with pytest.raises(RejectedReply, match=reason):
        strat.checker.parse_reply(1, rd)


def test_fedavg_cannot_claim_more_examples_than_the_train_split(tmp_path):
    _, model, content = honest("none")
    cfg = parse_run_config({"model": "convnet", "local-mode": "fedavg", "compressor": "none", "attack": "none"})
    layout = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    strat = CompressedFedAvg(cfg, layout, RunFolder.create(tmp_path, "run"), num_train=3000)
    content["metrics"]["num-examples"] = 10**12  # would outweigh every honest client
    with pytest.raises(RejectedReply, match="train samples"):
        strat.checker.parse_reply(1, pack(content))


def test_unreadable_arrays_are_rejected_not_raised(tmp_path):
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    rd = pack(content)
    rd[protocol.PAYLOAD]["dense/fc.bias"] = Array(dtype="float32", shape=(10,), stype="numpy.ndarray", data=b"")
    with pytest.raises(RejectedReply, match="unreadable"):
        strat.checker.parse_reply(1, rd)


def test_a_record_of_the_wrong_kind_is_rejected_not_raised(tmp_path):
    cfg, model, content = honest("none")
    strat = strategy_for(cfg, model, tmp_path)
    rd = pack(content)
    rd[protocol.PAYLOAD] = ConfigRecord({"dense/fc.bias": 1.0})  # not arrays at all
    with pytest.raises(RejectedReply, match="unreadable reply"):
        strat.checker.parse_reply(1, rd)


def test_finite_powersgd_factors_that_decode_to_inf_are_rejected(tmp_path):
    """p and q pass every array check (finite, right shapes) but their product overflows float32."""
    cfg, model, content = honest("powersgd", **{"powersgd-mode": "local"})
    strat = strategy_for(cfg, model, tmp_path)
    reply = strat.checker.parse_reply(1, pack(content))
    strat.exchange.decode(reply)  # the honest reply decodes
    for key in [k for k in content["payload"] if k.startswith(("p/", "q/"))]:
        content["payload"][key] = np.full_like(content["payload"][key], 3e30)
    reply = strat.checker.parse_reply(1, pack(content))
    with pytest.raises(RejectedReply, match="not finite"):
        strat.exchange.decode(reply)


def test_a_failing_attacker_does_not_stop_interception(tmp_path):
    cfg, model, content = honest("none", **{"intercept-clients": "all"})
    layout = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    seen = []

    def broken(item):
        raise RuntimeError("attack blew up")

    strat = CompressedFedAvg(cfg, layout, RunFolder.create(tmp_path, "run"), on_intercept=[broken, seen.append])
    replies = []
    for pid in (0, 5):  # partition 5 of an unknown number of partitions is intercepted too
        content["metrics"]["partition-id"] = pid
        reply = strat.checker.parse_reply(pid + 1, pack(content))
        strat.exchange.decode(reply)
        replies.append(reply)
    strat.interceptor(1, replies, model.state_dict())
    assert [item.partition_id for item in seen] == [0, 5]
    assert len(strat.attack_errors) == 2 and "attack blew up" in strat.attack_errors[0]


def _accepted(strat, content, node_ids=(1, 2)):
    replies = []
    for node in node_ids:
        content["metrics"]["partition-id"] = node - 1
        reply = strat.checker.parse_reply(node, pack(content))
        replies.append(reply)
    return replies


def test_finite_updates_that_step_the_model_to_inf_are_refused(tmp_path):
    _, model, content = honest("none")
    cfg = parse_run_config({"model": "convnet", "batch-size": 8, "server-lr": 100.0, "compressor": "none"})  # step 10
    strat = strategy_for(cfg, model, tmp_path)
    for key in content["payload"]:
        content["payload"][key] = np.full_like(content["payload"][key], 3e38)  # finite, the sum is not
    replies = _accepted(strat, content)
    for reply in replies:
        strat.exchange.decode(reply)
    with pytest.raises(RejectedReply, match="not finite"):
        aggregate(model.state_dict(), replies, strat.step)


def test_powersgd_p_that_average_to_inf_reject_the_round_before_the_second_exchange(tmp_path):
    cfg, model, content = honest("powersgd")
    strat = strategy_for(cfg, model, tmp_path)
    for key in [k for k in content["payload"] if k.startswith("p/")]:
        content["payload"][key] = np.full_like(content["payload"][key], 3e38)
    replies = _accepted(strat, content)
    # returns before any message is sent: no grid is needed
    tally = Tally()
    assert strat.exchange.later(None, 1, replies, timeout=1.0, tally=tally) == []
    assert (tally.rejected, tally.failed) == (2, 0)


def test_a_q_that_averages_to_inf_does_not_become_the_warm_start(tmp_path):
    cfg, model, content = honest("powersgd")
    strat = strategy_for(cfg, model, tmp_path)
    server = strat.server
    before = {k: v.copy() for k, v in server.q_shared.items()}
    replies = _accepted(strat, content)
    for reply in replies:
        reply.payload = {**reply.payload,
                         **{f"q/{k}": np.full_like(v, 3e38) for k, v in server.q_shared.items()}}

    def end_round():
        return server.end_round([r.payload for r in replies], [r.weight for r in replies], [r.scale for r in replies])

    assert not end_round()
    assert all(np.array_equal(server.q_shared[k], before[k]) for k in before)
    for reply in replies:  # honest Q's are taken
        reply.payload.update({f"q/{k}": np.ones_like(v) for k, v in server.q_shared.items()})
    assert end_round()
    assert all(np.allclose(v, 1.0) for v in server.q_shared.values())


def _reply_message(node: int, content) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=0.0, ttl=60.0, message_type="train")
    return Message(pack(content), metadata=meta)


def test_the_aggregate_does_not_depend_on_which_client_answered_first(tmp_path):
    """Replies are taken in partition order, so float32 sums are the same whatever the arrival order."""
    _, model, content = honest("none")
    cfg = parse_run_config({"model": "convnet", "batch-size": 8, "compressor": "none"})
    rng = np.random.default_rng(0)
    contents = []
    for partition in range(4):  # four different updates, with magnitudes that make float32 sums order-dependent
        c = {**content, "metrics": {**content["metrics"], "partition-id": partition}}
        c["payload"] = {k: (v * 10.0 ** rng.integers(-3, 4, v.shape)).astype(np.float32)
                        for k, v in content["payload"].items()}
        contents.append(c)
    results = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
        strat = strategy_for(cfg, model, tmp_path / "-".join(map(str, order)))
        accepted = strat.exchange.first(1, [_reply_message(p + 10, contents[p]) for p in order], Tally())
        assert [r.partition_id for r in accepted] == [0, 1, 2, 3]
        results.append(aggregate(model.state_dict(), accepted, strat.step))
    for other in results[1:]:
        assert all(torch.equal(results[0][k], other[k]) for k in results[0])
