#!/usr/bin/env python3
"""Where one wav2vec 2.0 pretraining step of ours spends its time, and how far its GEMMs are from the floor.

The same batch, trainer and threads as ``bench_pretrain_step.py``'s ``ours`` worker; three
warm-up steps (the heap has grown by then), then ``--steps`` steps in which every aten op is
timed where it is dispatched (wall time, all intra-op threads inside it) and, for GEMMs,
attention and convolutions, its FLOPs counted. Each op's time is its median over those steps:
on a VM a step still page-faults now and then (each fault tens of microseconds), and a fault
lands on whichever op touches new memory. The table groups the ops; the last lines say
what the step would take if every GEMM and convolution ran at the machine's best GEMM rate
(measured here, as the benchmark measures its floor) and nothing else changed.

Why not ``torch.profiler``: under it the first convolution block's elementwise ops took
20-40x what they take timed here (the group norm's backward 0.41 s against 10 ms), and its ops'
times added up to 5.5 s for a 4.1 s step (its own cost, or the page faults its allocations
cause); the ops' times here add up to the step's.

Run:  python benchmarks/profile_pretrain_step.py [--amp bf16] [--threads 2] [--preset base]
"""

from __future__ import annotations

import argparse
import collections
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain_step as bench  # noqa: E402

GEMMS = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu",
         "_scaled_dot_product_flash_attention_for_cpu_backward"}
CONVOLUTIONS = {"convolution", "_convolution", "mkldnn_convolution", "convolution_backward"}
COPIES = {"copy_", "clone", "_to_copy", "contiguous"}
RANDOM = {"uniform_", "rand", "random_", "bernoulli_", "exponential_", "normal_", "randint", "randperm", "multinomial"}
NORMS = {"native_group_norm", "native_group_norm_backward", "native_layer_norm", "native_layer_norm_backward"}


def op_group(name: str) -> str:
    """The row of the grouped table an op's time counts in."""
    if name in GEMMS:
        return "GEMMs and attention"
    if name in CONVOLUTIONS:
        return "convolutions left to oneDNN (all of them under bf16 autocast)"
    if name in COPIES:
        return "copies (layout, dtype)"
    if name in RANDOM:
        return "random numbers (masks, dropout, Gumbel noise)"
    if name in NORMS:
        return "layer and group norms"
    if name.startswith("gelu"):
        return "GELU"
    if "adam" in name:
        return "optimizer"
    return "other elementwise and bookkeeping"


def _convolution_backward_flops(grad_out, x, weight, *args, out_val=None, **kwargs) -> int:
    """Input and weight gradients, each a forward's FLOPs. torch 2.14's own formula ignores
    ``groups``: 129 GFLOP for the positional convolution's backward (16 groups) instead of 15."""
    output_mask = args[-1]
    forward = 2 * grad_out.numel() * weight[0].numel()  # weight[0]: (C_in / groups, kernel)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_formulas() -> dict:
    """FLOP formulas of GEMMs, attention and convolutions, keyed by op: torch's, with the two
    that torch 2.14 lacks from ``profile_featurize.uncounted_flops`` (``addmm_``, CPU SDPA) and
    a convolution backward that counts groups. Called as ``formula(*args, out_val=out, **kwargs)``."""
    import torch
    from torch.utils.flop_counter import flop_registry, shape_wrapper

    from profile_featurize import uncounted_flops

    return {**flop_registry, **{op: shape_wrapper(f) for op, f in uncounted_flops().items()},
            torch.ops.aten.convolution_backward: _convolution_backward_flops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="base", choices=["base", "tiny"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (each op's median over them)")
    ap.add_argument("--top", type=int, default=15, help="rows of the per-op table")
    args = ap.parse_args()
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    seconds = collections.Counter()  # of the step being timed
    flops = collections.Counter()
    formulas = flop_formulas()

    class OpTimer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.perf_counter()
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            elapsed = time.perf_counter() - t0
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))[:3]
            key = (func._overloadpacket.__name__, shapes)
            seconds[key] += elapsed
            if func._overloadpacket in formulas:
                flops[key] += formulas[func._overloadpacket](*args, out_val=out, **kwargs)
            return out

    x = np.load(bench.make_batch(Path(tempfile.mkdtemp()) / "x.npy", 4, 4.0))

    per_step: list[collections.Counter] = []
    step_seconds = {"plain": [], "timed": [], "faults": []}

    def timed_steps(step, warmup: int, steps: int) -> list[float]:
        for _ in range(warmup):
            step()
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            step_seconds["plain"].append(time.perf_counter() - t0)
            seconds.clear()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            with OpTimer():
                t0 = time.perf_counter()
                step()
                step_seconds["timed"].append(time.perf_counter() - t0)
            step_seconds["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
            per_step.append(collections.Counter(seconds))
        return [0.0]

    bench._time_steps = timed_steps  # the worker's timing loop, replaced by the steps above
    bench.worker_ours(x, args, args.amp)
    keys = set().union(*per_step)
    seconds = {key: statistics.median(step.get(key, 0.0) for step in per_step) for key in keys}
    flops = {key: flops[key] / len(per_step) for key in keys}  # summed over the timed steps
    dtype = "bfloat16" if args.amp == "bf16" else "float32"
    rate = bench.worker_gemm(argparse.Namespace(threads=args.threads, device=args.device), dtypes=(dtype,))[dtype]

    total = sum(seconds.values())
    plain = statistics.median(step_seconds["plain"])
    print(f"amp={args.amp} threads={args.threads} preset={args.preset}, {len(per_step)} timed steps: step "
          f"{plain:.2f} s untimed (median), {statistics.median(step_seconds['timed']):.2f} s with every op timed, "
          f"ops' time (each op's median) {total:.2f} s; page faults per timed step {step_seconds['faults']}; "
          f"best {dtype} GEMM here {rate:.0f} GFLOP/s")
    groups = collections.defaultdict(lambda: [0.0, 0])
    for (name, shapes), s in seconds.items():
        groups[op_group(name)][0] += s
        groups[op_group(name)][1] += flops[(name, shapes)]
    print(f"{'group':62s} {'time':>8s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
    for group, (s, f) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        rate_txt = f"{f / s / 1e9:8.0f}" if f else ""
        print(f"{group:62s} {s:7.3f}s {100 * s / total:5.1f}% {f / 1e9:7.1f} {rate_txt}")
    print(f"\ntop {args.top} ops by time (op, input shapes):")
    for (name, shapes), s in sorted(seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        f = flops[(name, shapes)]
        rate_txt = f"  {f / s / 1e9:.0f} GFLOP/s" if f else ""
        print(f"{s:7.3f}s {100 * s / total:5.1f}%  {name} {list(shapes)}{rate_txt}")
    counted = sum(f for (_, f) in groups.values())
    at_probe = counted / (rate * 1e9)
    gemm_time = sum(s for (s, f) in groups.values() if f)
    # the rest of the step two ways: the other ops' summed times (each carries the timer's own
    # microseconds), and the untimed step less the GEMMs' and convolutions' time (a lower bound)
    rest_timed, rest_untimed = total - gemm_time, max(plain - gemm_time, 0.0)
    audio_s = x.shape[0] * x.shape[1] / 16000
    # the benchmark's floor (42.6 GFLOP per audio-s of BASE); another preset's, from the count
    per_audio_s = 42.6 if args.preset == "base" else counted / 1e9 / audio_s
    floor = audio_s * per_audio_s / rate
    print(f"\nFLOPs counted: {counted / 1e9:.0f} GFLOP per step ({counted / 1e9 / audio_s:.1f} per audio-s; the "
          f"floor assumes {per_audio_s:.1f}), {gemm_time:.2f} s at {counted / gemm_time / 1e9:.0f} GFLOP/s, "
          f"{100 * at_probe / gemm_time:.0f} % of the probe's rate. Now the step is at {100 * floor / plain:.0f} % "
          f"of the floor ({floor:.2f} s).")
    print(f"With every GEMM and convolution at the probe's rate ({at_probe:.2f} s) and the rest as it is "
          f"({rest_untimed:.2f}-{rest_timed:.2f} s), the step would reach "
          f"{100 * floor / (at_probe + rest_timed):.0f}-{100 * floor / (at_probe + rest_untimed):.0f} % of the floor.")


if __name__ == "__main__":
    main()
