"""Adding a compressor is one module: a toy codec runs a real Flower simulation end to end.

The test adds ONE file, ``fedtrust/compression/codecs/evenk.py``, for its duration (it is
removed afterwards; in a simulation the ClientApps import fedtrust from the installed
source tree, not from the app bundle, so the module must be there): a toy compressor
that sends every other
coordinate of each tensor (``values/{name}``; the positions are implied, so its views
are ``gather`` maps at ``0, 2, 4, ...``). No other file of the copy names it. A
simulation with ``compressor = "evenk"`` then trains, validates the toy's payloads,
intercepts them and runs both gradient-inversion attackers on them through the codec.
"""

from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from pathlib import Path

import pytest

from experiments.flwr_runner import LocalSuperLink
from fedtrust.interception import InterceptedUpdate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

TOY = '''"""A toy codec: every other coordinate of each tensor (test of the codec registry)."""

from __future__ import annotations

import math

import torch

from fedtrust.compression.base import Compressor, Payload, from_wire, to_wire
from fedtrust.compression.codec import ArraySpec, Codec
from fedtrust.compression.registry import register
from fedtrust.compression.views import View, as_tensor


class EvenCompressor(Compressor):
    """Sends the even-indexed coordinates of each flattened tensor; stateless."""

    name = "evenk"

    def encode(self, update):
        layout = self._ensure_layout(update)
        return Payload({f"values/{n}": to_wire(update[n].reshape(-1)[::2]) for n, _ in layout})

    def decode(self, payload):
        out = {}
        for name, shape in self.layout:
            flat = torch.zeros(math.prod(shape))
            flat[::2] = from_wire(payload.arrays[f"values/{name}"])
            out[name] = flat.reshape(shape)
        return out


@register
class EvenCodec(Codec):
    """Every other coordinate: one exchange, no public state, linear (a gather)."""

    name = "evenk"
    family = "evenk"
    display = "Even-K"
    levelled = False
    has_error_feedback = False
    compressor_type = EvenCompressor

    def expected_arrays(self, exchange=None):
        return {f"values/{n}": ArraySpec(((math.prod(s) + 1) // 2,), "float32") for n, s in self.layout}

    def decode(self, arrays, public_state):
        return self.compressor().decode(Payload(dict(arrays)))

    def views(self, arrays, public_state):
        return [View(f"values/{n}", "gather", (n,), (torch.arange(0, math.prod(s), 2),),
                     as_tensor(arrays[f"values/{n}"])) for n, s in self.layout]
'''


@contextmanager
def toy_codec_installed():
    """The toy codec module in the codecs folder, for the duration of the block only."""
    path = ROOT / "fedtrust" / "compression" / "codecs" / "evenk.py"
    assert not path.exists(), f"{path} is left over from an interrupted run: remove it"
    path.write_text(TOY)
    try:
        yield path
    finally:
        path.unlink()


def test_no_file_of_the_app_knows_the_toy() -> None:
    sources = [p for d in ("fedtrust", "clients", "strategies", "experiments") for p in (ROOT / d).rglob("*.py")]
    assert not [p for p in sources if "evenk" in p.read_text()]  # (the toy module exists only during the run)


def test_a_toy_codec_in_one_module_runs_a_simulation_with_both_attackers(tmp_path: Path) -> None:
    cfg = {"compressor": "evenk", "model": "convnet", "num-server-rounds": 2, "eval-samples": 200,
           "intercept-rounds": "1", "intercept-clients": "all", "attack": "gradinv", "attack-clients": "0",
           "attacker": "both", "attack-iterations": 30, "mia": False,
           "output-dir": str(tmp_path / "runs"), "run-name": "toy"}
    with toy_codec_installed(), LocalSuperLink() as link:
        outcome = link.run_app(ROOT, run_config=cfg, num_supernodes=2, timeout=600)
    assert outcome.ok, f"{outcome.status} {outcome.details}\n{outcome.log[-4000:]}"
    folder = tmp_path / "runs" / "toy"
    with (folder / "rounds.csv").open() as fh:
        rounds = list(csv.DictReader(fh))
    item = InterceptedUpdate.load(folder / "intercepted" / "round1_client0.pt")
    half = sum((math.prod(t.shape) + 1) // 2 for t in item.decoded.values())
    assert sorted(item.payload) == sorted(f"values/{n}" for n in item.decoded)
    assert item.compressor["compressor"] == "evenk"
    # the server measured exactly what the toy sends: half the coordinates, float32
    assert [int(r["uplink_bytes"]) for r in rounds] == [2 * 4 * half] * 2, rounds
    assert all(r["rejected"] == "0" and r["clients"] == "2" for r in rounds), rounds
    with (folder / "gradinv.csv").open() as fh:
        attacks = list(csv.DictReader(fh))
    assert sorted(r["attacker"] for r in attacks) == ["adaptive", "naive"], attacks
    assert all(-1 <= float(r["ssim"]) <= 1 for r in attacks)
