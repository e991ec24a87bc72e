#!/usr/bin/env python3
"""Decode memory against recording length: ``w2v decode --model`` on 1, 5, 20 and 60 minutes.

Recordings: LJ Speech clips (../shared/data/ljspeech) resampled to 16 kHz and
concatenated, whole clips cycled, into one WAV per length (``--minutes``). Model: a tiny
wav2vec 2.0 CTC model (the ``tiny`` preset, random weights, 28 letters): the memory that
grows with a recording is activations and audio, which a random model has as a trained one
does; a BASE model adds its weights (~360 MB) and larger activations per window.

Each decode runs in a fresh process (``w2v decode REC --model M -o hyp --ctm ctm``, the
runner's defaults: 60 s windows, 2 s overlap, 5 s batches on a CPU); its peak resident size
(ru_maxrss) and wall time are reported. ``--whole-up-to M`` also decodes recordings up to M
minutes in one piece (``--chunk-seconds`` larger than the recording), as decode did before
the runner, for comparison (the attention of a 20-minute piece alone would take tens of GB).

Run:  python benchmarks/bench_decode_memory.py [--minutes 1,5,20,60] [--whole-up-to 5] [--json out.json]
This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from common import add_common_args, Result, shared_data  # noqa: E402


def make_recordings(data: Path, minutes: list[float], folder: Path) -> dict[float, Path]:
    import soundfile as sf

    from w2vtools.audio import load_audio

    clips = [load_audio(str(p), sample_rate=16000) for p in sorted((data / "ljspeech" / "wavs").glob("*.flac"))]
    out = {}
    for m in minutes:
        waves, total = [], 0
        while total < m * 60 * 16000:
            waves.append(clips[len(waves) % len(clips)])
            total += len(waves[-1])
        path = folder / f"lj{m:g}min.wav"
        sf.write(path, np.concatenate(waves), 16000, subtype="PCM_16")
        (folder / f"lj{m:g}min.scp").write_text(f"lj{m:g}min {path}\n")
        out[m] = folder / f"lj{m:g}min.scp"
    return out


def tiny_ctc(path: Path) -> Path:
    import torch

    from w2vtools.formats.labels import ctc_vocabulary
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.ctc import CTCModel
    from w2vtools.models.presets import get_preset
    from w2vtools.models.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(0)
    vocab = ctc_vocabulary(["|", *"ETAONIHSRDLUMWCFGYPBVKXJQZ", "'"])
    ctc = CTCModel(Wav2Vec2Model(dataclasses.replace(get_preset("wav2vec2", "tiny"))), len(vocab)).eval()
    save_model(path, LoadedModel("wav2vec2", "ctc", ctc, ctc.config, dictionary=vocab))
    return path


def decode_peak(scp: Path, model: Path, out: Path, *options: str) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one ``w2v decode`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "w2vtools", "decode", str(scp), "--model", str(model),
                             "-o", f"{out}.txt", "--ctm", f"{out}.ctm", "--no-progress", *options], env=env,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"decode {scp} failed:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(shared_data()))
    ap.add_argument("--minutes", default="1,5,20,60")
    ap.add_argument("--whole-up-to", type=float, default=1.0, help="also decode these in one piece (minutes)")
    add_common_args(ap)
    args = ap.parse_args()
    minutes = [float(m) for m in args.minutes.split(",")]
    systems, notes = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scps = make_recordings(Path(args.data), minutes, folder)
        model = tiny_ctc(folder / "tiny.pt")
        for m in minutes:
            mb, wall = decode_peak(scps[m], model, folder / f"hyp{m:g}")
            print(f"{m:g} min: peak RSS {mb:.0f} MB, {wall:.1f} s (windows)")
            systems[f"windows {m:g} min peak MB"] = mb
            notes.append(f"{m:g} min windows: {mb:.0f} MB, {wall:.1f} s")
            if m <= args.whole_up_to:
                mb, wall = decode_peak(scps[m], model, folder / f"whole{m:g}", "--chunk-seconds", "100000")
                print(f"{m:g} min: peak RSS {mb:.0f} MB, {wall:.1f} s (whole recording)")
                systems[f"whole {m:g} min peak MB"] = mb
                notes.append(f"{m:g} min whole: {mb:.0f} MB, {wall:.1f} s")
    Result("decode_memory", "MB (lower is better)", systems, notes=notes).write(args.json)


if __name__ == "__main__":
    main()
