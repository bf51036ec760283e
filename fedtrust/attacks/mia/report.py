"""Membership inference in a run: update attacks on intercepted clients, black-box attacks at the end.

:class:`MIAReport` is registered by the ServerApp when ``mia = true``:

* called with each intercepted update, it runs the update attacks
  (:func:`run_update_mia`): members are the client's batch, non-members held-out
  test samples;
* :meth:`MIAReport.finish` runs the black-box attacks (:func:`run_blackbox_mia`) on
  the final global model: members are the train samples the clients trained on
  (FedSGD: the batches they drew; FedAvg: their partitions), non-members held-out
  test samples no client ever saw; with ``reference`` also LiRA and RMIA
  (:func:`~fedtrust.attacks.mia.reference_run.run_reference_mia`) on the same candidates.

Results go to ``mia.csv``, one :class:`~fedtrust.records.MIARow` per attack and scope
(attack, scope, accuracy, auc, tpr_at_1pct_fpr, tpr_at_0_1pct_fpr, members, nonmembers,
compressor, level, round, client, seed; ``client`` is the attacked partition of an update
attack and empty for the final model) with ROC figures ``mia_roc.png`` and
``mia_update_roc_round{R}_client{P}.png``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedtrust.attacks.mia.blackbox import run_blackbox_mia
from fedtrust.attacks.mia.reference import ReferenceSpec
from fedtrust.attacks.mia.reference_run import run_reference_mia
from fedtrust.attacks.mia.result import MIAResult, plot_results_roc
from fedtrust.attacks.mia.sampling import MembershipSplit, draw_membership_split
from fedtrust.attacks.mia.update_attack import run_update_mia
from fedtrust.compression.spec import CompressorSpec
from fedtrust.interception import InterceptedUpdate
from fedtrust.records import MIA_CSV, MIARow, append_rows, compressor_cells

log = logging.getLogger(__name__)


@dataclass
class MIAReport:
    """Interception callback and end-of-run hook that write ``mia.csv`` and ROC figures.

    Parameters
    ----------
    folder, model_fn:
        The run folder, and a builder of fresh models of the run's architecture.
    train_x, train_y, test_x, test_y:
        Normalised train and test tensors (members are drawn from train, non-members from test).
    num_classes:
        Classes of the data set.
    compressor:
        The run's compressor (its name and level are recorded in each row).
    step:
        The server's step size (``server-lr * lr`` for FedSGD), for the loss-drop update attack.
    max_per_side:
        At most this many members and non-members in the black-box attacks.
    update_nonmembers:
        Held-out candidates per update attack.
    seed:
        The run's seed: of the candidates' draws (recorded in each row).
    device, progress:
        Where the attacks run (``None``: where the model is) and whether to show progress bars.
    reference, reference_cache:
        How LiRA's and RMIA's reference models are trained (its ``pool_id`` is completed with
        the candidates drawn) and where they are cached; ``None``: no LiRA, no RMIA.
    """

    folder: Path
    model_fn: Callable[[], nn.Module]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    compressor: CompressorSpec
    step: float
    seed: int = 0
    max_per_side: int | None = 1000
    update_nonmembers: int = 200
    device: torch.device | None = None
    progress: bool = True
    reference: ReferenceSpec | None = None
    reference_cache: Path | None = None
    rows: list[MIARow] = field(default_factory=list)

    @property
    def csv_path(self) -> Path:
        return Path(self.folder) / MIA_CSV

    def _record(self, results: Iterable[MIAResult], server_round: int, client: int | None) -> None:
        cells = compressor_cells(self.compressor)
        rows = [MIARow.of(r, **cells, round=server_round, client=client, seed=self.seed) for r in results]
        append_rows(self.csv_path, rows)
        self.rows += rows

    def __call__(self, item: InterceptedUpdate) -> list[MIAResult]:
        """Update attacks on one intercepted client update."""
        if item.batch_indices is None:
            return []  # FedAvg updates hold no single batch to test against
        if len(item.batch_indices) < 2:
            log.info("update MIA skipped for round %d client %d: its batch holds %d sample(s), "
                     "the attack needs at least 2 members", item.round, item.partition_id,
                     len(item.batch_indices))
            return []
        idx = torch.as_tensor(np.asarray(item.batch_indices, dtype=np.int64))
        gen = torch.Generator().manual_seed(self.seed * 7919 + item.round * 101 + item.partition_id)
        non = torch.randperm(len(self.test_x), generator=gen)[:self.update_nonmembers]
        model = self.model_fn()
        model.load_state_dict(item.global_state)
        results = run_update_mia(model, item.payload, item.decoded, item.compressor, item.public_state,
                                 self.train_x[idx], self.train_y[idx], self.test_x[non], self.test_y[non],
                                 step=self.step, seed=self.seed, device=self.device, progress=self.progress,
                                 batch_size=int(item.train_config.get("batch-size", len(idx))))
        self._record(results, item.round, item.partition_id)
        plot_results_roc(results, Path(self.folder) / f"mia_update_roc_round{item.round}_client{item.partition_id}.png",
                         title=f"Update MIA, round {item.round}, client {item.partition_id}")
        return results

    def finish(self, state: dict[str, torch.Tensor], member_indices: np.ndarray, server_round: int,
               clients: int = 1) -> list[MIAResult]:
        """Black-box attacks on the final global model (``clients``: the partitions that trained
        it, as many as the reference models' FedAvg deals their data into)."""
        model = self.model_fn()
        model.load_state_dict(state)
        idx = torch.as_tensor(np.unique(np.asarray(member_indices, dtype=np.int64)))
        split = draw_membership_split(len(idx), len(self.test_x), seed=self.seed, max_per_side=self.max_per_side)
        results = run_blackbox_mia(model, self.train_x[idx], self.train_y[idx], self.test_x, self.test_y,
                                   num_classes=self.num_classes, seed=self.seed, device=self.device,
                                   progress=self.progress, split=split)
        self._record(results, server_round, None)
        if self.reference is not None:
            reference = self._reference_attacks(model, idx, split, max(int(clients), 1))
            self._record(reference, server_round, None)
            results = results + reference
        plot_results_roc(results, Path(self.folder) / "mia_roc.png",
                         title=f"Black-box MIA on the final model ({len(idx)} member candidates)")
        return results

    def _reference_attacks(self, model: nn.Module, member_idx: torch.Tensor, split: MembershipSplit,
                           clients: int) -> list[MIAResult]:
        """LiRA and RMIA on the black-box attacks' candidates (``split``), with the test samples
        that are not candidates as RMIA's population."""
        mem = member_idx[torch.as_tensor(split.members)]
        non = torch.as_tensor(split.nonmembers)
        population = torch.as_tensor(np.setdiff1d(np.arange(len(self.test_x)), split.nonmembers))
        if len(population) == 0:
            log.warning("LiRA/RMIA skipped: every test sample is a candidate, none is left as population")
            return []
        digest = hashlib.sha256(np.r_[mem.numpy(), -1, non.numpy()].astype(np.int64).tobytes()).hexdigest()[:12]
        spec = replace(self.reference, pool_id=f"{self.reference.pool_id}:{digest}", clients=clients)
        cache = self.reference_cache or Path(self.folder) / "reference-models"

        def progress(i: int, n: int) -> None:
            log.info("reference model %d/%d ready", i, n)

        results, refs = run_reference_mia(model, torch.cat([self.train_x[mem], self.test_x[non]]),
                                          torch.cat([self.train_y[mem], self.test_y[non]]), split.is_member,
                                          self.test_x[population], self.test_y[population], spec, cache,
                                          evaluate=split.evaluation, seed=self.seed, device=self.device,
                                          progress=progress)
        log.info("LiRA/RMIA: %d reference model(s) trained, %d reused from %s", refs.trained, refs.reused,
                 refs.folder)
        return results
