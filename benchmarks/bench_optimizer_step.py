#!/usr/bin/env python3
"""The optimizer step alone: our trainer's Adam against fairseq's and PyTorch's other AdamW paths.

The parameters of wav2vec 2.0 BASE (95 M in 218 tensors; ``--preset``) with random gradients;
each system builds its optimizer over them, takes ``--warmup`` steps, then the best of
``--repeat`` timings of ``--steps`` steps counts. Systems:

* ``ours``: :func:`w2vtools.train.trainer._optimizer`, what every ``w2v`` training command
  uses (PyTorch's fused AdamW on CPU and CUDA);
* ``torch-foreach``: ``torch.optim.AdamW(foreach=True)``, what the trainer used before;
* ``torch-loop``: ``torch.optim.AdamW(foreach=False)``, one tensor at a time;
* ``fairseq``: ``fairseq.optim.adam.Adam`` (fairseq's ``adam``: its own per-tensor Python loop),
  in fairseq's venv (``--fairseq-python``, ``$W2V_FAIRSEQ_PYTHON`` or ``.peers/fairseq``), on
  the same shapes; skipped when that venv is absent.

The same hyper-parameters for all (lr 5e-4, betas 0.9/0.98, eps 1e-6, weight decay 0.01, as
fairseq's BASE pretraining). Each system runs in its own fresh process, in turn, ``--rounds``
times; the median over rounds is reported.

Run:  python benchmarks/bench_optimizer_step.py [--threads 2] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Result, add_common_args, fairseq_python  # noqa: E402

SYSTEMS = ("ours", "torch-foreach", "torch-loop", "fairseq")
HYPER = {"lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01}


def shapes_of(preset: str) -> list[list[int]]:
    """The shapes of the model's parameters (built once, in our process)."""
    sys.path.insert(0, str(REPO))
    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    model = model_class_for("wav2vec2")(get_preset("wav2vec2", preset))
    return [list(p.shape) for p in model.parameters()]


def worker(system: str, shapes: list[list[int]], args) -> dict:
    """Time ``system``'s optimizer step in this process (seconds per step)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    if system == "ours":
        sys.path.insert(0, str(REPO))
        from w2vtools.train.config import OptimConfig
        from w2vtools.train.trainer import _optimizer

        opt = _optimizer(params, OptimConfig(lr=HYPER["lr"], betas=list(HYPER["betas"]), eps=HYPER["eps"],
                                             weight_decay=HYPER["weight_decay"]))
    elif system == "fairseq":
        from fairseq.optim.adam import Adam

        opt = Adam(params, **HYPER)
    else:
        opt = torch.optim.AdamW(params, foreach=system == "torch-foreach", **HYPER)
    for _ in range(args.warmup):
        opt.step()
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        best = min(best, (time.perf_counter() - t0) / args.steps)
    return {"seconds": best, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "tensors": len(params), "parameters": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base", choices=["base", "large", "tiny"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="every system this many times, in turn")
    ap.add_argument("--fairseq-python", default=None,
                    help="fairseq venv's interpreter (default: $W2V_FAIRSEQ_PYTHON, then .peers/fairseq/bin/python)")
    add_common_args(ap)
    ap.add_argument("--worker", choices=SYSTEMS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(Path(args.shapes).read_text()), args)))
        return

    import tempfile

    shapes = shapes_of(args.preset)
    shapes_file = Path(tempfile.mkdtemp(prefix="w2v-bench-optim-")) / "shapes.json"
    shapes_file.write_text(json.dumps(shapes))
    fairseq = fairseq_python(args.fairseq_python)
    pythons = {s: sys.executable for s in SYSTEMS}
    if fairseq:
        pythons["fairseq"] = fairseq
    else:
        print("fairseq: no venv (run benchmarks/setup_peers.sh); skipped", file=sys.stderr)
        del pythons["fairseq"]
    times: dict[str, list[float]] = {s: [] for s in pythons}
    info: dict[str, dict] = {}
    for _ in range(args.rounds):
        for system, python in pythons.items():
            cmd = [python, __file__, "--worker", system, "--shapes", str(shapes_file), "--threads", str(args.threads),
                   "--warmup", str(args.warmup), "--steps", str(args.steps), "--repeat", str(args.repeat)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"{system}: worker failed:\n{p.stderr[-2000:]}")
            info[system] = json.loads(p.stdout.strip().splitlines()[-1])
            times[system].append(info[system]["seconds"])
    ms = {s: 1000 * statistics.median(t) for s, t in times.items()}
    n = info["ours"]["parameters"]
    print(f"{args.preset}: {n / 1e6:.1f} M parameters in {info['ours']['tensors']} tensors, {args.threads} threads, "
          f"median of {args.rounds} rounds (best of {args.repeat} x {args.steps} steps each)")
    for s, v in ms.items():
        print(f"{s:14s} {v:8.1f} ms/step   {n / v / 1e6:6.2f} G params/s   torch {info[s]['torch']}")
    for peer in ms:
        if peer != "ours":
            print(f"ours vs {peer}: {ms[peer] / ms['ours']:.2f}x")
    Result("optimizer step", "steps/s", {s: 1000 / v for s, v in ms.items()},
           ratios=[("ours", p) for p in ms if p != "ours"],
           drivers={"parameters": n, "tensors": info["ours"]["tensors"]},
           ).write(args.json, args.threads)


if __name__ == "__main__":
    main()
