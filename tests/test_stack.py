"""The installed stack: the lock matches the environment, and a broken torch/torchaudio pair
gives one line with the cause and the fix (``w2v doctor`` and every torchaudio-using command)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from w2vtools.errors import W2VError
from w2vtools.stack import LOCK, Drift, lock_drift, read_lock

LOCKED = {name: version for name, version, _ in read_lock()}

# What the broken install of 2026-12-01 printed: torchaudio 2.11.1 over torch 2.11.0.
UNDEFINED_SYMBOL = (
    "/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so: "
    "undefined symbol: torch_exception_get_what_without_backtrace"
)


def test_every_locked_distribution_is_installed_as_locked():
    """The environment the tests run in is the lock: a drifted install fails here, by name."""
    drift = lock_drift()
    assert not drift, "installed environment differs from requirements.lock: " + ", ".join(map(str, drift))


def test_lock_pins_the_chosen_torch_and_every_dependency():
    entries = {name: version for name, version, _ in read_lock()}
    chosen = (REPO / "tools" / "lock_constraints.txt").read_text()
    assert f"torch=={entries['torch']}" in chosen.split(), "the lock's torch is not the one tools/lock_constraints.txt chose"
    assert entries["torchaudio"].startswith("2.11.")
    for dist in ("click", "numpy", "h5py", "kaldiio", "kenlm", "flashlight-text", "pytest", "jiwer"):
        assert dist in entries, f"{dist} is not pinned in {LOCK.name}"
    assert all(version[0].isdigit() for version in entries.values())


def test_lock_drift_names_missing_and_mismatched_distributions(tmp_path):
    import numpy

    lock = tmp_path / "requirements.lock"
    lock.write_text(textwrap.dedent(f"""\
        # a comment
        numpy=={numpy.__version__}
            # via h5py
        click==0.0.1
        not-a-real-distribution-w2v==1.0
        only-on-another-os==1.0 ; sys_platform == 'nonexistent'
    """))
    drift = lock_drift(lock)
    assert [d.name for d in drift] == ["click", "not-a-real-distribution-w2v"]
    assert drift[1] == Drift("not-a-real-distribution-w2v", "1.0", None)
    assert "missing (lock: 1.0)" in str(drift[1])


def test_read_lock_refuses_a_range(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy>=1.26\n")
    with pytest.raises(W2VError, match=r"requirements.lock:1: not a 'name==version"):
        read_lock(lock)


@pytest.fixture
def broken_torchaudio(tmp_path) -> dict:
    """An environment where ``import torchaudio`` fails as it did with torchaudio 2.11.1 over
    torch 2.11.0: a torchaudio package whose import raises the loader's OSError, and
    distribution metadata saying torch 2.11.0 / torchaudio 2.11.1, ahead of site-packages."""
    site = tmp_path / "broken-site"
    (site / "torchaudio").mkdir(parents=True)
    (site / "torchaudio" / "__init__.py").write_text(f"raise OSError({UNDEFINED_SYMBOL!r})\n")
    for dist, version in (("torch", "2.11.0"), ("torchaudio", "2.11.1")):
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}


def _error_line(stderr: str, about: str) -> str:
    """The one stderr line of the form ``w2v CMD: error: ...`` that mentions ``about``."""
    errors = [line for line in stderr.splitlines() if ": error: " in line and about in line]
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1, stderr
    return errors[0]


def test_doctor_names_the_broken_pair_and_the_fix(w2v, broken_torchaudio):
    proc = w2v("doctor", env=broken_torchaudio, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _error_line(proc.stderr, "torchaudio")
    assert "torchaudio 2.11.1 does not load against torch 2.11.0" in line
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in line
    assert f"pip install torch=={LOCKED['torch']} torchaudio=={LOCKED['torchaudio']}" in line
    assert "MISSING  torchaudio" in proc.stdout
    # the metadata says torch 2.11.0, which the lock does not pin: the lock line says so too
    assert f"torch 2.11.0 (lock: {LOCKED['torch']})" in proc.stdout


def test_doctor_passes_on_the_locked_install(w2v):
    proc = w2v("doctor", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("torch", "torchaudio", "flashlight-text", "lmplz", "build_binary", "lock"):
        assert any(line.split()[:2] == ["ok", name] for line in proc.stdout.splitlines()), proc.stdout


def test_a_torchaudio_command_stops_with_the_cause_and_the_fix(w2v, broken_torchaudio, tmp_path):
    """featurize --model fbank needs torchaudio's Kaldi fbank: one line, exit 1, nothing written."""
    wav = tmp_path / "utt1.wav"
    t = np.arange(16000) / 16000
    sf.write(wav, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path}\nutt1.wav\t16000\n")
    out = tmp_path / "feats.h5"
    proc = w2v("featurize", manifest, out, "--model", "fbank", env=broken_torchaudio, check=False)
    assert proc.returncode == 1, proc.stderr
    line = _error_line(proc.stderr, "torchaudio")
    assert line.startswith("w2v featurize: error: torchaudio 2.11.1 does not load against torch 2.11.0")
    assert f"pip install torch=={LOCKED['torch']} torchaudio=={LOCKED['torchaudio']}" in line
    assert not out.exists()
