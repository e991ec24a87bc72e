#!/usr/bin/env python3
"""Forced-alignment speed: ``w2v align`` (:func:`w2vtools.align.align_utterance`) vs ``torchaudio.functional.forced_align``.

Emissions: the real wav2vec 2.0 output of LibriSpeech test-clean 121-121726-0000
(../shared/data/emissions, 422 frames, BASE 960h) and its transcript, and that emission
concatenated ``N`` times with the transcript ``N`` times (``--times``, default 1, 10, 50:
8.4 s, 84 s and 7 minutes of speech), the long recordings ``w2v align --segment`` takes.

Systems, on the same log-probabilities and targets, one utterance per call, best of
``--repeat`` interleaved passes:

* ``torchaudio``: ``forced_align`` alone (the path and its frame scores);
* ``w2v align``: :func:`~w2vtools.align.align_utterance`: the targets from the words, the
  path (``forced_align`` when its back-pointers fit 64 MB, else
  :func:`~w2vtools.align.checkpointed_viterbi`), letter and word segments with confidences;
* ``w2v checkpointed``: :func:`~w2vtools.align.checkpointed_viterbi` forced on every length
  (back-pointers for 1024 frames at a time), the route of long recordings.

Peak memory (``--memory``): each system aligns the emission ``--memory-times`` over (150:
21 minutes, the recipe of the 20-minute test) in a fresh process; its maximum resident size
(ru_maxrss) is reported, next to a process that only loads the emission.

Run:  python benchmarks/bench_align.py [--times 1,10,50] [--repeat 3] [--memory] [--json out.json]
This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from common import add_common_args, Result, shared_data  # noqa: E402

UID = "librispeech-121-121726-0000"


def load(data: Path, times: int):
    import torch

    from w2vtools.formats.labels import ctc_vocabulary, read_dictionary

    tokens = ctc_vocabulary(read_dictionary(data / "emissions" / "dict.ltr.txt"))
    logits = np.load(data / "emissions" / f"{UID}.logits.npy")
    words = (data / "emissions" / f"{UID}.expected.txt").read_text().split() * times
    lp = torch.log_softmax(torch.from_numpy(np.concatenate([logits] * times)), -1)
    targets = [tokens.index(c) for c in "|".join(words)]
    return tokens, lp, words, targets


def systems(tokens, lp, words, targets):
    import torch
    import torchaudio.functional as taf

    from w2vtools.align import align_utterance, checkpointed_viterbi

    tg = torch.tensor([targets], dtype=torch.int32)
    return {
        "torchaudio": lambda: taf.forced_align(lp[None], tg, blank=0),
        "w2v align": lambda: align_utterance("u", lp, words, tokens, 0.02),
        "w2v checkpointed": lambda: checkpointed_viterbi(lp, targets, block=1024),
    }


def peak_rss_mb(data: Path, times: int, system: str) -> float:
    """Align once in a fresh process; its ru_maxrss in MB."""
    run = "" if system == "load only" else f"[{system!r}]()"
    code = (f"import sys; sys.path[:0] = {[str(REPO), str(Path(__file__).parent)]!r}\n"
            f"from bench_align import load, systems; from pathlib import Path\n"
            f"systems(*load(Path({str(data)!r}), {times})){run}\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{system}: the memory probe failed")
    return usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(shared_data()))
    ap.add_argument("--times", default="1,10,50", help="concatenations of the real emission to align")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory", action="store_true", help="also the peak RSS of each system on --memory-times")
    ap.add_argument("--memory-times", type=int, default=150)
    add_common_args(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    rates: dict[str, float] = {}
    paths_equal = []
    for times in [int(x) for x in args.times.split(",")]:
        tokens, lp, words, targets = load(data, times)
        runs = systems(tokens, lp, words, targets)
        best = {name: float("inf") for name in runs}
        out = {}
        for _ in range(args.repeat):
            for name, fn in runs.items():
                t = time.perf_counter()
                out[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t)
        same = out["w2v align"].path == out["torchaudio"][0][0].tolist() == out["w2v checkpointed"][0].tolist()
        paths_equal.append(same)
        print(f"x{times}: {lp.shape[0]} frames ({lp.shape[0] * 0.02:.0f} s), {len(targets)} targets; "
              + ", ".join(f"{n} {1 / t:.1f} utt/s ({t * 1000:.1f} ms)" for n, t in best.items())
              + f"; paths equal: {same}")
        for name, t in best.items():
            rates[f"{name} x{times}"] = 1 / t
    notes = [f"paths equal to forced_align: {all(paths_equal)}"]
    if args.memory:
        longest = args.memory_times
        for name in ("load only", "torchaudio", "w2v align"):
            mb = peak_rss_mb(data, longest, name)
            print(f"peak RSS x{longest}, {name}: {mb:.0f} MB")
            notes.append(f"peak RSS x{longest} {name}: {mb:.0f} MB")
    ratios = [(f"w2v align x{t}", f"torchaudio x{t}") for t in args.times.split(",")]
    Result("align", "utterances/s", rates, ratios=ratios, drivers={"threads": args.threads},
           notes=notes).write(args.json, threads=args.threads)


if __name__ == "__main__":
    main()
