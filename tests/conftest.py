"""Shared test fixtures.

Real speech lives in ``../shared/data`` (or ``$W2V_SHARED_DATA``), outside the
repository. Tests that need it take the ``shared_data`` fixture: it skips with a
reason when the folder is absent, and fails instead when CI sets
``W2V_REQUIRE_SHARED_DATA=1``. Fixtures built from it are written under tmp_path
at run time; nothing from it is copied into the project.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _shared_data_dir() -> Path:
    env = os.environ.get("W2V_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skip (or fail under W2V_REQUIRE_SHARED_DATA=1) when absent."""
    d = _shared_data_dir()
    if not (d / "fsdd" / "recordings").is_dir():
        msg = f"shared speech data not found at {d} (set W2V_SHARED_DATA)"
        if os.environ.get("W2V_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " but W2V_REQUIRE_SHARED_DATA=1")
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def fsdd(shared_data: Path) -> Path:
    """The FSDD recordings folder (3000 WAVs, 8 kHz)."""
    return shared_data / "fsdd" / "recordings"


@pytest.fixture(scope="session")
def ljspeech(shared_data: Path) -> Path:
    """The LJ Speech folder: wavs/*.flac (22.05 kHz) and metadata.csv."""
    return shared_data / "ljspeech"


@pytest.fixture(scope="session")
def kenlm_tools() -> None:
    """KenLM's lmplz and build_binary (tools/install_kenlm.sh); skip without them, or fail
    under W2V_REQUIRE_KENLM=1 (CI)."""
    from w2vtools.errors import W2VError
    from w2vtools.lm import find_kenlm_tool

    try:
        find_kenlm_tool("lmplz")
        find_kenlm_tool("build_binary")
    except W2VError:
        msg = "KenLM's lmplz/build_binary not found (run tools/install_kenlm.sh)"
        if os.environ.get("W2V_REQUIRE_KENLM") == "1":
            pytest.fail(msg + " but W2V_REQUIRE_KENLM=1")
        pytest.skip(msg)


def run_w2v(*args: str, input: str | bytes | None = None, check: bool = True, cwd=None, env=None):
    """Run the real ``w2v`` CLI in a subprocess; returns CompletedProcess (text mode unless input is bytes)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    text = not isinstance(input, bytes)
    proc = subprocess.run(
        [sys.executable, "-m", "w2vtools", *map(str, args)],
        input=input,
        capture_output=True,
        text=text,
        cwd=cwd,
        env=full_env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"w2v {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture
def w2v():
    """The CLI runner: ``w2v("manifest", root, "--dest", out)``."""
    return run_w2v


#: Updates of the test's word Transformer LM on LJ Speech's LM text (5% held out): the first
#: 400 of the tiny preset's 2000 (its learning-rate schedule unchanged), about a fifth of the
#: full run (BENCHMARKS.md "Transformer LM" has both)
LJSPEECH_LM_UPDATES = 400


@pytest.fixture(scope="session")
def ljspeech_word_lm(shared_data: Path, tmp_path_factory) -> Path:
    """A tiny word Transformer LM (`w2v lm --neural`) trained on ljspeech/lm_text.txt, normalized with the
    LibriSpeech letter dictionary of ``emissions/``; its run folder (checkpoint_best.pt, train.txt, valid.txt)."""
    out = tmp_path_factory.mktemp("ljspeech_lm") / "nlm"
    proc = run_w2v("lm", shared_data / "ljspeech" / "lm_text.txt", "--neural", "--unit", "word", "--preset", "tiny",
                   "-o", out, "--dict", shared_data / "emissions" / "dict.ltr.txt", "--stop-at-update",
                   LJSPEECH_LM_UPDATES, "--valid-interval", LJSPEECH_LM_UPDATES, "--threads", "1", "--device", "cpu")
    (out / "stdout.txt").write_text(proc.stdout)
    return out
