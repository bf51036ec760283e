"""fedtrust ServerApp (``strategies.server_app:app``).

Validates the run config before the first round, makes the run folder, builds the
initial global model from the run's seed and runs :class:`CompressedFedAvg`.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedtrust.attacks.gradinv import GradInvConfig
from fedtrust.attacks.gradinv.report import GradInvReport
from fedtrust.attacks.mia.reference import ReferenceSpec
from fedtrust.attacks.mia.report import MIAReport
from fedtrust.compression import codec_class, codec_names, get_codec, spec_from_run_config
from fedtrust.config import ConfigError, RunConfig, config_differences, parse_run_config
from fedtrust.data import load_dataset, partition_indices
from fedtrust.models import get_model
from fedtrust.records import RunFolder
from fedtrust.run_report import write_report
from fedtrust.training import evaluate, model_layout, select_device, server_step
from strategies.checkpoint import load_checkpoint
from strategies.compressed_fedavg import CompressedFedAvg

app = ServerApp()


def run_name(cfg: RunConfig, run_id: int) -> str:
    """``<time>-<dataset>-<compressor><level>-<run id>`` unless ``run-name`` is set."""
    if cfg.run_name:
        return cfg.run_name
    dataset = cfg.dataset.split(":")[0]
    algo = codec_class(cfg.compressor).algorithm_key(cfg.level)
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}-{algo}-{run_id}"


def make_evaluate_fn(cfg: RunConfig, model: torch.nn.Module):
    """Central evaluation on the held-out test split (``eval-samples`` of it, 0 = all)."""
    device = select_device(cfg.device)
    test = load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir or None)
    x, y = test.to_tensors()
    if cfg.eval_samples and cfg.eval_samples < len(x):
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.eval_samples]
        x, y = x[keep], y[keep]
    model = model.to(device)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, x, y, batch_size=cfg.eval_batch_size, device=device)
        return MetricRecord({"test_loss": loss, "test_accuracy": accuracy})

    return evaluate_fn


def member_indices(cfg: RunConfig, labels, strategy: CompressedFedAvg):
    """Train samples the clients trained on: FedSGD batches drawn, or FedAvg partitions."""
    import numpy as np

    if cfg.local_mode == "fedsgd":
        return np.unique(np.concatenate(strategy.trained_indices)) if strategy.trained_indices else np.array([], int)
    num = cfg.num_partitions or strategy.num_partitions or (
        max(strategy.partitions_seen) + 1 if strategy.partitions_seen else 1)
    parts = [partition_indices(labels, num, pid, partitioner=cfg.partitioner, alpha=cfg.dirichlet_alpha,
                               seed=cfg.seed) for pid in sorted(strategy.partitions_seen)]
    return np.unique(np.concatenate(parts)) if parts else np.array([], int)


def make_mia_report(cfg: RunConfig, train, folder: RunFolder) -> MIAReport:
    """The membership-inference report of this run (members from train, non-members from test)."""
    test = load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir or None)
    train_x, train_y = train.to_tensors()
    test_x, test_y = test.to_tensors()
    step = server_step(cfg.local_mode, cfg.lr, cfg.server_lr)
    reference = None
    if cfg.mia_reference_models > 0:
        fedavg = cfg.local_mode == "fedavg"
        reference = ReferenceSpec(model=cfg.model, num_classes=train.spec.num_classes, in_channels=train.spec.channels,
                                  count=cfg.mia_reference_models, rounds=cfg.num_server_rounds if fedavg else 1,
                                  local_epochs=cfg.local_epochs if fedavg else fedsgd_reference_epochs(cfg),
                                  batch_size=cfg.batch_size, lr=cfg.lr, pool_id=cfg.dataset, seed=cfg.seed)
    return MIAReport(folder=folder.path, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                     model_fn=lambda: get_model(cfg.model, num_classes=train.spec.num_classes,
                                                in_channels=train.spec.channels),
                     num_classes=train.spec.num_classes, compressor=cfg.compressor_spec(), step=step,
                     seed=cfg.seed, max_per_side=cfg.mia_samples, device=select_device(cfg.device),
                     reference=reference, reference_cache=Path(folder.path).parent / "reference-models")


def fedsgd_reference_epochs(cfg: RunConfig) -> int:
    """A FedSGD target's training as epochs of a reference model over its half of the candidates
    (about ``mia-samples`` samples): as many samples as the rounds' steps took
    (``rounds x batch-size``), at least one epoch. (A FedAvg target's reference models run
    FedAvg with its rounds, local epochs and number of clients.)"""
    return max(1, round(cfg.num_server_rounds * cfg.batch_size / max(cfg.mia_samples, 1)))


def check_num_partitions(cfg: RunConfig, num_train: int) -> None:
    """Before round 1: ``num-partitions`` cannot exceed the train split (every client would fail)."""
    if cfg.num_partitions > num_train:
        raise ConfigError(f"num-partitions={cfg.num_partitions} is more than the {num_train} images of "
                          f"dataset={cfg.dataset!r}'s train split; allowed: 0 (one partition per SuperNode) "
                          f"or 1..{num_train}")


def check_resumable(folder: RunFolder, cfg: RunConfig) -> None:
    """Refuse to resume a run folder with a configuration other than its own (``config.json``).

    Keys that cannot change the results (``resume``, ``data-dir``, ``device``,
    ``round-timeout``) may differ; the message lists every other difference.
    """
    stored = folder.read_config()
    differences = config_differences(stored, cfg.as_flat_dict())
    if differences:
        raise ConfigError(f"resume=true: {folder.path} was run with another configuration; a resumed run must "
                          f"use the same settings (start a new run for new ones). Differences (stored -> now): "
                          + "; ".join(differences))


def check_codec_fits(cfg: RunConfig, layout) -> None:
    """Before round 1: the codec accepts this model (e.g. a level at which some tensor is compressed),
    and, with ``observe = "aggregate"``, works with secure aggregation."""
    try:
        codec = get_codec(cfg.compressor_spec(), layout)
        codec.compressor()
    except ValueError as err:
        raise ConfigError(f"compressor={cfg.compressor!r} level={cfg.level} does not fit "
                          f"model={cfg.model!r}: {err}") from None
    if cfg.observe == "aggregate" and not codec.summable:
        raise ConfigError(f"observe='aggregate' needs a compressor that works with secure aggregation (the mean "
                          f"of what clients send is the mean update); compressor={cfg.compressor!r} with these "
                          f"options is not; allowed: {', '.join(summable_choices(cfg, layout))}")


def summable_choices(cfg: RunConfig, layout) -> list[str]:
    """The compressors (with the option value that makes them so, if one does) that work with
    secure aggregation for this run, as the codecs say."""
    out = []
    for name in codec_names():
        variants = [{}] + [{o.key: v} for o in codec_class(name).options for v in o.allowed]
        for extra in variants:
            spec = spec_from_run_config({**cfg.as_flat_dict(), "compressor": name, **extra})
            if get_codec(spec, layout).summable:
                out.append(name + "".join(f" ({k}={v!r})" for k, v in extra.items()))
                break
    return out


def check_dp_fits(cfg: RunConfig, model: torch.nn.Module) -> None:
    """Before round 1: client-level DP covers the update, not BatchNorm's running statistics,
    which clients send beside it; refuse the pair rather than report a guarantee that is not one."""
    if cfg.client_dp() is not None and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                           for m in model.modules()):
        raise ConfigError(f"dp-clip={cfg.dp_clip}: model={cfg.model!r} has BatchNorm, whose running statistics "
                          "clients send outside the privatized update; use a model without BatchNorm "
                          "(model='convnet') for client-level DP")


def privacy_record(cfg: RunConfig) -> dict | None:
    """``config.json``'s ``privacy``: the mechanism and the epsilon a client taking part in every round reaches."""
    dp = cfg.client_dp()
    if dp is None:
        return None
    return {"mechanism": "client-level Gaussian: clip the update's L2 norm, add N(0, (z C)^2) before compression",
            "clip": dp.clip, "noise_multiplier": dp.noise_multiplier, "delta": dp.delta,
            "accountant": "Opacus RDP (opacus.accountants.analysis.rdp), sampling rate 1 per round taken part in",
            "epsilon_all_rounds": dp.epsilon(cfg.num_server_rounds)}


def open_run_folder(cfg: RunConfig, run_id: int, model: torch.nn.Module) -> tuple[RunFolder, Path | None, bool]:
    """The run folder, the checkpoint to resume from (or ``None``), and whether the run is already finished.

    A new run gets a new folder with ``config.json``; ``resume = true`` reopens the folder,
    refuses another configuration, names a damaged checkpoint before anything else, and
    re-raises the stored attack errors of a run that finished with some.
    """
    if not cfg.resume:
        folder = RunFolder.create(cfg.output_dir, run_name(cfg, run_id))
        extra = {"run_id": run_id, "num_parameters": sum(p.numel() for p in model.parameters())}
        privacy = privacy_record(cfg)
        if privacy is not None:
            extra["privacy"] = privacy
        folder.write_config(cfg.as_flat_dict(), extra=extra)
        return folder, None, False
    folder = RunFolder.open(cfg.output_dir, cfg.run_name)
    check_resumable(folder, cfg)
    done = folder.finished()
    if done is not None:
        log(INFO, "fedtrust: %s finished on %s; resuming it does nothing (no file is changed)",
            folder.path, done.get("finished", "?"))
        if done.get("attack_errors"):
            raise RuntimeError(f"run {folder.path} had finished with {len(done['attack_errors'])} failed "
                               "attack(s): " + "; ".join(done["attack_errors"]))
        return folder, None, True
    log(INFO, "fedtrust: resuming %s", folder.path)
    if folder.checkpoint.exists():
        load_checkpoint(folder.checkpoint)  # a truncated checkpoint is named before anything else
        return folder, folder.checkpoint, False
    folder.discard_after(0)
    return folder, None, False


def make_gradinv_report(cfg: RunConfig, train, folder: RunFolder) -> GradInvReport:
    """The gradient-inversion attacker of this run (``attack = "gradinv"``)."""
    return GradInvReport(
        folder=folder.path, spec=train.spec, train_images=train.images, train_labels=train.labels,
        model_fn=lambda: get_model(cfg.model, num_classes=train.spec.num_classes, in_channels=train.spec.channels),
        config=GradInvConfig.from_dict(cfg.gradinv_settings()), attackers=cfg.attackers(),
        rounds={cfg.attack_round}, clients=None if cfg.attacks_every_client else cfg.attacked_partitions(10**9),
        device=select_device(cfg.device))


def finish_reports(cfg: RunConfig, train, strategy: CompressedFedAvg, final_state, report, mia) -> None:
    """The gradient-inversion grid and the final model's membership inference, after the last round."""
    if report is not None:
        grid_png = report.write_grid()
        log(INFO, "gradient inversion: %s, %s", report.csv_path, grid_png)
        missing = report.missing_clients()
        if missing:
            log(WARNING, "gradient inversion: attack-clients %s were never attacked (no such partition, "
                "not sampled, or no usable reply in round %d)", sorted(missing), cfg.attack_round)
    if mia is not None:
        members = member_indices(cfg, train.labels, strategy)
        log(INFO, "membership inference on the final model: %d member candidates", len(members))
        mia.finish(final_state, members, cfg.num_server_rounds,
                   clients=len(strategy.partitions_seen) if cfg.local_mode == "fedavg" else 1)
        log(INFO, "membership inference: %s", mia.csv_path)


def write_run_report(folder: RunFolder) -> Path | None:
    """``report.md`` and ``report.png`` of the finished run; a failure to draw them is logged, not fatal
    (the results are in the run folder's CSVs, and ``python -m fedtrust.run_report`` rebuilds the page)."""
    try:
        return write_report(folder)
    except Exception as err:  # noqa: BLE001 - the run's results are already written
        log(WARNING, "fedtrust report of %s failed (%s: %s); rebuild it with python -m fedtrust.run_report",
            folder.path, type(err).__name__, err)
        return None


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config."""
    cfg = parse_run_config(context.run_config)
    train = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir or None)
    torch.manual_seed(cfg.seed)
    model = get_model(cfg.model, num_classes=train.spec.num_classes, in_channels=train.spec.channels)
    layout = model_layout(model)
    check_codec_fits(cfg, layout)
    check_dp_fits(cfg, model)
    check_num_partitions(cfg, len(train))
    folder, resume_from, finished = open_run_folder(cfg, context.run_id, model)
    if finished:
        return
    log(INFO, "fedtrust run folder: %s", folder.path)
    report = make_gradinv_report(cfg, train, folder) if cfg.attack != "none" else None
    mia = make_mia_report(cfg, train, folder) if cfg.mia else None

    def partition_size(num_partitions: int, partition_id: int) -> int:
        return len(partition_indices(train.labels, num_partitions, partition_id, partitioner=cfg.partitioner,
                                     alpha=cfg.dirichlet_alpha, seed=cfg.seed))

    strategy = CompressedFedAvg(cfg, layout, folder, on_intercept=[a for a in (report, mia) if a is not None],
                                resume_from=resume_from, num_train=len(train), partition_size=partition_size)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=cfg.num_server_rounds, timeout=cfg.round_timeout,
                            evaluate_fn=make_evaluate_fn(cfg, model))
    finish_reports(cfg, train, strategy, result.arrays.to_torch_state_dict(), report, mia)
    page = write_run_report(folder)
    folder.mark_finished(strategy.attack_errors)
    if strategy.attack_errors:
        raise RuntimeError(f"training finished ({folder.path}) but {len(strategy.attack_errors)} attack(s) "
                           "failed: " + "; ".join(strategy.attack_errors))
    log(INFO, "fedtrust run finished: %s", folder.path)
    if page is not None:
        log(INFO, "fedtrust report: %s", page)
