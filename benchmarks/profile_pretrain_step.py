#!/usr/bin/env python3
"""Where one wav2vec 2.0 pretraining step of ours spends its CPU time: torch.profiler's op table.

The same batch, trainer and threads as ``bench_pretrain_step.py``'s ``ours`` worker; one warm-up
step, then one profiled step. BENCHMARKS.md ("Current") reads the shares from it.

Run:  python benchmarks/profile_pretrain_step.py [--amp bf16] [--threads 2] [--preset base]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain_step as bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="base", choices=["base", "tiny"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--top", type=int, default=25, help="rows of the table")
    ap.set_defaults(steps=1)  # the worker asks for it; one step is profiled
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    x = np.load(bench.make_batch(Path(tempfile.mkdtemp()) / "x.npy", 4, 4.0))
    captured = {}

    def profiled_steps(step, warmup: int, steps: int) -> list[float]:  # noqa: ARG001
        for _ in range(args.warmup):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        captured["prof"] = prof
        return [0.0]

    bench._time_steps = profiled_steps  # the worker's timing loop, replaced by one profiled step
    bench.worker_ours(x, args, args.amp)
    events = captured["prof"].key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"amp={args.amp} threads={args.threads} preset={args.preset}: ops' own CPU time {total / 1e6:.2f} s")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(f"{e.key:45s} {e.self_cpu_time_total / 1e6:7.3f} s {100 * e.self_cpu_time_total / total:5.1f} %  "
              f"calls {e.count}")


if __name__ == "__main__":
    main()
