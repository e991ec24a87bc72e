"""The ``w2v`` entry point: instant help, an example in every subcommand's help, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from w2vtools.cli import COMMANDS

CLI = Path(__file__).resolve().parents[1] / "w2vtools" / "cli"


def test_every_cli_module_is_a_listed_command():
    # a module that defines a click `command` is a subcommand; others (shared options) are not
    modules = sorted(p.stem for p in CLI.glob("*.py") if p.name != "__init__.py" and "\ndef command(" in p.read_text())
    assert modules == sorted(COMMANDS)


def test_top_level_help_is_fast_and_imports_nothing_heavy(w2v):
    w2v("--help")  # warm the file cache
    start = time.perf_counter()
    proc = w2v("--help")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"w2v --help took {elapsed:.2f} s"
    assert "manifest" in proc.stdout and "Example" in proc.stdout
    code = "import sys; from w2vtools.cli import cli; cli.main(['--help'], standalone_mode=False); " \
           "print(sorted(m for m in ('torch', 'torchaudio', 'numpy', 'soundfile', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_help_has_an_example(w2v, name):
    proc = w2v(name, "--help")
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    assert any(line.startswith("Example") for line in lines), proc.stdout
    # A worked example is a command line someone can paste.
    assert any(line.startswith(f"w2v {name} ") or line.startswith(f"$ w2v {name} ") for line in lines), proc.stdout


def test_manifest_usage_and_input_errors_are_one_line(tmp_path, w2v):
    proc = w2v("manifest", check=False)
    assert proc.returncode != 0 and "give a ROOT folder" in proc.stderr
    proc = w2v("manifest", tmp_path / "missing.tsv", "--to-kaldi", tmp_path / "k", check=False)
    assert proc.returncode == 1 and "missing.tsv: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = w2v("manifest", tmp_path / "empty", "--dest", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "no files ending in .flac" in proc.stderr
    proc = w2v("manifest", tmp_path / "empty", "--dest", "-", "--labels", tmp_path / "t", check=False)
    assert proc.returncode == 1
    proc = w2v("manifest", tmp_path / "empty", "--dest", tmp_path / "o", "--valid-percent", "1.5", check=False)
    assert proc.returncode == 1 and "between 0 and 1" in proc.stderr


def test_validate_kaldi_exit_status(tmp_path, w2v):
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("b /x.wav\na /y.wav\n")
    (d / "utt2spk").write_text("a a\nb b\n")
    (d / "spk2utt").write_text("a a\nb b\n")
    proc = w2v("manifest", "--validate-kaldi", d, "--no-text", check=False)
    assert proc.returncode == 1
    assert "wav.scp: not in sorted order" in proc.stderr
    (d / "wav.scp").write_text("a /y.wav\nb /x.wav\n")
    proc = w2v("manifest", "--validate-kaldi", d, "--no-text")
    assert "valid Kaldi data dir" in proc.stderr
    proc = w2v("manifest", "--validate-kaldi", d, check=False)
    assert proc.returncode == 1 and "no such file text" in proc.stderr
