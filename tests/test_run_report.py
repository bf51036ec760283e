"""The run's one-page report (report.md + report.png), written by a real Flower run and rebuilt offline."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from experiments.flwr_runner import LocalSuperLink
from fedtrust import run_report

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = {"model": "convnet", "num-server-rounds": 2, "eval-samples": 200, "compressor": "topk", "level": 4,
           "attack": "gradinv", "attack-clients": "0", "attacker": "both", "attack-iterations": 20,
           "mia": True, "mia-samples": 100, "output-dir": str(out), "run-name": "report"}
    with LocalSuperLink() as link:
        outcome = link.run_app(ROOT, run_config=cfg, num_supernodes=2, timeout=600)
    assert outcome.ok, f"{outcome.status} {outcome.details}\n{outcome.log[-4000:]}"
    assert "fedtrust report: " in outcome.log and str(out / "report" / "report.md") in outcome.log
    return out / "report"


def test_the_report_states_what_the_run_wrote(run_folder):
    text = (run_folder / "report.md").read_text()
    rounds = pd.read_csv(run_folder / "rounds.csv")
    for row in rounds.itertuples():
        per_client = row.uplink_bytes / row.clients
        assert re.search(rf"\| {row.round} \| {row.test_accuracy:.3f} \| {row.clients} \| ", text), text
        assert f"{per_client / 1e3:,.1f} kB" in text or f"{per_client / 1e6:,.1f} MB" in text
    attacks = pd.read_csv(run_folder / "gradinv.csv")
    assert set(attacks["attacker"]) == {"naive", "adaptive"}
    for row in attacks.itertuples():
        assert f"| {row.round} | {row.client} | {row.image} | {row.attacker} | {row.ssim:.3f} |" in text
    mia = pd.read_csv(run_folder / "mia.csv")
    assert len(mia) > 0
    for row in mia.itertuples():
        assert f"| {row.attack} | {row.scope} |" in text and f"{row.auc:.3f}" in text
    assert "![report](report.png)" in text


def test_the_figure_shows_originals_reconstructions_and_rounds(run_folder):
    with Image.open(run_folder / "report.png") as img:
        assert img.format == "PNG" and img.width >= 600 and img.height >= 400


def test_the_report_is_rebuilt_offline_from_the_files_alone(run_folder, tmp_path):
    before = (run_folder / "report.md").read_text()
    (run_folder / "report.md").unlink()
    (run_folder / "report.png").unlink()
    assert run_report.main([str(run_folder)]) == 0
    assert (run_folder / "report.md").read_text() == before and (run_folder / "report.png").exists()
    with pytest.raises(SystemExit):
        run_report.main([str(tmp_path)])  # not a run folder


def test_the_report_table_keeps_every_refused_round_and_the_last():
    rounds = pd.DataFrame({"round": range(1, 61), "rejected": [0] * 60, "failed": [0] * 60})
    rounds.loc[rounds["round"] == 2, "rejected"] = 1
    rounds.loc[rounds["round"] == 44, "failed"] = 1
    shown = run_report.shown_rounds(rounds, 12)["round"].tolist()
    assert shown[0] == 1 and shown[-1] == 60 and {2, 44} <= set(shown) and len(shown) <= 14
    assert run_report.shown_rounds(rounds.head(12), 12)["round"].tolist() == list(range(1, 13))


def test_the_default_run_learns_and_shows_the_leak(tmp_path):
    """`flwr run .` with the app's defaults (only the output folder moved): the model learns, both
    attackers reconstruct client 0's round-1 image, membership is attacked, bytes are counted, and
    the log ends by naming report.md. (Its time, under 3 minutes on 2 cores, is measured by hand.)"""
    with LocalSuperLink() as link:
        outcome = link.run_app(ROOT, run_config={"output-dir": str(tmp_path)}, timeout=900)
    assert outcome.ok, f"{outcome.status} {outcome.details}\n{outcome.log[-4000:]}"
    found = re.findall(r"fedtrust report: (\S+report\.md)", outcome.log)
    assert len(found) == 1 and Path(found[0]).parent.parent == tmp_path
    folder = Path(found[0]).parent
    text = (folder / "report.md").read_text()
    rounds = pd.read_csv(folder / "rounds.csv")
    assert len(rounds) == 60 and rounds["test_accuracy"].tail(5).mean() > 0.3  # chance: 0.1 (10 classes)
    assert (rounds["uplink_bytes"] > 0).all() and (rounds["dense_bytes"] > 20 * rounds["uplink_bytes"]).all()
    attacks = pd.read_csv(folder / "gradinv.csv").set_index("attacker")
    assert set(attacks.index) == {"naive", "adaptive"} and (attacks["round"] == 1).all()
    assert (attacks["client"] == 0).all()
    assert attacks.loc["adaptive", "ssim"] > attacks.loc["naive", "ssim"] + 0.1
    mia = pd.read_csv(folder / "mia.csv")
    assert mia["client"].isna().any() and mia["client"].notna().any()  # the final model and an update
    for words in ("PowerSGD (Rank 1)", "## Gradient inversion", "| 1 | 0 | 0 | adaptive |",
                  "Strongest attack on an intercepted update", "on the final model", "kB"):
        assert words in text, words
    with Image.open(folder / "report.png") as img:
        assert img.format == "PNG"
