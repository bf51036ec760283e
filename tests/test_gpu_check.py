"""The GPU check script: it refuses clearly where there is no GPU, and its sign comparison works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_says_why_it_checks_nothing_without_a_gpu(tmp_path):
    report = tmp_path / "report.md"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(report)], capture_output=True, check=False,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 2
    assert "sees no CUDA device" in done.stderr and "nothing was checked" in done.stderr
    assert not report.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_names_a_missing_torch(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "r.md")],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": "/usr/bin/python3", "PYTHONNOUSERSITE": "1"})
    if "sees no CUDA device" in done.stderr:
        pytest.skip("the system python has torch")
    assert done.returncode == 2 and "torch is not importable" in done.stderr


def test_powersgd_sign_comparison_counts_flipped_columns(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import powersgd_signs
    finally:
        sys.path.remove(str(ROOT / "bench"))
    columns, flipped, worst = powersgd_signs.compare(3, 0, torch.device("cpu"))
    assert columns > 0 and flipped == 0 and worst == 0.0
    # A "device" whose QR returns every other column negated is caught, and the aligned difference is zero.
    real = powersgd_signs.orthogonalize

    def negating(matrix):
        out = real(matrix)
        return out * torch.tensor([(-1.0) ** i for i in range(out.shape[1])]) if matrix.shape[1] > 2 else out

    calls = iter(range(10**6))
    monkeypatch.setattr(powersgd_signs, "orthogonalize", lambda m: real(m) if next(calls) % 2 == 0 else negating(m))
    columns, flipped, worst = powersgd_signs.compare(3, 0, torch.device("cpu"))
    assert flipped == columns // 3 and worst < 1e-6
