"""The run config: pyproject's [tool.flwr.app.config] and RunConfig agree; bad values are named."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtrust.config import ConfigError, RunConfig, parse_run_config

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
    ({"powersgd-mode": "ring"}, ["powersgd-mode", "allreduce", "local"]),
    ({"model": "vgg"}, ["model", "resnet18", "convnet"]),
    ({"dataset": "imagenet"}, ["dataset", "cifar10", "folder:PATH"]),
    ({"data-dir": "/no/such/folder"}, ["data-dir", "/no/such/folder"]),
    ({"intercept-rounds": "5"}, ["intercept-rounds", "5"]),
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
    every = parse_run_config({"intercept-clients": "all"})
    assert every.intercepts_client(12345) and not every.attacks_client(0)
    assert parse_run_config({"intercept-rounds": "none"}).intercepted_rounds() == set()


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
