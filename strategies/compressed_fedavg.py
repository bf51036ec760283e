"""CompressedFedAvg: FedAvg/FedSGD over compressed updates, watched by an honest-but-curious server.

A Flower Message-API strategy (:class:`flwr.serverapp.strategy.Strategy`) assembled from
small parts, each readable alone:

* :mod:`strategies.replies`: reply validation (records, metrics, the payload against
  the codec, the sender against the run and the round);
* :mod:`strategies.exchanges`: the exchanges the run's codec asks for in a round, and
  decoding (the codec's :class:`~fedtrust.compression.codec.ServerProtocol`);
* :mod:`strategies.interceptor`: what the server keeps of the chosen updates, and the
  attackers;
* :mod:`strategies.aggregation`: the norm bound and the server's step;
* :mod:`strategies.checkpoint`: the state a resumed run needs.

Per round (:meth:`CompressedFedAvg.start`): configure and send ``train`` (global model,
the codec's broadcast) -> validate the replies and run the codec's further exchanges ->
intercept (before any bound, as the server received them) -> bound the norms -> the
codec's end of round (PowerSGD's next warm start) -> aggregate -> evaluate -> one row of
``rounds.csv`` -> checkpoint. Nothing here knows which compressor the run uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from fedtrust.compression import Layout, get_codec
from fedtrust.config import RunConfig
from fedtrust.privacy import PrivacyLedger
from fedtrust.records import RoundRow, RunFolder
from fedtrust.robust import NormBound
from fedtrust.training import server_step
from strategies.aggregation import aggregate, bound_norms
from strategies.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from strategies.exchanges import ExchangeRunner, Tally, collect
from strategies.flower_adapter import messages_to, sample_train_nodes
from strategies.interceptor import InterceptFn, Interceptor
from strategies.replies import ClientReply, RejectedReply, ReplyChecker

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]

__all__ = ["CheckpointError", "CompressedFedAvg", "RejectedReply", "load_checkpoint"]


class CompressedFedAvg(Strategy):
    """FedAvg/FedSGD over compressed updates, with an honest-but-curious interception hook.

    Parameters
    ----------
    cfg:
        The validated run configuration.
    layout:
        Names and shapes of the model's trainable parameters (the update layout).
    run_folder:
        Where ``rounds.csv``, ``checkpoint.pt`` and intercepted updates go.
    on_intercept:
        The attackers: callables that receive each intercepted update.
    resume_from:
        A ``checkpoint.pt`` of this run folder to continue from (``resume = true``).
    num_train:
        Size of the train split, when known (bounds what a client may claim).
    partition_size:
        ``(num_partitions, partition_id) -> size``, when the server can compute it.

    Client-side evaluation is not used (``configure_evaluate`` sends nothing); the
    global model is evaluated by ``start``'s ``evaluate_fn`` on the server.
    """

    def __init__(self, cfg: RunConfig, layout: Layout, run_folder: RunFolder,
                 on_intercept: Sequence[InterceptFn] = (), resume_from: Path | None = None,
                 num_train: int | None = None,
                 partition_size: Callable[[int, int], int] | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        self.run_folder = run_folder
        self.resume_from = resume_from
        self.bound = NormBound(cfg.max_norm_ratio, cfg.max_norm_action)
        self.codec = get_codec(cfg.compressor_spec(), layout)
        self.server = self.codec.server()
        self.checker = ReplyChecker(cfg, self.codec, num_train=num_train, partition_size=partition_size)
        self.exchange = ExchangeRunner(self.checker, self.server, self.bound)
        self.interceptor = Interceptor(cfg, run_folder, on_intercept)
        self.step = server_step(cfg.local_mode, cfg.lr, cfg.server_lr)
        #: Train-split indices the accepted FedSGD replies trained on, and the partitions that took part.
        self.trained_indices: list[np.ndarray] = []
        self.partitions_seen: set[int] = set()
        #: Client-level DP's accounting (``None`` without DP).
        dp = cfg.client_dp()
        self.ledger = PrivacyLedger(dp) if dp is not None else None

    @property
    def attack_errors(self) -> list[str]:
        """What the attackers raised so far."""
        return self.interceptor.errors

    @property
    def num_partitions(self) -> int:
        """The number of partitions the clients split the train set into (0: not yet known)."""
        return self.checker.num_partitions

    # ------------------------------------------------------------------ Flower's hooks
    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├── Compression: %s", self.codec.spec.to_dict())
        log(INFO, "\t└── Sampling: fraction-train=%s, min-clients=%d", self.cfg.fraction_train,
            self.cfg.min_clients)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample nodes; send the global model, ``config`` and the codec's broadcast."""
        node_ids = sample_train_nodes(grid, self.cfg.fraction_train, self.cfg.min_clients)
        return messages_to(self.exchange.train_record(server_round, arrays, config), node_ids,
                           MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook; this strategy aggregates in :meth:`start`, which may need more
        exchanges with the same nodes than Flower's loop has (so it is not called)."""
        raise RuntimeError("CompressedFedAvg aggregates in start(): a codec may need more "
                                  "than one exchange per round")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """No client-side evaluation: the server evaluates the global model (``evaluate_fn``)."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """No client-side evaluation."""
        return None

    # ------------------------------------------------------------------ one round
    def train_round(self, grid: Grid, server_round: int, state: dict[str, torch.Tensor],
                    timeout: float, train_config: ConfigRecord) -> tuple[list[ClientReply], Tally]:
        """Run the round's exchanges; return the decoded replies that pass every check (not yet bounded)."""
        tally = Tally()
        messages = list(self.configure_train(server_round, ArrayRecord(state), ConfigRecord(dict(train_config)),
                                             grid))
        replies = collect(grid.send_and_receive(messages, timeout=timeout), "train", len(messages), tally)
        accepted = self.exchange.first(server_round, replies, tally)
        return self.exchange.later(grid, server_round, accepted, timeout, tally), tally

    def settle(self, server_round: int, replies: list[ClientReply], state: dict[str, torch.Tensor],
               tally: Tally) -> tuple[list[ClientReply], dict[str, torch.Tensor], int]:
        """Intercept, bound, end the codec's round and aggregate: ``(used replies, new state, clipped)``."""
        self.interceptor(server_round, replies, state)
        replies, refused, clipped = bound_norms(self.bound, server_round, replies, state)
        tally.rejected += refused
        if replies and not self.server.end_round([r.payload for r in replies], [r.weight for r in replies],
                                                 [r.scale for r in replies]):
            log(WARNING, "round %d: the codec's end of round is not finite: %d replies rejected, its state "
                "stays as it was", server_round, len(replies))
            tally.rejected += len(replies)
            replies = []
        if len(replies) < self.cfg.min_clients:
            log(WARNING, "round %d: only %d usable replies (min-clients=%d): global model unchanged",
                server_round, len(replies), self.cfg.min_clients)
            return replies, state, clipped
        try:
            state = aggregate(state, replies, self.step)
        except RejectedReply as err:
            log(WARNING, "round %d: the mean update is unusable (%s): its %d replies rejected, "
                "global model unchanged", server_round, err, len(replies))
            tally.rejected += len(replies)
            return [], state, clipped
        self.partitions_seen |= {r.partition_id for r in replies}
        self.trained_indices += [r.batch_indices for r in replies if r.batch_indices is not None]
        return replies, state, clipped

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        """Save the global model and the strategy's state after ``server_round``."""
        Checkpoint(round=server_round, global_state=state, codec_state=self.server.state_dict(),
                   trained_indices=self.trained_indices, partitions_seen=self.partitions_seen,
                   num_partitions=self.checker.num_partitions, attack_errors=self.interceptor.errors,
                   dp_rounds=self.ledger.rounds_of if self.ledger else {}).save(self.run_folder.checkpoint)

    def restore(self, path: Path) -> tuple[int, dict[str, torch.Tensor]]:
        """Load a checkpoint; return the first round still to run and the global state.

        What the run folder holds of later rounds (rows of every CSV, intercepted updates,
        rows of the final model) was written after this checkpoint and is dropped, so
        that the resumed rounds write it once.
        """
        ckpt = Checkpoint.load(path)
        self.server.load_state_dict(ckpt.codec_state)
        self.trained_indices = ckpt.trained_indices
        self.partitions_seen = ckpt.partitions_seen
        self.checker.num_partitions = ckpt.num_partitions
        self.interceptor.errors = ckpt.attack_errors
        if self.ledger is not None:
            self.ledger.rounds_of = dict(ckpt.dp_rounds)
        dropped = self.run_folder.discard_after(ckpt.round)
        if any(dropped.values()):
            log(INFO, "resume: dropped rows written after round %d's checkpoint: %s", ckpt.round,
                ", ".join(f"{n} from {f}" for f, n in dropped.items() if n))
        return ckpt.round + 1, ckpt.global_state

    # ------------------------------------------------------------------ loop
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> Result:
        """Run rounds 1..``num_rounds`` (from the checkpoint's next one when resuming).

        ``train_config`` is sent to the clients with each round (``server-round`` added);
        ``evaluate_fn(round, arrays)`` evaluates the global model after each round and
        should return ``test_loss`` and ``test_accuracy``; ``evaluate_config`` must be
        empty (no client-side evaluation). Each finished round is written to
        ``rounds.csv`` and the checkpoint at once.
        """
        if evaluate_config:
            raise ValueError("CompressedFedAvg does not evaluate on clients: evaluate_config must be empty")
        log(INFO, "Starting %s for %d rounds", self.__class__.__name__, num_rounds)
        self.summary()
        result = Result()
        state = initial_arrays.to_torch_state_dict()
        names = {n for n, _ in self.layout}
        self.checker.buffer_shapes = {k: tuple(v.shape) for k, v in state.items()
                                      if k not in names and v.dtype.is_floating_point}
        first = 1
        if self.resume_from is not None:
            first, state = self.restore(self.resume_from)
            log(INFO, "resuming after round %d from %s", first - 1, self.resume_from)
        for server_round in range(first, num_rounds + 1):
            state, row = self._round(grid, server_round, num_rounds, state, timeout,
                                     train_config or ConfigRecord(), evaluate_fn)
            result.train_metrics_clientapp[server_round] = MetricRecord(
                {k: float(v) for k, v in asdict(row).items() if k != "round" and v is not None})
        result.arrays = ArrayRecord(state)
        return result

    def _round(self, grid: Grid, server_round: int, num_rounds: int, state: dict[str, torch.Tensor],
               timeout: float, train_config: ConfigRecord, evaluate_fn: EvaluateFn | None
               ) -> tuple[dict[str, torch.Tensor], RoundRow]:
        t0 = time.perf_counter()
        log(INFO, "")
        log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
        replies, tally = self.train_round(grid, server_round, state, timeout, train_config)
        # every client whose noised update arrived spent a round of privacy, used or not
        epsilon = self.ledger.spend(r.partition_id for r in replies) if self.ledger else None
        used, state, clipped = self.settle(server_round, replies, state, tally)
        metrics = evaluate_fn(server_round, ArrayRecord(state)) if evaluate_fn else None
        metrics = metrics or {}
        row = RoundRow(
            round=server_round, test_accuracy=round(float(metrics.get("test_accuracy", float("nan"))), 6),
            test_loss=round(float(metrics.get("test_loss", float("nan"))), 6),
            train_loss=round(float(np.mean([r.metrics["train-loss"] for r in used])) if used else float("nan"), 6),
            clients=len(used), rejected=tally.rejected, failed=tally.failed,
            uplink_bytes=int(sum(r.metrics["uplink-bytes"] for r in used)),
            dense_bytes=int(sum(r.metrics["dense-bytes"] for r in used)),
            buffer_bytes=int(sum(r.metrics["buffer-bytes"] for r in used)),
            seconds=round(time.perf_counter() - t0, 3), clipped=clipped,
            epsilon=None if epsilon is None else round(epsilon, 4))
        self.run_folder.append_round(row)
        log(INFO, "round %d/%d: test_accuracy=%.4f test_loss=%.4f clients=%d rejected=%d failed=%d clipped=%d "
            "uplink=%d B (dense %d B) in %.1fs", server_round, num_rounds, row.test_accuracy, row.test_loss,
            row.clients, row.rejected, row.failed, row.clipped, row.uplink_bytes, row.dense_bytes, row.seconds)
        self.checkpoint(server_round, state)
        return state, row
