"""The run config: one table of keys, from which RunConfig, pyproject's [tool.flwr.app.config], the
README table and the sweeps' notion of keys that matter come; bad values are named."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtrust.compression import (
    Codec,
    Compressor,
    CompressorSpec,
    codec_class,
    codec_names,
    compressor_config_keys,
)
from fedtrust.config import ConfigError, RunConfig, parse_run_config
from fedtrust.config_keys import (
    BY_KEY,
    CONFIG_KEYS,
    ReadByCompressor,
    defaults,
    ignored_keys,
    main,
    markdown_table,
    toml_section,
)

ROOT = Path(__file__).resolve().parents[1]


def pyproject_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_keys_and_defaults_match_runconfig():
    raw = pyproject_config()
    fields = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(RunConfig)}
    assert set(raw) == set(fields)
    cfg = parse_run_config(raw)
    for key, value in raw.items():
        assert getattr(cfg, key.replace("-", "_")) == value, key
        assert fields[key] == value, key


def test_every_key_is_documented_in_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in pyproject_config() if f"`{k}`" not in readme]
    assert not missing, f"run-config keys missing from README: {missing}"


@pytest.mark.parametrize(("raw", "words"), [
    ({"compressor": "gzip"}, ["compressor", "gzip", "powersgd", "topk"]),
    ({"level": 0}, ["level", "0", ">= 1"]),
    ({"local-mode": "sgd"}, ["local-mode", "fedsgd", "fedavg"]),
    ({"client-model-mode": "inference"}, ["client-model-mode", "inference", "train", "eval"]),
    ({"powersgd-mode": "ring"}, ["powersgd-mode", "allreduce", "local"]),
    ({"model": "vgg"}, ["model", "resnet18", "convnet"]),
    ({"dataset": "imagenet"}, ["dataset", "cifar10", "folder:PATH"]),
    ({"data-dir": "/no/such/folder"}, ["data-dir", "/no/such/folder"]),
    ({"intercept-rounds": "61"}, ["intercept-rounds", "61"]),
    ({"batch-size": "many"}, ["batch-size", "integer"]),
    ({"lr": -1.0}, ["lr", "> 0"]),
    ({"compresor": "topk"}, ["compresor", "unknown", "compressor"]),
    ({"seed": -1}, ["seed", "-1", "0..4294967295"]),
    ({"seed": 2**32}, ["seed", "4294967296", "0..4294967295"]),
    ({"seed": 2**64}, ["seed", "18446744073709551616", "0..4294967295"]),
    ({"level": 1e20}, ["level", "1e+20", "integer"]),
    ({"level": 2.5}, ["level", "2.5", "integer"]),
    ({"num-server-rounds": 2**31}, ["num-server-rounds", "2147483648", "2147483647"]),
    ({"batch-size": "9007199254740993"}, ["batch-size", "9007199254740993", "2147483647"]),
    ({"run-name": ".."}, ["run-name", "'..'", "starting with a letter or digit"]),
    ({"run-name": "."}, ["run-name", "starting with a letter or digit"]),
    ({"run-name": ".hidden"}, ["run-name", "starting with a letter or digit"]),
    ({"max-norm-ratio": 0.5}, ["max-norm-ratio", "0.5", ">= 1"]),
    ({"max-norm-action": "drop"}, ["max-norm-action", "drop", "refuse", "clip"]),
    ({"lr": float("inf")}, ["lr", "inf", "finite"]),
    ({"round-timeout": float("nan")}, ["round-timeout", "finite"]),
    ({"intercept-clients": "first"}, ["intercept-clients", "first", "comma-separated"]),
    ({"intercept-clients": "-1"}, ["intercept-clients", "-1", "outside"]),
])
def test_bad_values_name_the_key_and_what_is_allowed(raw, words):
    with pytest.raises(ConfigError) as info:
        parse_run_config({**pyproject_config(), **raw})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_selection_parsing():
    cfg = parse_run_config({"num-server-rounds": 4, "intercept-rounds": "all", "intercept-clients": "0,2"})
    assert cfg.intercepted_rounds() == {1, 2, 3, 4}
    assert cfg.intercepted_partitions(3) == {0, 2}
    # per-client questions need no count of clients: an id no client has is never matched
    assert [cfg.intercepts_client(p) for p in range(4)] == [True, False, True, False]
    attack = parse_run_config({"intercept-clients": "none", "attack": "gradinv", "attack-clients": "7"})
    assert attack.intercepts_client(7) and attack.attacks_client(7) and not attack.intercepts_client(0)
    every = parse_run_config({"intercept-clients": "all", "attack": "none"})
    assert every.intercepts_client(12345) and not every.attacks_client(0)
    assert parse_run_config({"intercept-rounds": "none", "attack": "none"}).intercepted_rounds() == set()
    assert parse_run_config({"intercept-rounds": "none"}).intercepted_rounds() == {1}  # the attacked round


def test_attacking_every_client_does_not_enumerate_a_huge_range():
    cfg = parse_run_config({"attack": "gradinv", "attack-clients": "all"})
    assert cfg.attacks_every_client
    assert cfg.attacked_partitions(5) == {0, 1, 2, 3, 4}
    assert not parse_run_config({"attack": "gradinv", "attack-clients": "0,3"}).attacks_every_client
    with pytest.raises(ConfigError, match="attack-clients"):
        parse_run_config({"attack": "gradinv", "attack-clients": "0,x"})


def test_integers_stay_exact_and_within_what_the_code_can_use():
    """Integer keys are never read through a float, and their bounds are ones the code honours."""
    from fedtrust.config import MAX_INT, MAX_SEED
    from fedtrust.training import client_seed

    assert parse_run_config({"seed": MAX_SEED}).seed == MAX_SEED
    assert parse_run_config({"seed": str(MAX_SEED)}).seed == MAX_SEED
    assert parse_run_config({"level": 2.0}).level == 2
    assert parse_run_config({"mia-samples": MAX_INT}).mia_samples == MAX_INT
    # the largest seed, round and partition id still give seeds both generators take
    seed = client_seed(MAX_SEED, MAX_INT, MAX_INT)
    assert seed < 2**63
    torch.Generator().manual_seed(seed)
    np.random.default_rng(seed)


def test_data_folders_are_checked_only_where_the_data_is_read(tmp_path):
    raw = {"data-dir": str(tmp_path / "only-on-the-server")}
    with pytest.raises(ConfigError, match="data-dir"):
        parse_run_config(raw)
    assert parse_run_config(raw, check_paths=False).data_dir == raw["data-dir"]


# ---------------------------------------------------------------- the table of run-config keys
def test_pyproject_is_the_tables_defaults_in_its_order():
    raw = pyproject_config()
    assert list(raw) == [row.key for row in CONFIG_KEYS]
    for row in CONFIG_KEYS:
        assert raw[row.key] == row.default and type(raw[row.key]) is type(row.default), row.key
    assert tomllib.loads(toml_section())["tool"]["flwr"]["app"]["config"] == raw


def test_runconfig_is_the_typed_view_of_the_table():
    fields = dataclasses.fields(RunConfig)
    assert [f.name for f in fields] == [row.field for row in CONFIG_KEYS]
    for f, row in zip(fields, CONFIG_KEYS, strict=True):
        assert f.default == row.default and f.type == type(row.default).__name__, row.key
    assert RunConfig().as_flat_dict() == defaults() == {k: BY_KEY[k].default for k in BY_KEY}


def test_every_default_and_every_choice_is_valid():
    parse_run_config(defaults())
    for row in CONFIG_KEYS:
        for choice in row.choices() or ():
            needs = {("local-mode", "fedavg"): {"attack": "none"}, ("observe", "aggregate"): {"attack-clients": "all"}}
            parse_run_config({row.key: choice, **needs.get((row.key, choice), {})}, check_paths=False)
        assert row.meaning and row.allowed_text() and row.matters_text(), row.key


def test_readme_configuration_table_is_generated_from_the_table(capsys):
    readme = (ROOT / "README.md").read_text()
    begin = "<!-- config-table: generated by `python -m fedtrust.config_keys --markdown`; do not edit by hand -->\n"
    end = "<!-- end config-table -->"
    assert begin in readme and end in readme
    section = readme.split(begin, 1)[1].split(end, 1)[0]
    assert section == markdown_table(), "run `python -m fedtrust.config_keys --markdown` and paste it into README"
    main(["--markdown"])
    assert capsys.readouterr().out == markdown_table()
    main(["--toml"])
    assert capsys.readouterr().out == toml_section()


def test_compressor_values_and_keys_come_from_the_codec_registry():
    assert BY_KEY["compressor"].choices() == codec_names()
    declared = {o.key: o.allowed for n in codec_names() for o in codec_class(n).options if o.allowed}
    for key, allowed in declared.items():
        assert BY_KEY[key].choices() == allowed, key
    read_by_codec = {row.key for row in CONFIG_KEYS if isinstance(row.matters_when, ReadByCompressor)}
    assert read_by_codec == set(compressor_config_keys()) - {"seed"}
    assert BY_KEY["seed"].matters_when is None  # a general key too: it always matters


@pytest.mark.parametrize("name", ["none", "powersgd", "topk"])
def test_a_compressor_key_matters_when_its_codec_reads_it(name):
    cfg = {**defaults(), "compressor": name}
    ignored = set(ignored_keys(cfg)) & set(compressor_config_keys())
    assert ignored == set(compressor_config_keys()) - set(codec_class(name).config_keys()) - {"seed"}
    # the hand-kept lists the table replaces: cells keep their meaning
    legacy = {"none": {"level", "powersgd-mode", "topk-scope", "error-feedback"},
              "powersgd": {"topk-scope"}, "topk": {"powersgd-mode"}}
    assert ignored == legacy[name]


def test_general_keys_matter_under_the_documented_conditions():
    # the defaults run every part (FedSGD, PowerSGD rank 1, gradient inversion, membership inference)
    assert set(ignored_keys(defaults())) == {"dirichlet-alpha", "local-epochs", "topk-scope", "dp-noise-multiplier",
                                             "dp-delta"}
    base = {**defaults(), "compressor": "none", "attack": "none", "mia": False}
    assert set(ignored_keys(base)) == {"dirichlet-alpha", "local-epochs", "level", "powersgd-mode", "topk-scope",
                                       "error-feedback", "attack-round", "attack-clients", "attack-images",
                                       "attacker", "attack-labels", "attack-iterations", "attack-restarts",
                                       "tv-weight", "mia-samples", "mia-reference-models", "dp-noise-multiplier",
                                       "dp-delta"}
    busy = {**base, "partitioner": "dirichlet", "local-mode": "fedavg", "attack": "gradinv", "mia": True,
            "compressor": "powersgd"}
    assert ignored_keys(busy) == ["client-model-mode", "topk-scope", "dp-noise-multiplier", "dp-delta"]  # FedAvg
    assert "dp-delta" not in ignored_keys({**busy, "dp-clip": 1.0})
    assert BY_KEY["mia-samples"].matters_text() == "`mia` is true"
    assert BY_KEY["tv-weight"].matters_text() == "`attack` is not `none`"
    # an unknown compressor (not validated yet) keeps every compressor key
    assert not set(ignored_keys({**base, "compressor": "gzip"})) & set(compressor_config_keys())


def test_a_codec_registered_later_is_a_valid_compressor_without_editing_the_config(monkeypatch):
    """The table asks the registry each time: a new codec needs no change here."""
    from fedtrust.compression import registry

    class ToyCodec(Codec):
        name = family = display = "toy"
        levelled = has_error_feedback = False
        compressor_type = Compressor

        def expected_arrays(self, exchange=None):
            return {}

        def decode(self, arrays, public_state):
            return {}

        def views(self, arrays, public_state):
            return []

    codec_names()  # load the built-in codecs first
    monkeypatch.setitem(registry._CODECS, "toy", ToyCodec)
    cfg = parse_run_config({"compressor": "toy"})
    assert cfg.compressor_spec() == CompressorSpec(name="toy", level=0, error_feedback=False)
    assert {"level", "error-feedback"} <= set(ignored_keys(cfg.as_flat_dict()))
    assert "`toy`" in markdown_table()


def test_compressor_spec_is_read_by_the_codec():
    spec = parse_run_config({"compressor": "powersgd", "powersgd-mode": "local", "level": 2}).compressor_spec()
    assert spec == CompressorSpec(name="powersgd", level=2, error_feedback=True,
                                  options=(("mode", "local"), ("seed", 42)))
    assert parse_run_config({"compressor": "topk", "topk-scope": "layer"}).compressor_spec().option("scope") == "layer"
    assert parse_run_config({"compressor": "none"}).compressor_spec() == CompressorSpec(name="none", level=0,
                                                                                        error_feedback=False)


@pytest.mark.parametrize(("raw", "words"), [
    ({"topk-scope": "rows"}, ["topk-scope", "rows", "global", "layer"]),
    ({"device": "gpu"}, ["device", "gpu", "cuda:N"]),
    ({"mia-samples": 1}, ["mia-samples", "1", ">= 2"]),
    ({"attack": "gradinv", "attack-round": 61}, ["attack-round", "61", "1..60"]),
    ({"local-mode": "fedavg"}, ["attack='gradinv'", "local-mode='fedsgd'", "attack='none'"]),
    ({"attack-round": 0}, ["attack-round", "0", "1..num-server-rounds"]),
    ({"mia": "yes"}, ["mia", "yes", "true or false"]),
])
def test_more_bad_values_name_the_key_and_what_is_allowed(raw, words):
    with pytest.raises(ConfigError) as info:
        parse_run_config(raw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
