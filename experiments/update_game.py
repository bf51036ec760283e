"""The update-attack game, stated and varied: where Table 2d's AUC of 1.000 holds and where it falls.

Table 2d scores a server that intercepts ONE client's FedSGD update and asks, for each
candidate sample, "was it in this client's batch?". Its game (the ``paper`` variant
below, the smoke profile's ``update`` cells): an untrained ConvNet, round 1, one
gradient of a batch of 16 images, and as candidates every member of that batch plus 200
held-out test images. Under that game the regression attack
(:mod:`fedtrust.attacks.mia.update_attack`) solves ``T(u) = sum_c alpha_c T(g_c)``
exactly, because the update *is* the mean of the candidates' gradients. Each variant
below breaks one of the assumptions that makes this exact:

``paper``
    The game above.
``part_of_batch``
    Only half the batch members are candidates; the other half is in the update but
    unknown to the attacker (the server does not hold the whole batch).
``own_data``
    Non-members drawn from the client's own shard (train images of that client that
    were not in this batch), not from held-out test data.
``round_3``
    The update of round 3 after two FedSGD rounds of every client: the model has
    moved, and the error-feedback residual of Top-K and PowerSGD carries rounds 1-2's
    batches into the update.
``fedavg``
    A FedAvg update (one local epoch over the client's 64-image shard at batch 16: 4 SGD
    steps, lr 0.1): the update is a sum of gradients at 4 different points, not one mean;
    every shard image is a member candidate.
``batchnorm``
    ResNet-18 (BatchNorm) with the client's gradient in train mode (batch statistics):
    the batch gradient is not the mean of per-sample gradients, which the attack takes in
    eval mode.

Each variant runs for SGD, PowerSGD rank 1 (all-reduce) and Top-K level 1 (global), with
``--clients`` clients (each client's update is one attacked update; 4 by default) and one
seed, on the embedded sample. ``update_game_rows.csv`` has every attack's row per update
(appended as each update is attacked; a rerun skips the updates already there, so an
interrupted run resumes without losing or repeating a row; a folder is tied to its
``--clients`` and ``--seed`` by ``update_game_setting.json``); ``update_game.{csv,md,tex}``
the mean AUC per variant, compressor and attack over the updates with its 95% percentile
bootstrap interval (over updates: it does not cover another seed or model).

Usage::

    python -m experiments.update_game --out docs/update-game [--clients 4] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.tables import latex
from fedtrust.attacks.mia import run_update_mia
from fedtrust.compression import CompressorSpec, get_codec
from fedtrust.compression.rounds import Observed, run_round
from fedtrust.data import load_dataset
from fedtrust.markdown import markdown
from fedtrust.models import get_model
from fedtrust.records import append_rows, read_rows
from fedtrust.stats import bootstrap_mean
from fedtrust.training import apply_update, batch_gradient, fedavg_train, model_layout, weighted_mean

#: Update attacks in table order: column label -> attack name.
ATTACKS = {"cosine": "update_cosine", "cosine (aware)": "update_cosine_aware", "loss drop": "update_loss_drop",
           "regression": "update_regression"}
#: The compressors every variant runs with: (label, spec).
CODECS = (("SGD", CompressorSpec("none", 0, error_feedback=False)), ("PowerSGD r1", CompressorSpec("powersgd", 1)),
          ("Top-K l1", CompressorSpec("topk", 1)))
#: Images per client shard, test non-member candidates, FedSGD learning rate.
SHARD, NONMEMBERS, LR = 64, 200, 0.1


@dataclass(frozen=True)
class Variant:
    """One version of the game (see the module docstring)."""

    name: str
    model: str = "convnet"
    local_mode: str = "fedsgd"
    batch_size: int = 16
    attacked_round: int = 1
    member_share: float = 1.0
    nonmembers: str = "test"


VARIANTS = (Variant("paper"), Variant("part_of_batch", member_share=0.5), Variant("own_data", nonmembers="own"),
            Variant("round_3", attacked_round=3), Variant("fedavg", local_mode="fedavg"),
            Variant("batchnorm", model="resnet18"))


@dataclass(frozen=True)
class GameRow:
    """One attack on one intercepted update (``update_game_rows.csv``)."""

    variant: str
    compressor: str
    client: int
    attack: str
    auc: float
    accuracy: float
    threshold: str
    tpr_at_1pct_fpr: float
    members: int
    nonmembers: int
    seed: int


@dataclass(frozen=True)
class Intercepted:
    """What the server holds of one client's update, and who was in it (for scoring only)."""

    client: int
    state: dict[str, torch.Tensor]
    observed: Observed
    members: np.ndarray
    shard: np.ndarray
    step: float


class Data:
    """The embedded sample as normalised tensors, and each client's shard of the train split."""

    def __init__(self, seed: int, clients: int) -> None:
        train, test = load_dataset("sample", "train"), load_dataset("sample", "test")
        self.train_x, self.train_y = train.to_tensors(np.arange(len(train.labels)))
        self.test_x, self.test_y = test.to_tensors(np.arange(len(test.labels)))
        if clients * SHARD > len(self.train_y):
            raise SystemExit(f"update_game: --clients {clients} needs {clients * SHARD} train images "
                             f"({SHARD} a client); the embedded sample has {len(self.train_y)}")
        order = np.random.default_rng(seed).permutation(len(self.train_y))
        self.shards = [order[c * SHARD:(c + 1) * SHARD] for c in range(clients)]
        self.num_classes, self.channels = int(train.spec.num_classes), int(train.spec.channels)


def _client_update(variant: Variant, model: torch.nn.Module, data: Data, shard: np.ndarray,
                   rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """One client's dense update on ``model`` (modified: FedAvg trains it) and its members."""
    if variant.local_mode == "fedavg":
        x, y = data.train_x[shard], data.train_y[shard]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return fedavg_train(model, x, y, 1, variant.batch_size, LR, generator).update, shard
    batch = rng.choice(shard, size=variant.batch_size, replace=False)
    grads, _ = batch_gradient(model, data.train_x[batch], data.train_y[batch], mode="train")
    return grads, batch


def play(variant: Variant, spec: CompressorSpec, data: Data, seed: int) -> list[Intercepted]:
    """FedSGD or FedAvg rounds of every client up to ``variant.attacked_round``, with the codec's
    state carried; every client's update of the attacked round, as the server holds it."""
    torch.manual_seed(seed)
    model = get_model(variant.model, data.num_classes, data.channels)
    codec = get_codec(spec, model_layout(model))
    server, compressors = codec.server(), [codec.compressor() for _ in data.shards]
    rng = np.random.default_rng(seed + 1)
    step = 1.0 if variant.local_mode == "fedavg" else LR
    for server_round in range(1, variant.attacked_round + 1):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        updates, members = [], []
        for shard in data.shards:
            model.load_state_dict(state)
            update, used = _client_update(variant, model, data, shard, rng)
            updates.append(update)
            members.append(used)
        observed = run_round(codec, updates, server_round=server_round, server=server, compressors=compressors)
        model.load_state_dict(apply_update(state, weighted_mean([o.decoded for o in observed],
                                                                [1.0] * len(observed)), step))
    return [Intercepted(c, state, o, m, s, step)
            for c, (o, m, s) in enumerate(zip(observed, members, data.shards))]


def attack(variant: Variant, spec: CompressorSpec, item: Intercepted, data: Data, seed: int,
           label: str) -> list[GameRow]:
    """The update attacks on one intercepted update, with the variant's candidates."""
    rng = np.random.default_rng(seed * 7919 + item.client)
    members = item.members
    if variant.member_share < 1.0:
        members = rng.choice(members, size=max(2, int(round(variant.member_share * len(members)))), replace=False)
    if variant.nonmembers == "own":
        outside = np.setdiff1d(item.shard, item.members)
        non_x, non_y = data.train_x[outside], data.train_y[outside]
    else:
        take = rng.choice(len(data.test_y), size=NONMEMBERS, replace=False)
        non_x, non_y = data.test_x[take], data.test_y[take]
    model = get_model(variant.model, data.num_classes, data.channels)
    model.load_state_dict(item.state)
    results = run_update_mia(model, item.observed.arrays, item.observed.decoded, spec, item.observed.public_state,
                             data.train_x[members], data.train_y[members], non_x, non_y, step=item.step,
                             seed=seed, progress=False,
                             batch_size=variant.batch_size if variant.local_mode == "fedsgd" else None)
    return [GameRow(variant.name, label, item.client, r.attack, r.auc, r.accuracy, r.threshold, r.tpr_at_1pct_fpr,
                    r.members, r.nonmembers, seed) for r in results]


def units(variants: Sequence[Variant]) -> Iterator[tuple[Variant, str, CompressorSpec]]:
    for variant in variants:
        for label, spec in CODECS:
            yield variant, label, spec


def check_setting(out: Path, clients: int, seed: int) -> None:
    """Record ``--clients`` and ``--seed`` in ``out/update_game_setting.json`` on the first run and
    refuse a later run with others: rows of two settings must not mix in one table (the global
    model of round 3 and of FedAvg depends on every client, the draws on the seed)."""
    path = out / "update_game_setting.json"
    setting = {"clients": clients, "seed": seed}
    if path.exists():
        before = json.loads(path.read_text())
        if before != setting:
            changed = "; ".join(f"{k}: {before.get(k)} -> {v}" for k, v in setting.items() if before.get(k) != v)
            raise SystemExit(f"update_game: {out} holds rows of another setting ({changed}); "
                             f"use another --out or the same --clients and --seed")
    else:
        path.write_text(json.dumps(setting) + "\n")


def run(out: Path, variants: Sequence[Variant], clients: int, seed: int) -> Path:
    """Every variant and compressor not yet in ``update_game_rows.csv``; the rows file."""
    check_setting(out, clients, seed)
    rows_path = out / "update_game_rows.csv"
    done = {(r.variant, r.compressor, r.client) for r in read_rows(rows_path, GameRow)} if rows_path.exists() else set()
    data = Data(seed, clients)
    plan = list(units(variants))
    for i, (variant, label, spec) in enumerate(plan, 1):
        if all((variant.name, label, c) in done for c in range(clients)):
            print(f"[{i}/{len(plan)}] {variant.name} {label}: done before", flush=True)
            continue
        start = time.perf_counter()
        for item in play(variant, spec, data, seed):
            if (variant.name, label, item.client) not in done:
                append_rows(rows_path, attack(variant, spec, item, data, seed, label))
        print(f"[{i}/{len(plan)}] {variant.name} {label}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows_path


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean AUC per variant, compressor and attack over the updates, with its bootstrap interval."""
    def interval(group: pd.DataFrame) -> pd.Series:
        ci = bootstrap_mean(group["auc"].to_numpy(), seed=0)
        return pd.Series({"auc": ci.mean, "auc_low": ci.low, "auc_high": ci.high, "n": len(group),
                          "members": int(group["members"].mean()), "nonmembers": int(group["nonmembers"].mean())})

    order = {"variant": [v.name for v in VARIANTS], "compressor": [c for c, _ in CODECS],
             "attack": list(ATTACKS.values())}
    table = rows.groupby(["variant", "compressor", "attack"], sort=False).apply(interval, include_groups=False)
    table = table.reset_index()
    return table.sort_values(list(order), key=lambda col: col.map({v: i for i, v in enumerate(order[col.name])}),
                             kind="stable").reset_index(drop=True)


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """One row per variant and compressor, a column per attack: ``mean [low, high]``."""
    text = table.assign(value=[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
                               zip(table["auc"], table["auc_low"], table["auc_high"])])
    wide = text.pivot_table(index=["variant", "compressor"], columns="attack", values="value", aggfunc="first",
                            sort=False)
    wide = wide.reindex(columns=list(ATTACKS.values())).rename(columns={v: f"{k} AUC" for k, v in ATTACKS.items()})
    counts = text.groupby(["variant", "compressor"], sort=False)[["members", "nonmembers", "n"]].first().astype(int)
    wide = wide.join(counts).reset_index()
    return wide.rename(columns={"variant": "Game", "compressor": "Compressor", "members": "Members",
                                "nonmembers": "Non-members", "n": "Updates"})


def write(out: Path, rows_path: Path, command: str) -> list[Path]:
    """``update_game.{csv,md,tex}`` from the rows file."""
    rows = pd.DataFrame([vars(r) for r in read_rows(rows_path, GameRow)])
    table = summary(rows)
    frame = shown(table)
    table.to_csv(out / "update_game.csv", index=False, lineterminator="\r\n")
    seed = ", ".join(str(s) for s in sorted(set(rows["seed"])))
    foot = (f"Mean AUC over the attacked client updates (one per client), 95% percentile-bootstrap interval over "
            f"them; seed {seed}; command: `{command}`.")
    (out / "update_game.md").write_text(f"**The update-attack game, varied**\n\n{markdown(frame)}\n\n{foot}\n")
    (out / "update_game.tex").write_text(f"% {foot}\n{latex(frame)}\n")
    return [out / f"update_game.{ext}" for ext in ("csv", "md", "tex")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds rows)")
    parser.add_argument("--clients", type=int, default=4, help="clients, each one attacked update per game")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], default=None,
                        help="the games to play (default: all)")
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error(f"--clients must be >= 1, got {args.clients}")
    variants = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = run(args.out, variants, args.clients, args.seed)
    command = "python -m experiments.update_game " + " ".join(sys.argv[1:] if argv is None else argv)
    for path in write(args.out, rows_path, command):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
