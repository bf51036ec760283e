"""presets/*.toml: the paper profile's setups as Flower run-config files, generated and checked against it."""

from __future__ import annotations

from flwr.common.config import parse_config_args

from experiments import presets
from experiments.plan import make_cell
from experiments.profiles import PAPER
from fedtrust.config import parse_run_config


def test_committed_presets_match_the_paper_profile():
    assert presets.main(["--check"]) == 0


def test_flower_reads_each_preset_as_the_paper_cell_and_the_app_accepts_it():
    for name, dataset in presets.PRESETS.items():
        path = presets.PRESETS_DIR / f"{name}.toml"
        read = parse_config_args([str(path)])  # what `flwr run . --run-config FILE` sends
        assert read == dict(make_cell("gradinv", dataset, presets.ALGORITHM, PAPER).run_config)
        cfg = parse_run_config(read, check_paths=False)
        assert (cfg.model, cfg.dataset, cfg.client_model_mode, cfg.attack_iterations) == (
            "resnet18", dataset, "eval", 24000)


def test_a_preset_that_drifts_from_the_profile_is_reported(tmp_path, capsys):
    assert presets.main(["--dir", str(tmp_path)]) == 0
    path = tmp_path / "paper-mnist.toml"
    path.write_text(path.read_text().replace("attack-iterations = 24000", "attack-iterations = 2400"))
    assert presets.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "paper-mnist.toml" in capsys.readouterr().out
