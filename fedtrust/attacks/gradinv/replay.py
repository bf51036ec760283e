"""Attack the intercepted updates of an earlier run again, offline, with other settings.

Usage::

    python -m fedtrust.attacks.gradinv.replay RUN_FOLDER [--attacker both] [--iterations 2000]
        [--restarts 1] [--tv-weight 1e-4] [--labels given|infer] [--rounds 1] [--clients 0,1]
        [--model-mode train|eval] [--device auto] [--out FOLDER]

It reads ``RUN_FOLDER/config.json`` (the run config: model, dataset, data folder and the
attack settings, :meth:`fedtrust.config.RunConfig.gradinv_settings`, that the options
override) and the saved ``RUN_FOLDER/intercepted/*.pt`` files, and writes ``gradinv.csv``,
the PNGs and ``gradinv_grid.png`` into ``--out`` (default ``RUN_FOLDER/replay-<time>``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.attacks.gradinv.report import GradInvReport
from fedtrust.compression.registry import codec_class
from fedtrust.config import ConfigError, RunConfig, parse_run_config
from fedtrust.data import load_dataset
from fedtrust.interception import InterceptedUpdate
from fedtrust.models import get_model
from fedtrust.records import RunFolder
from fedtrust.training import MODEL_MODES, select_device


def _ints(text: str | None) -> set[int] | None:
    return None if text in (None, "", "all") else {int(t) for t in text.split(",")}


def _run_config(parser: argparse.ArgumentParser, folder: Path) -> RunConfig:
    """The run config stored in ``folder/config.json`` (validated as the app validates it)."""
    run = RunFolder(folder)
    if not run.config_json.is_file():
        parser.error(f"{run.config_json} not found: give a run folder written by the fedtrust ServerApp")
    try:
        return parse_run_config(run.read_config(), check_paths=False)
    except ConfigError as err:
        parser.error(f"{run.config_json}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedtrust.attacks.gradinv.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("--attacker", choices=("naive", "adaptive", "both"), default="both")
    parser.add_argument("--iterations", type=int, default=None, help="default: the run's attack-iterations")
    parser.add_argument("--restarts", type=int, default=None)
    parser.add_argument("--tv-weight", type=float, default=None)
    parser.add_argument("--labels", choices=("given", "infer"), default=None)
    parser.add_argument("--model-mode", choices=MODEL_MODES, default=None,
                        help="default: the run's client-model-mode (the mode of its clients' FedSGD gradient)")
    parser.add_argument("--rounds", default="all", help="'all' or comma-separated rounds")
    parser.add_argument("--clients", default="all", help="'all' or comma-separated partition ids")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    run = _run_config(parser, args.run_folder)
    files = sorted((args.run_folder / "intercepted").glob("round*_client*.pt"))
    if not files:
        parser.error(f"no intercepted updates in {args.run_folder / 'intercepted'}")
    overrides = {"iterations": args.iterations, "restarts": args.restarts, "tv_weight": args.tv_weight,
                 "label_strategy": args.labels, "model_mode": args.model_mode}
    config = GradInvConfig.from_dict(run.gradinv_settings()).replace(
        **{k: v for k, v in overrides.items() if v is not None})

    train = load_dataset(run.dataset, "train", data_dir=run.data_dir or None)
    out = args.out or args.run_folder / f"replay-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps({"run_folder": str(args.run_folder), "attack": config.to_dict(),
                                                 "attacker": args.attacker, "argv": sys.argv}, indent=2) + "\n")
    report = GradInvReport(
        folder=out, spec=train.spec, train_images=train.images, train_labels=train.labels,
        model_fn=lambda: get_model(run.model, num_classes=train.spec.num_classes, in_channels=train.spec.channels),
        config=config, attackers=("naive", "adaptive") if args.attacker == "both" else (args.attacker,),
        rounds=_ints(args.rounds), clients=_ints(args.clients), device=select_device(args.device),
        progress=not args.no_progress)
    attacked = 0
    for path in files:
        item = InterceptedUpdate.load(path)
        if report.wants(item) and item.batch_indices is not None:
            print(f"attacking {path.name} ({codec_class(item.spec.name).label(item.spec.level)})", flush=True)
            report(item)
            attacked += 1
    if not attacked:
        parser.error("none of the intercepted updates matched --rounds/--clients (or they hold no FedSGD batch)")
    grid = report.write_grid()
    print(f"wrote {report.csv_path} and {grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
