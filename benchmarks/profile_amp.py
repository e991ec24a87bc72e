#!/usr/bin/env python3
"""Where bf16 autocast spends a wav2vec 2.0 forward: float32 vs bf16, feature encoder vs whole model.

The model (random weights, ``--preset``) runs over ``--num-utts`` (30) utterances of distinct lengths (2-15 s),
twice per setting: the first pass meets new shapes (cuDNN/oneDNN pick their kernels), the second
repeats them, so first-pass costs and steady-state costs show apart. Then a ``torch.profiler``
table of one bf16 pass over new shapes (CUDA only). This is how the bf16 positional convolution
was found to take most of a bf16 forward on an H200 (BENCHMARKS.md, GPU).

Run:  python benchmarks/profile_amp.py [--device cuda] [--preset base]
This is a profile, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2vtools.models.presets import get_preset  # noqa: E402
from w2vtools.models.wav2vec2 import Wav2Vec2Model  # noqa: E402


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
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            for x in waves:
                model.feature_extractor(x) if part == "encoder" else model.extract_features(x)
        sync()
        return time.perf_counter() - t0

    waves = [torch.randn(1, n, device=dev) * 0.1 for n in lengths]
    audio_s = sum(lengths) / 16000
    for part in ("encoder", "model"):
        for dtype in ("fp32", "bf16", "fp32", "bf16"):
            first, second = run(waves, dtype, part), run(waves, dtype, part)
            print(f"{part:8s} {dtype}: first pass {first * 1e3:8.1f} ms, second pass {second * 1e3:8.1f} ms "
                  f"({audio_s / second:8.0f} audio-s/s)", flush=True)
    if dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        new_shapes = [torch.randn(1, n + 7, device=dev) * 0.1 for n in lengths[:10]]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(new_shapes, "bf16", "model")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()
