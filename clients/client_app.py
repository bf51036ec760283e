"""fedtrust ClientApp: train ResNet-18 (or the small ConvNet) on a partition and send a compressed update.

Per round the client

1. loads the global model from the ``train`` message,
2. computes its update on its partition (``local-mode``: one FedSGD batch gradient or
   FedAvg local epochs) on a GPU when there is one,
3. compresses it with the run's codec and its own stateful compressor, whose state
   (error-feedback residual, PowerSGD's warm-start Q) lives in the node's ``Context.state``,
4. replies with the payload, the BatchNorm statistics and its metrics.

A codec with more than one exchange per round (PowerSGD all-reduce) answers one
``train.exchange`` message per further exchange in the same round (see
:mod:`fedtrust.protocol`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtrust import protocol
from fedtrust.compression import Codec, Compressor, get_codec
from fedtrust.config import RunConfig, check_data_paths, parse_run_config
from fedtrust.data import load_dataset, partition_indices
from fedtrust.models import get_model
from fedtrust.privacy import noise_generator
from fedtrust.training import (
    buffer_state,
    client_seed,
    fedavg_train,
    fedsgd_step,
    model_layout,
    select_device,
)
from strategies.flower_adapter import from_record, to_record

app = ClientApp()


def _partition(context: Context, cfg: RunConfig) -> tuple[int, int]:
    """Partition id and count from the node config (simulation or ``--node-config``)."""
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("node config needs 'partition-id' and 'num-partitions' "
                         "(flower-supernode --node-config \"partition-id=0 num-partitions=2\")")
    pid, num = int(node["partition-id"]), int(node["num-partitions"])
    if cfg.num_partitions:
        num = cfg.num_partitions
    if not 0 <= pid < num:
        raise ValueError(f"partition-id={pid} is outside 0..{num - 1}")
    return pid, num


def _run_config(context: Context) -> RunConfig:
    """The run config, its data folders checked here, where the data is read.

    A node's ``--node-config data-dir`` wins over the run config's ``data-dir`` (which may
    name a folder that exists only on the server).
    """
    cfg = parse_run_config(context.run_config, check_paths=False)
    node_dir = str(context.node_config.get("data-dir", ""))
    if node_dir:
        check_data_paths(cfg.dataset, node_dir, where="node config data-dir")
    else:
        check_data_paths(cfg.dataset, cfg.data_dir)
    return cfg


def _data_dir(context: Context, cfg: RunConfig) -> str | None:
    """The folder this node reads its data from (its node config's, else the run config's)."""
    return str(context.node_config.get("data-dir", "") or cfg.data_dir) or None


def _compressor(context: Context, codec: Codec) -> Compressor:
    """The node's compressor, with its state restored from ``Context.state``."""
    comp = codec.compressor()
    if protocol.COMPRESSOR_STATE in context.state:
        state = context.state[protocol.COMPRESSOR_STATE]
        comp.load_state_dict({k: torch.from_numpy(a.numpy()) for k, a in state.items()})
    return comp


def _save_compressor(context: Context, comp: Compressor) -> None:
    context.state[protocol.COMPRESSOR_STATE] = to_record(
        {k: v.detach().cpu().numpy() for k, v in comp.state_dict().items()})


def _inject_fault(context: Context, server_round: int) -> None:
    """Fault injection for robustness tests: ``--node-config "fail-rounds='2,3'"`` makes this node fail."""
    rounds = str(context.node_config.get("fail-rounds", "")).strip()
    if rounds and str(server_round) in {r.strip() for r in rounds.split(",")}:
        raise RuntimeError(f"fault injected by node config fail-rounds={rounds!r} in round {server_round}")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Compute, compress and send this round's update."""
    t0 = time.perf_counter()
    cfg = _run_config(context)
    server_round = int(msg.content[protocol.CONFIG]["server-round"])
    pid, num_partitions = _partition(context, cfg)
    _inject_fault(context, server_round)
    device = select_device(cfg.device)
    data = load_dataset(cfg.dataset, "train", data_dir=_data_dir(context, cfg))
    indices = partition_indices(data.labels, num_partitions, pid, partitioner=cfg.partitioner,
                                alpha=cfg.dirichlet_alpha, seed=cfg.seed)
    x, y = data.to_tensors(indices)
    x, y = x.to(device), y.to(device)

    model = get_model(cfg.model, num_classes=data.spec.num_classes, in_channels=data.spec.channels)
    state = msg.content[protocol.ARRAYS].to_torch_state_dict()
    model.load_state_dict(state)
    model.to(device)

    seed = client_seed(cfg.seed, server_round, pid)
    if cfg.local_mode == "fedsgd":
        batch = cfg.batch_size
        if server_round == cfg.attack_round and cfg.attacks_client(pid):
            batch = cfg.attack_images  # the attacked batch holds attack-images images (one in the paper)
        result = fedsgd_step(model, x, y, batch, np.random.default_rng(seed), indices, cfg.client_model_mode)
    else:
        gen = torch.Generator().manual_seed(seed)
        result = fedavg_train(model, x, y, cfg.local_epochs, cfg.batch_size, cfg.lr, gen)

    layout = model_layout(model)
    update = {n: result.update[n].float() for n, _ in layout}
    dp = cfg.client_dp()
    if dp is not None:  # clipped and noised before the codec: the server never sees the clean update
        update, _ = dp.privatize(update, noise_generator(cfg.seed, server_round, pid))
    codec = get_codec(cfg.compressor_spec(), layout)
    comp = _compressor(context, codec)
    broadcast = from_record(msg.content[protocol.BROADCAST]) if protocol.BROADCAST in msg.content else {}
    payload = codec.client_step(comp, 0, update, broadcast)
    _save_compressor(context, comp)

    buffers = {k: v.numpy() for k, v in buffer_state(model).items()}
    content = RecordDict({
        protocol.PAYLOAD: to_record(payload.arrays),
        protocol.BUFFERS: to_record(buffers),
        protocol.METRICS: MetricRecord({
            "num-examples": int(result.num_examples),
            "train-loss": float(result.loss),
            "uplink-bytes": int(payload.nbytes),
            "dense-bytes": int(codec.dense_nbytes()),
            "buffer-bytes": int(sum(b.nbytes for b in buffers.values())),
            "partition-id": pid,
            "num-partitions": num_partitions,
            "seconds": time.perf_counter() - t0,
        }),
    })
    if result.batch_indices is not None:
        content[protocol.AUDIT] = to_record({"batch-indices": result.batch_indices.astype(np.int64)})
    return Message(content=content, reply_to=msg)


@app.train(protocol.EXCHANGE_ACTION)
def train_exchange(msg: Message, context: Context) -> Message:
    """A later exchange of the round (PowerSGD all-reduce: Q_i = M_i^T P-hat for the server's P-hat)."""
    cfg = _run_config(context)
    pid, _ = _partition(context, cfg)
    exchange = int(msg.content[protocol.CONFIG]["exchange"])
    if protocol.COMPRESSOR_STATE not in context.state:
        raise RuntimeError(f"train.exchange {exchange} arrived before this node's first exchange of the round")
    data = load_dataset(cfg.dataset, "train", data_dir=_data_dir(context, cfg))
    model = get_model(cfg.model, num_classes=data.spec.num_classes, in_channels=data.spec.channels)
    codec = get_codec(cfg.compressor_spec(), model_layout(model))
    comp = _compressor(context, codec)
    payload = codec.client_step(comp, exchange, None, from_record(msg.content[protocol.SERVER_ARRAYS]))
    _save_compressor(context, comp)
    content = RecordDict({
        protocol.PAYLOAD: to_record(payload.arrays),
        protocol.METRICS: MetricRecord({"uplink-bytes": int(payload.nbytes), "partition-id": pid}),
    })
    return Message(content=content, reply_to=msg)
