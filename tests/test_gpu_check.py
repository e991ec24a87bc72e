"""benchmarks/gpu_check.sh, the GPU run kept ready for when a GPU is lent, runs end to end on
the CPU with --dry-run (tiny models, a few utterances), so it cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path, shared_data, kenlm_tools):
    env = dict(os.environ, W2V_PYTHON=sys.executable, W2V_SHARED_DATA=str(shared_data))
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    for step in ("doctor", "cudatests", "data", "featurize", "pretrain", "ddp", "decode", "amp"):
        assert f"| {step} | ok |" in table, table
    assert "skipped" in table.split("| cudatests | ok |")[1].splitlines()[0]  # no CUDA here: each skips
    assert "max relative loss difference" in table and "real-time factor" in table and "%WER" in table
    assert "featurize --amp" in table and "model    bf16" in table  # the amp step: model and whole featurize calls
    assert (tmp_path / "out" / "featurize.json").is_file() and (tmp_path / "out" / "pretrain_step.json").is_file()
