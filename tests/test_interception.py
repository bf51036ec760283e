"""Intercepted updates on disk: a round's global weights are written once and shared by its clients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtrust.interception import InterceptedUpdate
from fedtrust.models import ConvNet
from fedtrust.records import RunFolder


def _item(model: torch.nn.Module, partition: int, server_round: int = 1) -> InterceptedUpdate:
    update = {n: torch.full_like(p, float(partition)) for n, p in model.named_parameters()}
    return InterceptedUpdate(round=server_round, node_id=100 + partition, partition_id=partition,
                             payload={k: v.numpy() for k, v in update.items()}, decoded=update,
                             global_state=model.state_dict(), train_config={"local-mode": "fedsgd"},
                             compressor={"compressor": "none"}, batch_indices=np.array([partition]))


def test_a_rounds_global_weights_are_written_once_for_all_its_clients(tmp_path):
    torch.manual_seed(0)
    model = ConvNet()
    folder = RunFolder(tmp_path)
    state_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    paths = [_item(model, p).save(folder.intercepted_file(1, p), global_state_file=folder.global_state_file(1))
             for p in range(3)]
    assert sorted(f.name for f in folder.intercepted_dir.iterdir()) == [
        "global_round1.pt", "round1_client0.pt", "round1_client1.pt", "round1_client2.pt"]
    assert folder.global_state_file(1).stat().st_size > state_bytes
    # Each client file holds its payload and decoded update (2 x the parameters), not the weights again.
    assert all(p.stat().st_size < 2.5 * state_bytes for p in paths)
    for p, path in enumerate(paths):
        loaded = InterceptedUpdate.load(path)
        assert loaded.partition_id == p and set(loaded.global_state) == set(model.state_dict())
        for name, value in model.state_dict().items():
            assert torch.equal(loaded.global_state[name], value)


def test_the_shared_weights_must_be_of_the_same_round(tmp_path):
    model = ConvNet()
    folder = RunFolder(tmp_path)
    _item(model, 0, server_round=2).save(folder.intercepted_file(2, 0), global_state_file=folder.global_state_file(2))
    folder.global_state_file(2).replace(folder.global_state_file(1))
    # global_round1.pt now exists (with round 2's weights), so round 1's update is saved beside it, naming it.
    _item(model, 0, server_round=1).save(folder.intercepted_file(1, 0), global_state_file=folder.global_state_file(1))
    with pytest.raises(ValueError, match="holds round 2's weights, not round 1's"):
        InterceptedUpdate.load(folder.intercepted_file(1, 0))


def test_a_resumed_run_forgets_later_rounds_weights_too(tmp_path):
    model = ConvNet()
    folder = RunFolder(tmp_path)
    for r in (1, 2, 3):
        _item(model, 0, r).save(folder.intercepted_file(r, 0), global_state_file=folder.global_state_file(r))
    folder.discard_after(1)
    assert sorted(f.name for f in folder.intercepted_dir.iterdir()) == ["global_round1.pt", "round1_client0.pt"]


def test_files_of_format_1_with_the_weights_inside_still_load(tmp_path):
    model = ConvNet()
    path = _item(model, 0).save(tmp_path / "round1_client0.pt")
    blob = torch.load(path, weights_only=True)
    blob["format_version"] = 1
    torch.save(blob, path)
    assert set(InterceptedUpdate.load(path).global_state) == set(model.state_dict())


def test_a_decoded_tensor_that_is_a_sent_array_is_stored_once(tmp_path):
    model = ConvNet()
    item = _item(model, 1)
    item.payload = {f"dense/{k}": v for k, v in item.payload.items()}  # the uncompressed codec's wire names
    first = next(iter(item.decoded))
    item.decoded[first] = item.decoded[first] + 1.0  # one decoded tensor differs from what was sent
    path = item.save(tmp_path / "round1_client1.pt")
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    state_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert path.stat().st_size < param_bytes + state_bytes + 0.2 * param_bytes
    loaded = InterceptedUpdate.load(path)
    assert set(loaded.decoded) == set(item.decoded)
    for name, value in item.decoded.items():
        assert torch.equal(loaded.decoded[name], value)
    assert torch.equal(torch.from_numpy(loaded.payload[f"dense/{first}"]), item.decoded[first] - 1.0)
