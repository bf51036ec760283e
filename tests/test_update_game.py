"""The update-attack game and its variants (experiments/update_game.py): real ConvNet updates,
real codecs, the real update attacks; resumable rows."""

from __future__ import annotations

import csv

import pytest

from experiments.update_game import CODECS, VARIANTS, Data, main, play


def test_the_papers_game_gives_the_regression_its_exact_decomposition_and_resumes(tmp_path):
    out = tmp_path / "game"
    assert main(["--out", str(out), "--clients", "2", "--seed", "0", "--variants", "paper"]) == 0
    with (out / "update_game_rows.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2 * 4  # compressors x clients x attacks
    regression = [r for r in rows if r["attack"] == "update_regression"]
    # the batch is all there is in a round-1 FedSGD update: every member gets alpha = 1/16, the rest about 0
    assert {float(r["auc"]) for r in regression} == {1.0}
    assert {r["threshold"] for r in regression} == {"label-free"}
    assert {(r["members"], r["nonmembers"]) for r in rows} == {("8", "100")}
    table = (out / "update_game.md").read_text()
    assert "| paper | Top-K l1 |" in table and "1.000 [1.000, 1.000]" in table
    # a rerun finds every update attacked and adds no row
    assert main(["--out", str(out), "--clients", "2", "--seed", "0", "--variants", "paper"]) == 0
    with (out / "update_game_rows.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)


@pytest.mark.parametrize("name", ["part_of_batch", "own_data", "fedavg"])
def test_each_variant_hands_the_attack_what_it_says(name):
    """The variants' intercepted updates: FedAvg's members are the whole shard, FedSGD's a batch
    of 16 from the client's own shard; every client is attacked on the same global state."""
    variant = next(v for v in VARIANTS if v.name == name)
    data = Data(seed=0, clients=2)
    items = play(variant, CODECS[0][1], data, seed=0)
    assert [i.client for i in items] == [0, 1]
    for item, shard in zip(items, data.shards):
        assert set(item.members) <= set(shard)
        assert len(item.members) == (64 if name == "fedavg" else 16)
        assert item.step == (1.0 if name == "fedavg" else 0.1)
    assert all(items[0].state[k].equal(items[1].state[k]) for k in items[0].state)


def test_a_game_folder_refuses_another_setting(tmp_path):
    """Rows of two settings never mix: a folder keeps its --clients and --seed."""
    from experiments.update_game import check_setting

    check_setting(tmp_path, clients=2, seed=0)
    check_setting(tmp_path, clients=2, seed=0)  # the same setting resumes
    with pytest.raises(SystemExit, match=r"clients: 2 -> 3"):
        check_setting(tmp_path, clients=3, seed=0)
    with pytest.raises(SystemExit, match=r"seed: 0 -> 1"):
        check_setting(tmp_path, clients=2, seed=1)
    with pytest.raises(SystemExit, match="needs 3200 train images"):
        Data(seed=0, clients=50)
