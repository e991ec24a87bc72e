#!/usr/bin/env python3
"""Scoring speed and agreement: ``w2v score`` vs jiwer (rapidfuzz) and sclite (Debian sctk).

Inputs: ``--num-pairs`` reference/hypothesis pairs (default 20,000). References are
sentences of the LJ Speech LM text (../shared/data/ljspeech/lm_text.txt) as
upper-case words; hypotheses get 0-4 random word insertions, deletions and
substitutions each, and 5% are empty.

Timed, best of ``--repeat`` runs in this process, on strings already in memory:

* ours: :func:`w2vtools.score.score_tables` (Kaldi compute-wer counts: totals and
  Kaldi's ins/del/sub split), on ``{uid: [words]}`` tables;
* jiwer 4: ``jiwer.process_words(refs, hyps)`` (and ``process_characters`` for CER),
  on the joined strings, its documented entry point.

sclite is run once on the trn files ``w2v score --trn`` writes, for agreement only
(its time includes reading files and writing its report, so it is not compared).

Prints each system's totals and time and our speed ratio to jiwer.
Run:  python benchmarks/bench_score.py [--num-pairs 20000] [--repeat 3]
This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_args, Result, shared_data  # noqa: E402


def best_time(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-pairs", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=str(shared_data()))
    add_common_args(ap)
    args = ap.parse_args()

    import jiwer

    from test_score import find_sclite, make_pairs
    from w2vtools.formats.text import write_trn
    from w2vtools.score import score_tables

    ref, hyp = make_pairs(Path(args.data) / "ljspeech" / "lm_text.txt", args.num_pairs)
    refs = [" ".join(ref[u]) for u in ref]
    hyps = [" ".join(hyp[u]) for u in ref]
    print(f"{len(refs)} pairs, {sum(len(r) for r in ref.values())} reference words, "
          f"{sum(1 for h in hyps if not h)} empty hypotheses")

    rows = []
    for unit, ours_fn, theirs_fn in (
        ("WER", lambda: score_tables(ref, hyp), lambda: jiwer.process_words(refs, hyps)),
        ("CER", lambda: score_tables(ref, hyp, cer=True), lambda: jiwer.process_characters(refs, hyps)),
    ):
        t_ours, ours = best_time(ours_fn, args.repeat)
        t_jiwer, theirs = best_time(theirs_fn, args.repeat)
        j_err = theirs.substitutions + theirs.deletions + theirs.insertions
        print(f"\n{unit}")
        print("  ours : " + ours.format().replace("\n", "\n         "))
        print(f"         {t_ours:.3f} s")
        print(f"  jiwer: {unit} {100 * (theirs.wer if unit == 'WER' else theirs.cer):.2f} [ {j_err}, "
              f"{theirs.insertions} ins, {theirs.deletions} del, {theirs.substitutions} sub ]  {t_jiwer:.3f} s")
        same = ours.errors == j_err
        print(f"  totals equal: {same}; speed ours/jiwer = {t_jiwer / t_ours:.2f}x")
        rows.append((unit, t_ours, t_jiwer, same))

    sclite = find_sclite()
    if sclite is None:
        print("\nsclite: not installed (apt-get install sctk)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_trn(Path(tmp) / "ref.trn", ref)
            write_trn(Path(tmp) / "hyp.trn", hyp)
            t = time.perf_counter()
            proc = subprocess.run([sclite, "-r", f"{tmp}/ref.trn", "trn", "-h", f"{tmp}/hyp.trn", "trn", "-i", "rm",
                                   "-s", "-o", "rsum", "stdout"], capture_output=True, text=True, check=True)
            t_sclite = time.perf_counter() - t
        row = next(l for l in proc.stdout.splitlines() if re.match(r"\s*\|\s*Sum\s*\|", l))
        snt, wrd, corr, sub, dele, ins, err, serr = (int(x) for x in re.findall(r"\d+", row))
        ours = score_tables(ref, hyp)
        print(f"\nsclite: {err} errors / {wrd} words ({ins} ins, {dele} del, {sub} sub), "
              f"{serr} / {snt} sentence errors, {t_sclite:.2f} s (with file I/O and report)")
        print(f"  totals equal to ours: {err == ours.errors and wrd == ours.num_tokens and serr == int(ours.sentence_errors.sum())}")
    print("\nsummary: " + "; ".join(f"{u} ours {a:.3f} s, jiwer {b:.3f} s ({b / a:.2f}x)" for u, a, b, _ in rows))
    systems = {}
    for unit, t_ours, t_jiwer, _ in rows:
        systems[f"w2v score {unit}"] = len(refs) / t_ours
        systems[f"jiwer {unit}"] = len(refs) / t_jiwer
    Result("score", "pairs/s", systems, ratios=[("w2v score WER", "jiwer WER"), ("w2v score CER", "jiwer CER")],
           drivers={"pairs": len(refs), "threads": 1},
           notes=[f"{u} totals equal jiwer: {same}" for u, _, _, same in rows]).write(args.json, threads=1)


if __name__ == "__main__":
    main()
