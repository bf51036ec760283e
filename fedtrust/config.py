"""The run configuration: every key of ``[tool.flwr.app.config]``, typed and validated.

Flower hands the ServerApp and the ClientApp a flat ``dict`` of TOML values. The
:class:`RunConfig` dataclass names each key, its type, its default and what it
allows; :func:`parse_run_config` checks every key before the first round and
raises :class:`ConfigError` naming the key, the value and what is allowed.
This module imports no Flower.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrust.data.partition import PARTITIONER_NAMES as PARTITIONERS
from fedtrust.data.specs import BUILTIN_DATASETS
from fedtrust.data.specs import DATASET_NAMES as DATASETS
from fedtrust.models import MODEL_NAMES

COMPRESSORS = ("none", "powersgd", "topk")
LOCAL_MODES = ("fedsgd", "fedavg")
POWERSGD_MODES = ("allreduce", "local")
TOPK_SCOPES = ("global", "layer")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
ATTACKS = ("none", "gradinv")
ATTACKERS = ("naive", "adaptive", "both")
ATTACK_LABELS = ("given", "infer")
MAX_NORM_ACTIONS = ("refuse", "clip")

#: The largest seed: clients derive per-round seeds as ``seed * 1_000_003 + round * 1009 + partition``,
#: which must stay below 2**63 (torch's generators) for every round and partition.
MAX_SEED = 2**32 - 1
#: The largest value of any other integer key (rounds, sizes, levels, ...).
MAX_INT = 2**31 - 1
#: Keys whose change cannot alter a resumed run's results (``resume`` itself, where the data,
#: the run folder and the server's device are, how long to wait for a reply).
RESUME_FREE_KEYS = ("resume", "data-dir", "output-dir", "device", "round-timeout")


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class RunConfig:
    """The resolved run configuration (field ``foo_bar`` is run-config key ``foo-bar``)."""

    # federation
    num_server_rounds: int = 3
    seed: int = 42
    fraction_train: float = 1.0
    min_clients: int = 2
    # model and data
    model: str = "resnet18"
    dataset: str = "sample"
    data_dir: str = ""
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    num_partitions: int = 0
    eval_samples: int = 0
    eval_batch_size: int = 256
    device: str = "auto"
    # local training
    local_mode: str = "fedsgd"
    batch_size: int = 32
    local_epochs: int = 1
    lr: float = 0.1
    server_lr: float = 1.0
    # compression
    compressor: str = "none"
    level: int = 1
    powersgd_mode: str = "allreduce"
    topk_scope: str = "global"
    error_feedback: bool = True
    # interception and outputs
    intercept_rounds: str = "1"
    intercept_clients: str = "0"
    output_dir: str = "~/fedtrust-runs"
    run_name: str = ""
    resume: bool = False
    round_timeout: float = 600.0
    # robust aggregation (what one client can do to the global model)
    max_norm_ratio: float = 10.0
    max_norm_action: str = "refuse"
    # gradient inversion (issue: the server reconstructs clients' images)
    attack: str = "none"
    attack_round: int = 1
    attack_clients: str = "0"
    attack_images: int = 1
    attacker: str = "both"
    attack_labels: str = "given"
    attack_iterations: int = 24000
    attack_restarts: int = 1
    tv_weight: float = 1e-4
    # membership inference
    mia: bool = False
    mia_samples: int = 1000

    # ------------------------------------------------------------------ helpers
    def compressor_options(self) -> dict[str, Any]:
        """Keyword options for :func:`fedtrust.compression.get_compressor`."""
        opts: dict[str, Any] = {"error_feedback": self.error_feedback}
        if self.compressor == "powersgd":
            opts.update(mode=self.powersgd_mode, seed=self.seed)
        elif self.compressor == "topk":
            opts.update(scope=self.topk_scope)
        return opts

    def compressor_spec(self) -> dict[str, Any]:
        """Compressor name, level and options, as recorded with intercepted updates."""
        return {"compressor": self.compressor, "level": self.level, **self.compressor_options()}

    def intercepted_rounds(self) -> set[int]:
        """Rounds whose updates are intercepted (the attack round included)."""
        rounds = _parse_selection(self.intercept_rounds, "intercept-rounds",
                                  range(1, self.num_server_rounds + 1))
        return rounds | ({self.attack_round} if self.attack != "none" else set())

    def intercepts_client(self, partition_id: int) -> bool:
        """Whether the updates of partition ``partition_id`` are intercepted (attacked ones included).

        Unlike :meth:`intercepted_partitions` this needs no count of clients: an id that no
        client has is simply never matched.
        """
        return (_selects(self.intercept_clients, "intercept-clients", partition_id)
                or self.attacks_client(partition_id))

    def attacks_client(self, partition_id: int) -> bool:
        """Whether partition ``partition_id``'s update of ``attack-round`` is attacked."""
        return self.attack != "none" and _selects(self.attack_clients, "attack-clients", partition_id)

    def intercepted_partitions(self, num_partitions: int) -> set[int]:
        """Partition ids (clients) whose updates are intercepted (the attacked ones included)."""
        chosen = _parse_selection(self.intercept_clients, "intercept-clients", range(num_partitions))
        return chosen | self.attacked_partitions(num_partitions)

    @property
    def attacks_every_client(self) -> bool:
        """Whether ``attack-clients = "all"`` (however many clients the federation has)."""
        return self.attack != "none" and str(self.attack_clients).strip().lower() == "all"

    def attacked_partitions(self, num_partitions: int) -> set[int]:
        """Partition ids whose update of ``attack-round`` is attacked."""
        if self.attack == "none":
            return set()
        return _parse_selection(self.attack_clients, "attack-clients", range(num_partitions))

    def attackers(self) -> tuple[str, ...]:
        """The attackers to run (``both`` = naive and adaptive)."""
        return ("naive", "adaptive") if self.attacker == "both" else (self.attacker,)

    def gradinv_settings(self) -> dict[str, Any]:
        """Settings for :class:`fedtrust.attacks.gradinv.GradInvConfig` from this run config.

        Clients compute their FedSGD gradient with the model in train mode, so the attacker
        differentiates the model in the same mode (BatchNorm on the dummy batch).
        """
        return {"iterations": self.attack_iterations, "restarts": self.attack_restarts,
                "tv_weight": self.tv_weight, "seed": self.seed, "label_strategy": self.attack_labels,
                "model_mode": "train"}

    def as_flat_dict(self) -> dict[str, Any]:
        """The config with run-config key names (hyphens)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


def _parse_selection(text: str, key: str, universe: range) -> set[int]:
    text = str(text).strip().lower()
    if text in ("", "none"):
        return set()
    if text == "all":
        return set(universe)
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: {part!r} is not an integer; allowed: "
                              f"'all', 'none' or comma-separated integers like '1,3'") from None
        if value not in universe:
            raise ConfigError(f"{key}={text!r}: {value} is outside {universe.start}..{universe.stop - 1}")
        out.add(value)
    return out


def _selects(text: str, key: str, value: int) -> bool:
    """Whether a selection (``all``, ``none``, ``"0,2"``) holds ``value``, with no upper bound."""
    if str(text).strip().lower() == "all":
        return value >= 0
    return value in _parse_selection(text, key, range(10**9))


_CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODEL_NAMES,
    "local_mode": LOCAL_MODES,
    "compressor": COMPRESSORS,
    "powersgd_mode": POWERSGD_MODES,
    "topk_scope": TOPK_SCOPES,
    "partitioner": PARTITIONERS,
    "attack": ATTACKS,
    "attacker": ATTACKERS,
    "attack_labels": ATTACK_LABELS,
    "max_norm_action": MAX_NORM_ACTIONS,
}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert a TOML value to the type of the field's default, or raise ConfigError."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}={value!r} must be true or false")
    if kind is int:
        return _coerce_int(key, value)
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return number
    return str(value)


def _coerce_int(key: str, value: Any) -> int:
    """An integer key's value, exactly: ints as they are, integral floats only where exact (|x| <= 2**53)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ConfigError(f"{key}={value!r} must be an integer") from None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise ConfigError(f"{key}={value!r} must be an integer")
        if abs(value) > 2**53:
            raise ConfigError(f"{key}={value!r} is a float too large to be an exact integer; "
                              "write it as an integer (no exponent, no decimal point)")
        return int(value)
    raise ConfigError(f"{key}={value!r} must be an integer")


def _check_range(cfg: RunConfig, check_paths: bool = True) -> None:
    def need(cond: bool, key: str, value: Any, allowed: str) -> None:
        if not cond:
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed}")

    need(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, f"an integer in 0..{MAX_SEED} (2**32 - 1)")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != "seed" and isinstance(value, int) and not isinstance(value, bool):
            need(value <= MAX_INT, f.name.replace("_", "-"), value, f"an integer <= {MAX_INT} (2**31 - 1)")
    need(cfg.num_server_rounds >= 1, "num-server-rounds", cfg.num_server_rounds, "an integer >= 1")
    need(0.0 < cfg.fraction_train <= 1.0, "fraction-train", cfg.fraction_train, "a number in (0, 1]")
    need(cfg.min_clients >= 1, "min-clients", cfg.min_clients, "an integer >= 1")
    need(cfg.dirichlet_alpha > 0, "dirichlet-alpha", cfg.dirichlet_alpha, "a number > 0")
    need(cfg.num_partitions >= 0, "num-partitions", cfg.num_partitions,
         "0 (one partition per SuperNode) or a positive integer")
    need(cfg.eval_samples >= 0, "eval-samples", cfg.eval_samples, "0 (the whole test split) or a positive integer")
    need(cfg.eval_batch_size >= 1, "eval-batch-size", cfg.eval_batch_size, "an integer >= 1")
    need(cfg.batch_size >= 1, "batch-size", cfg.batch_size, "an integer >= 1")
    need(cfg.local_epochs >= 1, "local-epochs", cfg.local_epochs, "an integer >= 1")
    need(cfg.lr > 0, "lr", cfg.lr, "a number > 0")
    need(cfg.server_lr > 0, "server-lr", cfg.server_lr, "a number > 0")
    need(cfg.level >= 1, "level", cfg.level, "an integer >= 1 (PowerSGD rank / Top-K level)")
    need(cfg.round_timeout > 0, "round-timeout", cfg.round_timeout, "a number of seconds > 0")
    need(not cfg.resume or cfg.run_name != "", "resume", cfg.resume,
         "true only together with run-name (the folder under output-dir to continue)")
    need(cfg.output_dir.strip() != "", "output-dir", cfg.output_dir, "a folder path")
    need(cfg.run_name == "" or (cfg.run_name[0].isalnum() and all(c.isalnum() or c in "-_." for c in cfg.run_name)),
         "run-name", cfg.run_name,
         "letters, digits, '-', '_' and '.', starting with a letter or digit (or empty for an automatic name)")
    need(cfg.max_norm_ratio == 0 or cfg.max_norm_ratio >= 1, "max-norm-ratio", cfg.max_norm_ratio,
         "0 (off) or a number >= 1 (a client's update norm may be at most this many times the round's median)")
    dev = cfg.device
    need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
         "device", dev, ", ".join(DEVICES))
    ds = cfg.dataset
    need(ds in BUILTIN_DATASETS or (ds.startswith("folder:") and len(ds) > len("folder:")),
         "dataset", ds, ", ".join(DATASETS))
    if check_paths:
        check_data_paths(cfg.dataset, cfg.data_dir)
    need(1 <= cfg.attack_round <= cfg.num_server_rounds, "attack-round", cfg.attack_round,
         f"a round in 1..{cfg.num_server_rounds} (num-server-rounds)")
    need(cfg.attack_images >= 1, "attack-images", cfg.attack_images, "an integer >= 1")
    need(cfg.attack_iterations >= 1, "attack-iterations", cfg.attack_iterations, "an integer >= 1")
    need(cfg.attack_restarts >= 1, "attack-restarts", cfg.attack_restarts, "an integer >= 1")
    need(cfg.mia_samples >= 2, "mia-samples", cfg.mia_samples, "an integer >= 2")
    need(cfg.tv_weight >= 0, "tv-weight", cfg.tv_weight, "a number >= 0")
    if cfg.attack != "none" and cfg.local_mode == "fedavg":
        raise ConfigError("attack='gradinv' needs local-mode='fedsgd' (the paper's threat model: "
                          "one gradient of one batch); got local-mode='fedavg'")
    cfg.intercepted_rounds()
    _selects(cfg.intercept_clients, "intercept-clients", 0)
    if not cfg.attacks_every_client:
        _parse_selection(cfg.attack_clients, "attack-clients", range(10**9))


def check_data_paths(dataset: str, data_dir: str, where: str = "data-dir") -> None:
    """Check, on the machine that reads the data, that its folders exist.

    ``where`` names the setting ``data_dir`` came from (the run config's ``data-dir`` or a
    SuperNode's ``--node-config data-dir``), for the message.
    """
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(
            f"{where}={data_dir!r} is not a folder on this machine. Give the folder that holds the data "
            "(e.g. <data-dir>/cifar-10-batches-py/), or leave it empty to use the defaults; "
            "see README 'Data'.")
    if dataset.startswith("folder:") and not Path(dataset[len("folder:"):]).expanduser().is_dir():
        raise ConfigError(f"dataset={dataset!r}: {dataset[len('folder:'):]!r} is not a folder on this machine "
                          "(expected an ImageFolder tree: one sub-folder of images per class)")


def config_differences(stored: Mapping[str, Any], new: Mapping[str, Any],
                       ignore: tuple[str, ...] = RESUME_FREE_KEYS) -> list[str]:
    """``key: stored -> new`` for every key (but ``ignore``) whose value differs, for a resume check."""
    out = []
    for key in sorted(set(stored) | set(new)):
        if key in ignore:
            continue
        old, value = stored.get(key, "<absent>"), new.get(key, "<absent>")
        if old != value:
            out.append(f"{key}: {old!r} -> {value!r}")
    return out


def parse_run_config(raw: Mapping[str, Any], check_paths: bool = True) -> RunConfig:
    """Validate Flower's run config and return a :class:`RunConfig`.

    Unknown keys are errors (a typo would otherwise be silently ignored). With
    ``check_paths=False`` the data folders are not checked: a ClientApp checks the folder
    it reads itself (its node's ``data-dir`` wins over the run config's).
    """
    defaults = RunConfig()
    by_key = {f.name.replace("_", "-"): f.name for f in dataclasses.fields(RunConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in by_key:
            close = [k for k in by_key if k.split("-")[0] == key.split("-")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown run-config key {key!r}{hint}; known keys: {', '.join(sorted(by_key))}")
        name = by_key[key]
        coerced = _coerce(key, value, getattr(defaults, name))
        if name in _CHOICES and coerced not in _CHOICES[name]:
            raise ConfigError(f"{key}={coerced!r} is not known; allowed: {', '.join(_CHOICES[name])}")
        values[name] = coerced
    cfg = dataclasses.replace(defaults, **values)
    _check_range(cfg, check_paths=check_paths)
    return cfg
