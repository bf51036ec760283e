"""How long a profile's sweep takes on this machine, estimated from timings measured here.

Runs nothing of the sweep. It times, on ``--device``, the three kinds of work a cell
does with the profile's model and each dataset's image shape:

* one iteration of the gradient-inversion attack on as many reconstructions at once as
  a ``gradinv`` cell runs (clients x objectives x restarts; the adaptive attacker runs two
  objectives on a compressed update), batched and one by one on a
  CPU (the faster counts, as ``batched="auto"`` picks it), batched on CUDA;
* one training step (forward, backward, SGD) on a batch of ``batch-size`` images, which
  ``mia`` cells repeat for every batch of every client in every round;
* one single-sample gradient, which the update attacks of ``update`` cells compute for
  every candidate of every intercepted client;

then multiplies by the work the profile's cells do (iterations, rounds, the train split's
size, candidates) and prints the estimate per cell kind and in total. A cell's start-up
cost (SuperLink, simulation, data loading, evaluation) is added when ``--overhead-from``
names a sweep folder whose ``cells.jsonl`` has records: the shortest cell time there
bounds it from above.

Usage::

    python -m experiments.estimate --profile paper                   # on the CPU
    python -m experiments.estimate --profile paper --device cuda --overhead-from results/smoke
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn import functional as F

from experiments.profiles import PROFILES, Profile
from experiments.store import STORE_NAME, read_records
from fedtrust.training import select_device

#: Train-split sizes of the public datasets (the number of images clients train on per epoch).
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000, "fashion-mnist": 60_000, "sample": 3_000}


@dataclass(frozen=True)
class Timings:
    """Seconds measured on one device for one dataset's shape."""

    attack_iteration: float  # one iteration of all of a gradinv cell's reconstructions together
    train_step: float  # one step on a batch of batch-size images
    sample_gradient: float  # one single-sample gradient


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, spec, device: torch.device) -> torch.nn.Module:
    from fedtrust.models import get_model

    return get_model(name, num_classes=spec.num_classes, in_channels=spec.channels).to(device)


def _best_seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``work``, after one untimed warm-up call."""
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def time_attack_iteration(profile: Profile, spec, device: torch.device, repeats: int) -> float:
    """Seconds of one attack iteration on all of a gradinv cell's reconstructions together
    (the faster of batched and one by one on a CPU, as ``batched="auto"`` picks)."""
    from fedtrust.attacks.gradinv import GradInvConfig, Problem, reconstruct_batch
    from fedtrust.attacks.gradinv.targets import build_views
    from fedtrust.config import parse_run_config
    from fedtrust.training import model_layout

    g = dict(profile.kinds["gradinv"].run_config)
    shape = (spec.channels, spec.image_size, spec.image_size)
    model = _model(str(g["model"]), spec, "cpu")
    model.eval()
    # the adaptive attacker optimises its own objective and the naive one (GradInvConfig.naive_start)
    starts = sum(2 if a == "adaptive" else 1 for a in parse_run_config(g).attackers())
    count = profile.kinds["gradinv"].num_supernodes * starts
    problems = []
    for i in range(count):
        x, y = torch.rand(1, *shape), torch.tensor([i % spec.num_classes])
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        update = {n: gr for (n, _), gr in zip(model.named_parameters(), grads)}
        problems.append(Problem(tuple(build_views("naive", model_layout(model), decoded=update)), y))
    per_iteration = []
    for batched in ((True,) if device.type == "cuda" else (False, True)):  # what batched="auto" chooses from
        config = GradInvConfig(iterations=1, restarts=int(g.get("attack-restarts", 1)),
                               tv_weight=float(g.get("tv-weight", 1e-4)), batched=batched)
        reconstruct_batch(model, problems, config=config, dataset=spec, device=device, progress=False)  # warm-up
        _sync(device)
        start = time.perf_counter()
        reconstruct_batch(model, problems, config=replace(config, iterations=repeats), dataset=spec, device=device,
                          progress=False)
        _sync(device)
        per_iteration.append((time.perf_counter() - start) / repeats)
    return min(per_iteration)


def time_training(profile: Profile, spec, device: torch.device, repeats: int) -> tuple[float, float]:
    """Seconds of one training step on a batch of the mia cells' ``batch-size`` images, and of
    one single-sample gradient."""
    m = dict(profile.kinds["mia"].run_config)
    batch = int(m.get("batch-size", 32))
    shape = (spec.channels, spec.image_size, spec.image_size)
    model = _model(str(m["model"]), spec, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    model.train()
    train_step = _best_seconds(step, device, repeats)
    model.eval()
    sample = _best_seconds(lambda: torch.autograd.grad(F.cross_entropy(model(x[:1]), y[:1]),
                                                        list(model.parameters())), device, repeats)
    return train_step, sample


def measure(profile: Profile, dataset: str, device: torch.device, repeats: int) -> Timings:
    """Time the three kinds of work for ``dataset`` with the profile's settings on ``device``.

    Models and inputs are drawn from torch's global generator: seed it at the entry point.
    """
    from fedtrust.data import get_spec

    spec = get_spec(dataset)
    attack_iteration = time_attack_iteration(profile, spec, device, repeats)
    train_step, sample_gradient = time_training(profile, spec, device, repeats)
    return Timings(attack_iteration=attack_iteration, train_step=train_step, sample_gradient=sample_gradient)


def cell_seconds(profile: Profile, dataset: str, t: Timings) -> dict[str, float]:
    """Estimated compute seconds of one cell of each kind for ``dataset``."""
    g = profile.kinds["gradinv"].run_config
    m = profile.kinds["mia"].run_config
    u = profile.kinds["update"]
    size = TRAIN_SIZES.get(dataset)
    if size is None:
        raise ValueError(f"no train-split size known for {dataset!r}; known: {', '.join(TRAIN_SIZES)}")
    steps = int(m["num-server-rounds"]) * int(m.get("local-epochs", 1)) * math.ceil(size / int(m["batch-size"]))
    return {
        "gradinv": int(g["attack-iterations"]) * t.attack_iteration,
        "mia": steps * t.train_step,
        "update": u.num_supernodes * int(u.run_config["mia-samples"]) * t.sample_gradient,
    }


def overhead_from(folder: Path | None) -> float | None:
    """The shortest recorded cell time in a sweep folder (an upper bound on a cell's start-up cost)."""
    if folder is None:
        return None
    seconds = [float(r.seconds) for r in read_records(Path(folder) / STORE_NAME) if r.ok and r.seconds]
    if not seconds:
        raise ValueError(f"{folder}/cells.jsonl has no finished cell to take a start-up time from")
    return min(seconds)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES))
    parser.add_argument("--datasets", default=None, help="comma list (default: the profile's)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: 2 on CPU, 20 on CUDA)")
    parser.add_argument("--overhead-from", type=Path, default=None, metavar="SWEEP_FOLDER",
                        help="add the shortest cell time recorded there to every cell")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    profile = PROFILES[args.profile]
    device = select_device(args.device)
    repeats = args.repeats or (2 if device.type == "cpu" else 20)
    datasets = [d.strip() for d in args.datasets.split(",")] if args.datasets else list(profile.datasets)
    overhead = overhead_from(args.overhead_from)
    cells = len(profile.algorithms)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"estimate for profile {profile.name} on {device} ({name}); {cells} algorithms per dataset; "
          f"per-cell start-up {'not added' if overhead is None else f'{overhead:.0f} s added'}")
    print(f"{'dataset':14s} {'attack it (s)':>13s} {'train step (s)':>14s} {'sample grad (s)':>15s} "
          f"{'gradinv cells':>13s} {'mia cells':>10s} {'update cells':>12s}")
    total = {"gradinv": 0.0, "mia": 0.0, "update": 0.0}
    for ds in datasets:
        t = measure(profile, ds, device, repeats)
        per = cell_seconds(profile, ds, t)
        kinds = {k: cells * (v + (overhead or 0.0)) for k, v in per.items()}
        for k, v in kinds.items():
            total[k] += v
        print(f"{ds:14s} {t.attack_iteration:13.4f} {t.train_step:14.4f} {t.sample_gradient:15.4f} "
              f"{_hours(kinds['gradinv']):>13s} {_hours(kinds['mia']):>10s} {_hours(kinds['update']):>12s}", flush=True)
    print(f"total: table1 (gradinv) {_hours(total['gradinv'])}, table2 (mia + update) "
          f"{_hours(total['mia'] + total['update'])}, tradeoff adds nothing after both; "
          f"all {_hours(sum(total.values()))} on one {device.type} worker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
