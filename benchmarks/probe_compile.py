#!/usr/bin/env python3
"""Would ``torch.compile`` bring the CPU pretraining step closer to its floor? A probe.

Times forward and backward of wav2vec 2.0 BASE's 12 Transformer layers (our
:class:`~w2vtools.models.layers.TransformerSentenceEncoderLayer`, training mode) on one
batch shaped like ``bench_pretrain_step.py``'s (4 x 4 s: 199 frames), eager against
``torch.compile`` (inductor, which fuses elementwise work into generated C++ loops), in
alternating rounds. These layers are most of the pretraining step (their GEMMs most of its
floor), and the work outside the GEMMs is what keeps the step from its floor
(BENCHMARKS.md, "Floor goals").

Dropout, three ways (``--dropout``):

* ``ours``: the model's own CPU dropout (:func:`w2vtools.models.layers.dropout`); its
  ``random_`` is not traceable, so dynamo breaks the graph at every dropout;
* ``torch``: ``F.dropout`` while compiling (inductor generates its random numbers inside the
  fused loops), ours in eager;
* ``off``: p = 0, the fusion gain alone.

Run:  python benchmarks/probe_compile.py [--dtype bf16] [--dropout torch] [--mode max-autotune]
Prints ms per step for each system, the ratio, and the compile time. A probe, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast")
    ap.add_argument("--dropout", choices=["ours", "torch", "off"], default="torch")
    ap.add_argument("--mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round (after 2 untimed)")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    import w2vtools.models.layers as layers_module
    from w2vtools.models.layers import TransformerSentenceEncoderLayer

    torch.set_num_threads(args.threads)
    if args.dropout == "torch":
        ours = layers_module.dropout

        def dropout(x, p, training):  # the layers look this name up at call time
            return F.dropout(x, p, training) if torch.compiler.is_compiling() else ours(x, p, training)

        layers_module.dropout = dropout
    p = 0.0 if args.dropout == "off" else 0.1
    torch.manual_seed(0)
    stack = [TransformerSentenceEncoderLayer(768, 3072, 12, dropout=p, attention_dropout=p).train()
             for _ in range(12)]
    compiled = [torch.compile(layer, mode=None if args.mode == "default" else args.mode) for layer in stack]
    x0 = torch.randn(4, 199, 768)

    def step(layers) -> None:
        h = x0.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16, enabled=args.dtype == "bf16"):
            for layer in layers:
                h = layer(h, None)
            loss = h.float().pow(2).mean()
        loss.backward()

    t0 = time.perf_counter()
    step(compiled)
    compile_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        for name, layers in (("eager", stack), ("compiled", compiled)):
            for _ in range(2):
                step(layers)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(layers)
            times[name].append(1000 * (time.perf_counter() - t0) / args.steps)
    print(f"BASE's 12 Transformer layers, 4 x 199 frames, forward and backward, {args.dtype}, dropout "
          f"{args.dropout}, mode {args.mode}, {args.threads} threads, torch {torch.__version__}")
    for name, t in times.items():
        print(f"  {name:9s} {statistics.median(t):8.1f} ms per step (rounds: {', '.join(f'{v:.0f}' for v in t)})")
    ratio = statistics.median(times["eager"]) / statistics.median(times["compiled"])
    print(f"  compiled / eager speed: {ratio:.2f}x; first compiled step (compiling) {compile_s:.1f} s")


if __name__ == "__main__":
    main()
