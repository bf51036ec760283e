"""Attack the intercepted updates of an earlier run again, offline, with other settings.

Usage::

    python -m fedtrust.attacks.gradinv.replay RUN_FOLDER [--attacker both] [--iterations 2000]
        [--restarts 1] [--tv-weight 1e-4] [--labels given|infer] [--rounds 1] [--clients 0,1]
        [--model-mode train|eval] [--device auto] [--out FOLDER]

It reads ``RUN_FOLDER/config.json`` (model, dataset, data folder) and the saved
``RUN_FOLDER/intercepted/*.pt`` files, and writes ``gradinv.csv``, the PNGs and
``gradinv_grid.png`` into ``--out`` (default ``RUN_FOLDER/replay-<time>``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedtrust.attacks.gradinv.config import GradInvConfig
from fedtrust.attacks.gradinv.report import GradInvReport
from fedtrust.data import load_dataset
from fedtrust.interception import InterceptedUpdate
from fedtrust.models import get_model
from fedtrust.training import select_device


def _ints(text: str | None) -> set[int] | None:
    return None if text in (None, "", "all") else {int(t) for t in text.split(",")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedtrust.attacks.gradinv.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("--attacker", choices=("naive", "adaptive", "both"), default="both")
    parser.add_argument("--iterations", type=int, default=None, help="default: the run's attack-iterations")
    parser.add_argument("--restarts", type=int, default=None)
    parser.add_argument("--tv-weight", type=float, default=None)
    parser.add_argument("--labels", choices=("given", "infer"), default=None)
    parser.add_argument("--model-mode", choices=("train", "eval"), default="train")
    parser.add_argument("--rounds", default="all", help="'all' or comma-separated rounds")
    parser.add_argument("--clients", default="all", help="'all' or comma-separated partition ids")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    config_path = args.run_folder / "config.json"
    if not config_path.is_file():
        parser.error(f"{config_path} not found: give a run folder written by the fedtrust ServerApp")
    run = json.loads(config_path.read_text())["config"]
    files = sorted((args.run_folder / "intercepted").glob("round*_client*.pt"))
    if not files:
        parser.error(f"no intercepted updates in {args.run_folder / 'intercepted'}")
    settings = {"iterations": int(run.get("attack-iterations", 24000)), "restarts": int(run.get("attack-restarts", 1)),
                "tv_weight": float(run.get("tv-weight", 1e-4)), "seed": int(run.get("seed", 0)),
                "label_strategy": run.get("attack-labels", "given"), "model_mode": args.model_mode}
    for key, value in (("iterations", args.iterations), ("restarts", args.restarts),
                       ("tv_weight", args.tv_weight), ("label_strategy", args.labels)):
        if value is not None:
            settings[key] = value
    config = GradInvConfig.from_dict(settings)

    train = load_dataset(run["dataset"], "train", data_dir=run.get("data-dir") or None)
    out = args.out or args.run_folder / f"replay-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps({"run_folder": str(args.run_folder), "attack": config.to_dict(),
                                                 "attacker": args.attacker, "argv": sys.argv}, indent=2) + "\n")
    report = GradInvReport(
        folder=out, spec=train.spec, train_images=train.images, train_labels=train.labels,
        model_fn=lambda: get_model(run["model"], num_classes=train.spec.num_classes, in_channels=train.spec.channels),
        config=config, attackers=("naive", "adaptive") if args.attacker == "both" else (args.attacker,),
        rounds=_ints(args.rounds), clients=_ints(args.clients), device=select_device(args.device),
        progress=not args.no_progress)
    attacked = 0
    for path in files:
        item = InterceptedUpdate.load(path)
        if report.wants(item) and item.batch_indices is not None:
            print(f"attacking {path.name} ({item.compressor.get('compressor')} level {item.compressor.get('level')})",
                  flush=True)
            report(item)
            attacked += 1
    if not attacked:
        parser.error("none of the intercepted updates matched --rounds/--clients (or they hold no FedSGD batch)")
    grid = report.write_grid()
    print(f"wrote {report.csv_path} and {grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
