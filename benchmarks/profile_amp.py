#!/usr/bin/env python3
"""Where autocast spends a wav2vec 2.0 forward: float32 vs bf16 (and fp16 on CUDA), encoder vs model.

1. The model (random weights, ``--preset``) runs over ``--num-utts`` (30) utterances of distinct
   lengths (2-15 s), twice per setting: the first pass meets new shapes (cuDNN/oneDNN pick their
   kernels), the second repeats them, so first-pass costs and steady-state costs show apart.
2. Whole ``featurize()`` calls (as ``w2v featurize`` makes them, float32 and ``--amp``) in one
   process on noise WAVs of those lengths: corpus A first (the process's one-time costs), then
   corpus B of other lengths (new shapes only), then B again (steady state).
3. On CUDA, a ``torch.profiler`` table of one autocast pass over new shapes.

This is how the bf16 positional convolution was found to take most of a bf16 forward on an H200
(BENCHMARKS.md, GPU).

Run:  python benchmarks/profile_amp.py [--device cuda] [--preset base]
This is a profile, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2vtools.models.presets import get_preset  # noqa: E402
from w2vtools.models.wav2vec2 import Wav2Vec2Model  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def featurize_passes(model: Wav2Vec2Model, lengths: list[int], device: torch.device) -> None:
    """Time whole ``featurize()`` calls in this process: corpus A, corpus B (new lengths), B again."""
    import soundfile as sf

    from w2vtools.encoders import encoder_from_module
    from w2vtools.featurize import featurize

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        scps = {}
        for corpus, shift in (("A", 0), ("B", 1601)):  # B: every length new (a tenth of a second off)
            lines = []
            for i, n in enumerate(lengths):
                path = Path(tmp) / f"{corpus}{i:03d}.wav"
                sf.write(path, (rng.standard_normal(n + shift) * 0.1).astype(np.float32), 16000, subtype="PCM_16")
                lines.append(f"{corpus}{i:03d} {path}\n")
            scps[corpus] = Path(tmp) / f"{corpus}.scp"
            scps[corpus].write_text("".join(lines))
        enc = encoder_from_module(model, "random", "wav2vec2")
        audio_s = sum(lengths) / 16000
        for amp in (False, True):
            label = "--amp" if amp else "fp32 "
            for k, corpus in enumerate(("A", "B", "B")):
                t0 = time.perf_counter()
                featurize(str(scps[corpus]), str(Path(tmp) / f"out{amp}{k}.h5"), model=enc, device=str(device),
                          amp=amp, progress=False, resume=False)
                wall = time.perf_counter() - t0
                what = ("first call", "new lengths", "same lengths")[k]
                print(f"featurize {label} corpus {corpus} ({what:12s}) {wall * 1e3:8.1f} ms "
                      f"({audio_s / wall:8.0f} audio-s/s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--num-utts", type=int, default=30)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = Wav2Vec2Model(get_preset("wav2vec2", args.preset)).eval().to(dev)
    n = max(2, args.num_utts)
    lengths = [int(16000 * (2 + 13 * i / (n - 1))) for i in range(n)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run(waves, dtype: str, part: str) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(dev.type, dtype=DTYPES[dtype] or torch.float32,
                                                    enabled=DTYPES[dtype] is not None):
            for x in waves:
                model.feature_extractor(x) if part == "encoder" else model.extract_features(x)
        sync()
        return time.perf_counter() - t0

    waves = [torch.randn(1, n, device=dev) * 0.1 for n in lengths]
    audio_s = sum(lengths) / 16000
    dtypes = ("fp32", "bf16", "fp16") if dev.type == "cuda" else ("fp32", "bf16")
    for part in ("encoder", "model"):
        for dtype in dtypes + dtypes:
            first, second = run(waves, dtype, part), run(waves, dtype, part)
            print(f"{part:8s} {dtype}: first pass {first * 1e3:8.1f} ms, second pass {second * 1e3:8.1f} ms "
                  f"({audio_s / second:8.0f} audio-s/s)", flush=True)
    featurize_passes(model, lengths, dev)
    if dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        for dtype, shift in (("bf16", 7), ("fp16", 11)):
            new_shapes = [torch.randn(1, n + shift, device=dev) * 0.1 for n in lengths[:10]]
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                run(new_shapes, dtype, "model")
            print(f"{dtype}, 10 new lengths:")
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
