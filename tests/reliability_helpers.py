"""Small builders shared by the tests/test_reliability_*.py files (one per failure class of issue 15).

Everything is built at run time under tmp_path: tiny random checkpoints (a few
seconds to make) and corpora pointing at the shared FSDD recordings.

Example:
    >>> ckpt = tiny_ctc(tmp_path / "ctc.pt")                        # doctest: +SKIP
    >>> scp = wav_scp(tmp_path / "wav.scp", {"a": "/x/a.wav"})      # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

VOCAB_LETTERS = ["|", "E", "O", "N", "T", "W", "H", "R", "I", "F", "V", "S", "X", "Z", "G"]


def tiny_ctc(path: Path, *, nan: bool = False) -> Path:
    """A random tiny wav2vec 2.0 CTC checkpoint (with ``nan``, every weight NaN)."""
    from w2vtools.formats.labels import ctc_vocabulary
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.ctc import CTCModel
    from w2vtools.models.presets import get_preset
    from w2vtools.models.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(0)
    vocab = ctc_vocabulary(VOCAB_LETTERS)
    ctc = CTCModel(Wav2Vec2Model(get_preset("wav2vec2", "tiny")), len(vocab)).eval()
    with torch.no_grad():
        ctc.proj.bias[5:10] += 3.0  # a readable output: some letters win
        if nan:
            for p in ctc.parameters():
                p.fill_(float("nan"))
    save_model(path, LoadedModel("wav2vec2", "ctc", ctc, ctc.config, dictionary=vocab))
    return path


def tiny_wav2vec2(path: Path) -> Path:
    """A random tiny wav2vec 2.0 pretraining checkpoint (an encoder with a quantizer)."""
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", "tiny")
    save_model(path, LoadedModel(family="wav2vec2", task="pretrain", model=model_class_for("wav2vec2")(cfg).eval(),
                                 config=cfg))
    return path


def wav_scp(path: Path, entries: dict[str, object]) -> Path:
    """Write a ``wav.scp`` of ``uid source`` lines."""
    path.write_text("".join(f"{uid} {src}\n" for uid, src in entries.items()), encoding="utf-8")
    return path


def bad_wav(path: Path) -> Path:
    """A file that claims to be a WAV and is not."""
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return path


def w2v_popen(*args, cwd=None) -> subprocess.Popen:
    """Start the real CLI in the background, running this checkout's code."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Ctrl-C as at a terminal: a suite started in the background (`make test &`, nohup) inherits
    # SIGINT ignored, and a Python started that way ignores it too, by design (background jobs
    # ignore Ctrl-C), so a SIGINT test would hang instead of testing w2v's handler.
    return subprocess.Popen([sys.executable, "-m", "w2vtools", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until true; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
