"""The run configuration: every key of ``[tool.flwr.app.config]``, typed and validated.

Flower hands the ServerApp and the ClientApp a flat ``dict`` of TOML values.
:class:`RunConfig` is their typed view (field ``foo_bar`` is key ``foo-bar``). What each
key allows, means and defaults to is not written here but in one table,
:data:`fedtrust.config_keys.CONFIG_KEYS`: :func:`parse_run_config` coerces every key to
the type of its default and checks it against its row (choices, own check, integer
bound), then checks what relates several keys (``attack-round`` within
``num-server-rounds``, ``resume`` with ``run-name``, the attack's local mode, the
interception selections) and the data folders. A wrong value raises
:class:`ConfigError` naming the key, the value and what is allowed. The compressor's
own keys are read by its codec (:meth:`RunConfig.compressor_spec`).
This module imports no Flower.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrust.compression import CompressorSpec, spec_from_run_config
from fedtrust.config_keys import BY_KEY, CONFIG_KEYS, MAX_INT, MAX_SEED, ConfigKey
from fedtrust.privacy import ClientDP

__all__ = ["MAX_INT", "MAX_SEED", "RESUME_FREE_KEYS", "ConfigError", "RunConfig", "check_data_paths",
           "config_differences", "parse_run_config"]

#: Keys whose change cannot alter a resumed run's results (``resume`` itself, where the data,
#: the run folder and the server's device are, how long to wait for a reply).
RESUME_FREE_KEYS = ("resume", "data-dir", "output-dir", "device", "round-timeout")
#: Each field's default, from the table of run-config keys.
_D = {row.field: row.default for row in CONFIG_KEYS}


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class RunConfig:
    """The resolved run configuration (field ``foo_bar`` is run-config key ``foo-bar``)."""

    # federation
    num_server_rounds: int = _D["num_server_rounds"]
    seed: int = _D["seed"]
    fraction_train: float = _D["fraction_train"]
    min_clients: int = _D["min_clients"]
    # model and data
    model: str = _D["model"]
    dataset: str = _D["dataset"]
    data_dir: str = _D["data_dir"]
    partitioner: str = _D["partitioner"]
    dirichlet_alpha: float = _D["dirichlet_alpha"]
    num_partitions: int = _D["num_partitions"]
    eval_samples: int = _D["eval_samples"]
    eval_batch_size: int = _D["eval_batch_size"]
    device: str = _D["device"]
    # local training
    local_mode: str = _D["local_mode"]
    client_model_mode: str = _D["client_model_mode"]
    batch_size: int = _D["batch_size"]
    local_epochs: int = _D["local_epochs"]
    lr: float = _D["lr"]
    server_lr: float = _D["server_lr"]
    # compression
    compressor: str = _D["compressor"]
    level: int = _D["level"]
    powersgd_mode: str = _D["powersgd_mode"]
    topk_scope: str = _D["topk_scope"]
    error_feedback: bool = _D["error_feedback"]
    # interception and outputs
    intercept_rounds: str = _D["intercept_rounds"]
    intercept_clients: str = _D["intercept_clients"]
    observe: str = _D["observe"]
    output_dir: str = _D["output_dir"]
    run_name: str = _D["run_name"]
    resume: bool = _D["resume"]
    round_timeout: float = _D["round_timeout"]
    # robust aggregation (what one client can do to the global model)
    max_norm_ratio: float = _D["max_norm_ratio"]
    max_norm_action: str = _D["max_norm_action"]
    # defences
    dp_clip: float = _D["dp_clip"]
    dp_noise_multiplier: float = _D["dp_noise_multiplier"]
    dp_delta: float = _D["dp_delta"]
    # gradient inversion (issue: the server reconstructs clients' images)
    attack: str = _D["attack"]
    attack_round: int = _D["attack_round"]
    attack_clients: str = _D["attack_clients"]
    attack_images: int = _D["attack_images"]
    attacker: str = _D["attacker"]
    attack_labels: str = _D["attack_labels"]
    attack_iterations: int = _D["attack_iterations"]
    attack_restarts: int = _D["attack_restarts"]
    tv_weight: float = _D["tv_weight"]
    # membership inference
    mia: bool = _D["mia"]
    mia_samples: int = _D["mia_samples"]
    mia_reference_models: int = _D["mia_reference_models"]

    # ------------------------------------------------------------------ helpers
    def client_dp(self) -> ClientDP | None:
        """The clients' differential-privacy mechanism, or ``None`` when ``dp-clip = 0``."""
        if self.dp_clip <= 0:
            return None
        return ClientDP(clip=self.dp_clip, noise_multiplier=self.dp_noise_multiplier, delta=self.dp_delta)

    def compressor_spec(self) -> CompressorSpec:
        """The compressor spec this config selects (the codec reads its own keys)."""
        return spec_from_run_config(self.as_flat_dict())

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

        The attacker differentiates the model in the mode in which the clients computed
        their FedSGD gradient (``client-model-mode``): ``train``, BatchNorm on the dummy
        batch's statistics; ``eval``, on the global model's running statistics.
        """
        return {"iterations": self.attack_iterations, "restarts": self.attack_restarts,
                "tv_weight": self.tv_weight, "seed": self.seed, "label_strategy": self.attack_labels,
                "model_mode": self.client_model_mode}

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


def _need(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def _check_value(row: ConfigKey, value: Any) -> None:
    """Check one key's (coerced) value against its row of the table."""
    choices = row.choices()
    if choices is not None and value not in choices:
        raise ConfigError(f"{row.key}={value!r} is not known; allowed: {row.allowed_text(markdown=False)}")
    if row.check is not None:
        _need(row.check(value), row.key, value, row.allowed_text(markdown=False))
    if isinstance(value, int) and not isinstance(value, bool):
        _need(value <= row.int_max, row.key, value, f"an integer <= {row.int_max}")


def _check_relations(cfg: RunConfig, check_paths: bool = True) -> None:
    """Checks that involve several keys, the data folders or the interception selections."""
    _need(not cfg.resume or cfg.run_name != "", "resume", cfg.resume,
          "true only together with run-name (the folder under output-dir to continue)")
    if check_paths:
        check_data_paths(cfg.dataset, cfg.data_dir)
    _need(cfg.attack_round <= cfg.num_server_rounds, "attack-round", cfg.attack_round,
          f"a round in 1..{cfg.num_server_rounds} (num-server-rounds)")
    if cfg.attack != "none" and cfg.local_mode == "fedavg":
        raise ConfigError("attack='gradinv' (the default) needs local-mode='fedsgd' (the paper's threat model: "
                          "one gradient of one batch); got local-mode='fedavg': add attack='none' to train "
                          "with FedAvg")
    if cfg.observe == "aggregate" and cfg.attack != "none" and not cfg.attacks_every_client:
        raise ConfigError(f"observe='aggregate' attacks the round's mean update, one batch of every client's "
                          f"images: it needs attack-clients='all'; got attack-clients={cfg.attack_clients!r}")
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

    Parameters
    ----------
    raw:
        Run-config keys (hyphens) and their TOML values; absent keys take their default.
    check_paths:
        Whether to check that the data folders exist on this machine. A ClientApp
        passes ``False`` and checks the folder it reads itself (its node's ``data-dir``
        wins over the run config's); so does a replay of a run made elsewhere.

    Raises
    ------
    ConfigError
        An unknown key (a typo would otherwise be silently ignored) or a value its row
        of :data:`~fedtrust.config_keys.CONFIG_KEYS` (or a relation between keys) does
        not allow; the message names the key, the value and what is allowed.
    """
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in BY_KEY:
            close = [k for k in BY_KEY if k.split("-")[0] == key.split("-")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown run-config key {key!r}{hint}; known keys: {', '.join(sorted(BY_KEY))}")
        values[BY_KEY[key].field] = _coerce(key, value, BY_KEY[key].default)
    cfg = RunConfig(**values)
    for row in CONFIG_KEYS:
        _check_value(row, getattr(cfg, row.field))
    _check_relations(cfg, check_paths=check_paths)
    return cfg
