"""The run-config keys as data: one :class:`ConfigKey` row per key of ``[tool.flwr.app.config]``.

Design
------
Everything fedtrust knows about a run-config key lives in its row of :data:`CONFIG_KEYS`:
the default, what it allows, what it means and when it matters. The rest is derived:

* :func:`fedtrust.config.parse_run_config` validates each key from its row (the type of
  its default, its choices, its own check) and :class:`fedtrust.config.RunConfig` takes its
  defaults from :func:`defaults`; only checks that relate several keys (``attack-round``
  within ``num-server-rounds``, ...) and the data folders stay in :mod:`fedtrust.config`;
* the sweeps' canonical cell config (:mod:`experiments.runconfig`) resets the keys that do
  not matter for a config (:func:`ignored_keys`), so cells that run the same experiment
  share one key;
* the README's configuration table is :func:`markdown_table` and ``pyproject.toml``'s
  section is :func:`toml_section` (``python -m fedtrust.config_keys --markdown`` /
  ``--toml``); ``tests/test_config.py`` keeps both in step with this table.

Compressor knowledge comes from the codec registry, never from names written here: the
choices of ``compressor`` are the registered codecs, the choices of a codec option
(``powersgd-mode``, ``topk-scope``) are those its :class:`~fedtrust.compression.CodecOption`
declares, and a compressor key matters only when the selected codec reads it
(:class:`ReadByCompressor`). This module imports no Flower.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedtrust.compression.registry import codec_class, codec_names
from fedtrust.data.partition import PARTITIONER_NAMES
from fedtrust.data.specs import BUILTIN_DATASETS, DATASET_NAMES
from fedtrust.models import MODEL_NAMES
from fedtrust.training import MODEL_MODES

#: The largest seed: clients derive per-round seeds as ``seed * 1_000_003 + round * 1009 + partition``,
#: which must stay below 2**63 (torch's generators) for every round and partition.
MAX_SEED = 2**32 - 1
#: The largest value of any other integer key (rounds, sizes, levels, ...).
MAX_INT = 2**31 - 1

Choices = tuple[Any, ...]


@dataclass(frozen=True)
class When:
    """A key matters when run-config key ``key`` is one of ``values`` (``negate``: is none of them).

    Attributes
    ----------
    key:
        The run-config key the condition reads (``attack``).
    values:
        The values it is compared with (``("none",)``).
    negate:
        Whether the key matters when ``key`` is *not* one of ``values``.
    """

    key: str
    values: Choices
    negate: bool = False

    def holds(self, key: str, cfg: Mapping[str, Any]) -> bool:
        """Whether run-config key ``key`` matters in ``cfg`` (hyphenated key names)."""
        return (cfg.get(self.key) in self.values) != self.negate

    def describe(self, key: str) -> str:
        """The condition in words, for the README (markdown)."""
        if self.negate and len(self.values) == 1 and isinstance(self.values[0], bool):
            return f"`{self.key}` is {_word(not self.values[0])}"
        words = " or ".join(f"`{_word(v)}`" for v in self.values)
        return f"`{self.key}` is {'not ' if self.negate else ''}{words}"


@dataclass(frozen=True)
class ReadByCompressor:
    """A compressor key matters when the selected compressor's codec reads it.

    What a codec reads is :meth:`fedtrust.compression.Codec.config_keys`; an unknown
    compressor (not yet validated) counts as reading every key.
    """

    def holds(self, key: str, cfg: Mapping[str, Any]) -> bool:
        """Whether run-config key ``key`` matters in ``cfg`` (hyphenated key names)."""
        name = cfg.get("compressor")
        if name not in codec_names():
            return True
        return key in codec_class(name).config_keys()

    def describe(self, key: str) -> str:
        """The codecs that read ``key``, in words, for the README (markdown)."""
        readers = [f"`{n}`" for n in codec_names() if key in codec_class(n).config_keys()]
        return f"`compressor` is {' or '.join(readers)}" if readers else "never"


Condition = When | ReadByCompressor


@dataclass(frozen=True)
class ConfigKey:
    """One run-config key: everything the validator, the sweeps and the README know about it.

    Attributes
    ----------
    key:
        The run-config key (hyphens; field ``foo_bar`` of :class:`fedtrust.config.RunConfig`
        is key ``foo-bar``).
    default:
        Its default (the value in ``pyproject.toml``); its type is the key's type.
    allowed:
        The allowed values: a tuple of choices, a function giving them (choices that come
        from the codec registry), or a markdown text (then ``check`` tests a value).
    meaning:
        What the key does (markdown, one line).
    matters_when:
        When its value reaches the app's behaviour; ``None``: always.
    check:
        A test of a value of the right type against ``allowed`` (text allowed only);
        ``None``: any value of the type.
    int_max:
        The largest value of an integer key (the code's bound; :data:`MAX_INT` but for ``seed``).
    """

    key: str
    default: Any
    allowed: str | Choices | Callable[[], Choices]
    meaning: str
    matters_when: Condition | None = None
    check: Callable[[Any], bool] | None = None
    int_max: int = MAX_INT

    @property
    def field(self) -> str:
        """The :class:`fedtrust.config.RunConfig` field name."""
        return self.key.replace("-", "_")

    def choices(self) -> Choices | None:
        """The allowed values when they are a list; ``None`` when ``allowed`` is a text."""
        if isinstance(self.allowed, str):
            return None
        return tuple(self.allowed() if callable(self.allowed) else self.allowed)

    def allowed_text(self, markdown: bool = True) -> str:
        """``allowed`` in words: markdown for the README, plain for an error message."""
        choices = self.choices()
        text = self.allowed if choices is None else ", ".join(f"`{_word(c)}`" for c in choices)
        return text if markdown else text.replace("`", "")

    def matters(self, cfg: Mapping[str, Any]) -> bool:
        """Whether this key's value reaches the app's behaviour in ``cfg`` (hyphenated names)."""
        return self.matters_when is None or self.matters_when.holds(self.key, cfg)

    def matters_text(self) -> str:
        """:attr:`matters_when` in words, for the README (markdown)."""
        return "always" if self.matters_when is None else self.matters_when.describe(self.key)


def codec_option_choices(key: str) -> Choices:
    """The allowed values of codec option ``key`` (``powersgd-mode``) over every codec declaring it."""
    out: list[Any] = []
    for name in codec_names():
        for option in codec_class(name).options:
            if option.key == key:
                out += [v for v in option.allowed if v not in out]
    if not out:
        raise KeyError(f"no registered codec declares allowed values for the run-config key {key!r}")
    return tuple(out)


def _word(value: Any) -> str:
    """A value as the README writes it (``true``, ``none``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_device(value: str) -> bool:
    return value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())


def _is_dataset(value: str) -> bool:
    return value in BUILTIN_DATASETS or (value.startswith("folder:") and len(value) > len("folder:"))


def _is_run_name(value: str) -> bool:
    return value == "" or (value[0].isalnum() and all(c.isalnum() or c in "-_." for c in value))


_ATTACK = When("attack", ("none",), negate=True)
_COMPRESSOR = ReadByCompressor()
_DP = When("dp-clip", (0.0,), negate=True)
_SELECTION = "`all`, `none` or comma-separated integers like `\"{}\"`"

#: The run-config keys, in the order of ``pyproject.toml``.
CONFIG_KEYS: tuple[ConfigKey, ...] = (
    # federation
    ConfigKey("num-server-rounds", 60, ">= 1", "federated rounds", check=lambda v: v >= 1),
    ConfigKey("seed", 42, "0..4294967295 (2^32-1)",
              "seeds the initial model, partitions, batches and the compressor's shared randomness "
              "(PowerSGD's Q)", check=lambda v: 0 <= v <= MAX_SEED, int_max=MAX_SEED),
    ConfigKey("fraction-train", 1.0, "(0, 1]", "fraction of connected nodes sampled per round",
              check=lambda v: 0.0 < v <= 1.0),
    ConfigKey("min-clients", 2, ">= 1",
              "nodes needed to start a round, and usable replies needed to step the model", check=lambda v: v >= 1),
    # model and data
    ConfigKey("model", "convnet", MODEL_NAMES,
              "ResNet-18 for small images (Geiping et al. 2020: 3x3 stride-1 stem, no max-pool, "
              "11.2 M parameters) or a small ConvNet"),
    ConfigKey("dataset", "sample", ", ".join(f"`{n}`" for n in DATASET_NAMES), "see \"Data\"", check=_is_dataset),
    ConfigKey("data-dir", "", "a folder",
              "where local data files are (empty: defaults, see \"Data\"); a SuperNode's "
              "`--node-config \"data-dir='...'\"` overrides it on that node"),
    ConfigKey("partitioner", "iid", PARTITIONER_NAMES, "Flower Datasets partitioner over the train split"),
    ConfigKey("dirichlet-alpha", 0.5, "> 0", "concentration of the Dirichlet partitioner (smaller: more skewed)",
              When("partitioner", ("iid",), negate=True), check=lambda v: v > 0),
    ConfigKey("num-partitions", 0, ">= 0", "0: one partition per SuperNode (`num-partitions` of the node config)",
              check=lambda v: v >= 0),
    ConfigKey("eval-samples", 500, ">= 0",
              "test images for the server's evaluation each round (0: the whole test split)", check=lambda v: v >= 0),
    ConfigKey("eval-batch-size", 256, ">= 1", "batch size of that evaluation", check=lambda v: v >= 1),
    ConfigKey("device", "auto", "`auto`, `cpu`, `cuda`, `cuda:N`", "`auto`: CUDA when there is a GPU",
              check=_is_device),
    # local training
    ConfigKey("local-mode", "fedsgd", ("fedsgd", "fedavg"),
              "FedSGD: one gradient on one batch (the paper's threat model); FedAvg: `local-epochs` of SGD, "
              "the update is the model delta"),
    ConfigKey("client-model-mode", "train", MODEL_MODES,
              "mode of the model when a FedSGD client computes its gradient, and so what the attacker assumes: "
              "`train` normalises BatchNorm with the batch's statistics (what real training does), `eval` with "
              "the running ones (Geiping et al.'s setting and the paper's); no effect on a model without BatchNorm",
              When("local-mode", ("fedsgd",))),
    ConfigKey("batch-size", 32, ">= 1", "FedSGD batch / FedAvg mini-batch", check=lambda v: v >= 1),
    ConfigKey("local-epochs", 1, ">= 1", "FedAvg epochs per round",
              When("local-mode", ("fedsgd",), negate=True), check=lambda v: v >= 1),
    ConfigKey("lr", 0.1, "> 0", "learning rate (FedAvg: the clients'; FedSGD: the global SGD step)",
              check=lambda v: v > 0),
    ConfigKey("server-lr", 1.0, "> 0",
              "server step: `w -= server-lr * lr * mean gradient` (FedSGD), `w -= server-lr * mean delta` (FedAvg)",
              check=lambda v: v > 0),
    # compression
    ConfigKey("compressor", "powersgd", codec_names, "update compression: one codec each (see \"Compression\")"),
    ConfigKey("level", 1, ">= 1", "PowerSGD rank r; Top-K \"level r\" = as many values as PowerSGD rank r sends",
              _COMPRESSOR, check=lambda v: v >= 1),
    ConfigKey("powersgd-mode", "allreduce", functools.partial(codec_option_choices, "powersgd-mode"),
              "all-reduce: two exchanges per round (P_i, then Q_i for the server's P-hat, as the paper); "
              "local: each client sends its own P and Q", _COMPRESSOR),
    ConfigKey("topk-scope", "global", functools.partial(codec_option_choices, "topk-scope"),
              "Top-K over the whole update or per layer", _COMPRESSOR),
    ConfigKey("error-feedback", True, "bool", "add the residual of earlier rounds to the next update", _COMPRESSOR),
    # interception and outputs
    ConfigKey("intercept-rounds", "1", _SELECTION.format("1,3"), "rounds whose updates the server intercepts"),
    ConfigKey("intercept-clients", "all", _SELECTION.format("0,2"), "partition ids of the intercepted clients"),
    ConfigKey("observe", "client", ("client", "aggregate"),
              "what the honest-but-curious server sees of an intercepted round: each client's update, or only "
              "the weighted mean of the round's updates (what secure aggregation leaves it; needs a codec that "
              "allows it, see \"Defences\")"),
    ConfigKey("output-dir", "~/fedtrust-runs", "a folder",
              "where run folders go (a relative path is relative to the SuperLink's working folder; prefer absolute)",
              check=lambda v: v.strip() != ""),
    ConfigKey("run-name", "", "letters, digits, '-', '_' and '.', starting with a letter or digit "
              "(or empty for an automatic name)",
              "run folder name (empty: `<time>-<dataset>-<algo>-<run id>`)", check=_is_run_name),
    ConfigKey("resume", False, "bool",
              "continue the run folder `output-dir/run-name` from its last `checkpoint.pt` "
              "(see \"Checkpoints and resume\"); needs `run-name`"),
    ConfigKey("round-timeout", 600.0, "> 0",
              "seconds the server waits for replies in each exchange; nodes that have not answered count as failed",
              check=lambda v: v > 0),
    # robust aggregation
    ConfigKey("max-norm-ratio", 10.0, "0 (off) or >= 1",
              "a client's update (and its BatchNorm statistics' change) may have at most this many times the norm "
              "of the round's median client (see \"Robustness\")", check=lambda v: v == 0 or v >= 1),
    ConfigKey("max-norm-action", "refuse", ("refuse", "clip"),
              "what happens to an update above that bound: refused (counted in `rejected`) or scaled down to it "
              "(counted in `clipped`)"),
    # defences
    ConfigKey("dp-clip", 0.0, "0 (off) or > 0",
              "client-level differential privacy: each client clips its update to this L2 norm and adds Gaussian "
              "noise before compression (see \"Defences\")", check=lambda v: v >= 0),
    ConfigKey("dp-noise-multiplier", 1.0, ">= 0", "the noise's standard deviation, in units of `dp-clip`",
              _DP, check=lambda v: v >= 0),
    ConfigKey("dp-delta", 1e-5, "(0, 1)", "the delta at which epsilon is reported (`rounds.csv`: `epsilon`)",
              _DP, check=lambda v: 0 < v < 1),
    # gradient inversion
    ConfigKey("attack", "gradinv", ("none", "gradinv"),
              "gradient inversion of the intercepted updates (see \"Gradient inversion\"); "
              "needs `local-mode = \"fedsgd\"`"),
    ConfigKey("attack-round", 1, "1..`num-server-rounds`",
              "the round whose updates are attacked (round 1: no error-feedback residual yet, the paper's setting)",
              _ATTACK, check=lambda v: v >= 1),
    ConfigKey("attack-clients", "0", "`all` or comma-separated integers like `\"0,2\"`",
              "partition ids of the attacked clients (they are intercepted too)", _ATTACK),
    ConfigKey("attack-images", 1, ">= 1",
              "images in an attacked client's batch in the attack round (the paper: one image per attack)",
              _ATTACK, check=lambda v: v >= 1),
    ConfigKey("attacker", "both", ("naive", "adaptive", "both"),
              "naive: matches the decoded update with a dense gradient (the paper); adaptive: knows the compressor "
              "and matches what was sent", _ATTACK),
    ConfigKey("attack-labels", "given", ("given", "infer"),
              "labels known to the attacker (Geiping et al.) or inferred from the last layer's gradient "
              "(iDLG; a bias-corrected count for batches)", _ATTACK),
    ConfigKey("attack-iterations", 500, ">= 1",
              "optimisation steps per reconstruction (the paper: 24,000 on ResNet-18; 500 is where a ConvNet's "
              "reconstructions stop improving, docs/cpu-results/convergence.md)",
              _ATTACK, check=lambda v: v >= 1),
    ConfigKey("attack-restarts", 1, ">= 1", "independent starts; the one with the lowest matching loss is kept",
              _ATTACK, check=lambda v: v >= 1),
    ConfigKey("tv-weight", 0.0001, ">= 0", "weight of the total-variation prior", _ATTACK, check=lambda v: v >= 0),
    # membership inference
    ConfigKey("mia", True, "bool",
              "membership inference: update attacks on every intercepted FedSGD update of 2 or more samples, "
              "black-box attacks on the final model (see \"Membership inference\")"),
    ConfigKey("mia-samples", 500, ">= 2",
              "at most this many members and as many non-members in the black-box attacks",
              When("mia", (False,), negate=True), check=lambda v: v >= 2),
    ConfigKey("mia-reference-models", 0, ">= 0",
              "reference models for LiRA and RMIA on the final model, trained like it on halves of the "
              "black-box candidates and cached in `<output-dir>/reference-models` (0: no LiRA, no RMIA; "
              "see \"Membership inference\")",
              When("mia", (False,), negate=True), check=lambda v: v >= 0),
)

#: Row of each key.
BY_KEY: dict[str, ConfigKey] = {row.key: row for row in CONFIG_KEYS}


def defaults() -> dict[str, Any]:
    """Every key with its default, in table order (hyphenated key names)."""
    return {row.key: row.default for row in CONFIG_KEYS}


def ignored_keys(cfg: Mapping[str, Any]) -> list[str]:
    """The keys whose value does not reach the app's behaviour in ``cfg`` (hyphenated names)."""
    return [row.key for row in CONFIG_KEYS if not row.matters(cfg)]


def toml_literal(value: Any) -> str:
    """``value`` as a TOML literal (``true``, ``"iid"``, ``0.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def markdown_table() -> str:
    """The README's configuration table (one row per key, in table order)."""
    lines = ["| key | default | allowed | meaning | matters when |", "|---|---|---|---|---|"]
    for row in CONFIG_KEYS:
        cells = (f"`{row.key}`", f"`{toml_literal(row.default)}`", row.allowed_text(), row.meaning,
                 row.matters_text())
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def toml_section() -> str:
    """``pyproject.toml``'s ``[tool.flwr.app.config]`` section with the table's defaults."""
    lines = ["[tool.flwr.app.config]",
             "# Generated from fedtrust/config_keys.py (python -m fedtrust.config_keys --toml); every key is",
             "# documented in README.md (\"Run configuration\") and validated by fedtrust.config.parse_run_config."]
    lines += [f"{row.key} = {toml_literal(row.default)}" for row in CONFIG_KEYS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m fedtrust.config_keys --markdown | --toml``: print the README table or pyproject's section."""
    parser = argparse.ArgumentParser(prog="python -m fedtrust.config_keys", description=main.__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--markdown", action="store_true", help="the README's configuration table")
    which.add_argument("--toml", action="store_true", help="pyproject.toml's [tool.flwr.app.config] section")
    args = parser.parse_args(argv)
    print(markdown_table() if args.markdown else toml_section(), end="")


if __name__ == "__main__":
    main()
