#!/usr/bin/env python3
"""Collect WERs over seeds into tables: label budget x system -> mean +- std WER.

Reads ``EXP/<system>_<budget>pct_s<seed>/decode_<set>_<decoder>/wer``, whose first
line that starts with ``%WER`` is Kaldi's compute-wer summary
(``%WER 4.33 [ 13 / 300, 1 ins, 2 del, 10 sub ]``), and prints one Markdown table
per decoder: one row per budget, one column per system, each cell the mean WER
over the seeds found, the sample standard deviation (n - 1; 0 for one seed) and
the errors and words summed over those seeds (``5.33 ± 1.20 (48/900)``). A cell
with fewer seeds than asked says how many (``[2 seeds]``); none found shows ``-``.
``--json`` also writes every number (for local/plot_budgets.py).

Example:
    python local/wer_table.py exp --set test --seeds 1,2,3 --systems fbank_ds,pt_ft --json exp/results.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

WER = re.compile(r"^%WER\s+([0-9.]+)\s+\[\s*(\d+)\s*/\s*(\d+)")
LABELS = {
    "fbank_ds": "fbank + downstream",
    "pt_ft": "{pt} fine-tuned",
    "ptfeat_ds": "{pt} features + downstream",
    "fbank_st": "fbank + downstream, self-trained",
    "pt_st": "{pt} + self-training",
    "vqbert_ds": "vq-wav2vec + BERT features + downstream",
}


def read_wer(path: Path) -> tuple[float, int, int] | None:
    """(WER %, errors, words) from a compute-wer summary, or None when absent."""
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = WER.match(line.strip())
        if m:
            return float(m.group(1)), int(m.group(2)), int(m.group(3))
    return None


def summarize(results: list[tuple[float, int, int]]) -> dict:
    """Mean and sample std of the WERs, errors and words summed.

    Example:
        >>> summarize([(10.0, 30, 300), (20.0, 60, 300)])["std"]
        7.0710678118654755
    """
    wers = [r[0] for r in results]
    return {"mean": statistics.fmean(wers), "std": statistics.stdev(wers) if len(wers) > 1 else 0.0,
            "n": len(wers), "wers": wers, "errors": sum(r[1] for r in results), "words": sum(r[2] for r in results)}


def cell(summary: dict | None, n_seeds: int) -> str:
    if summary is None:
        return "-"
    text = f"{summary['mean']:.2f} ± {summary['std']:.2f} ({summary['errors']}/{summary['words']})"
    if summary["n"] < n_seeds:
        text += f" [{summary['n']} seed{'s' if summary['n'] > 1 else ''}]"
    return text


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    def fmt(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp", type=Path)
    ap.add_argument("--set", default="test")
    ap.add_argument("--budgets", default="1,10,100")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--systems", default="pt_ft,fbank_ds,ptfeat_ds,fbank_st,pt_st")
    ap.add_argument("--decoders", default="kenlm,viterbi")
    ap.add_argument("--pt-name", default="wav2vec 2.0", help="the pretrained model's name, for the column titles")
    ap.add_argument("--train-utts", type=int, default=0, help="size of the full training set, for the budget column")
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args()

    budgets = [b for b in args.budgets.split(",") if b]
    seeds = [s for s in args.seeds.split(",") if s]
    systems = [s for s in args.systems.split(",") if s]
    decoders = [d for d in args.decoders.split(",") if d]
    labels = {s: LABELS.get(s, s).format(pt=args.pt_name) for s in systems}
    found = 0
    tables: dict = {}
    out: list[str] = []
    for d in decoders:
        rows = []
        for b in budgets:
            utts = max(1, round(args.train_utts * float(b) / 100)) if args.train_utts else None
            row = [f"{b} %" + (f" ({utts} utts)" if utts else "")]
            for s in systems:
                results = [r for seed in seeds
                           if (r := read_wer(args.exp / f"{s}_{b}pct_s{seed}" / f"decode_{args.set}_{d}" / "wer"))]
                summary = summarize(results) if results else None
                found += bool(results)
                if summary:
                    tables.setdefault(d, {}).setdefault(s, {})[b] = {**summary, "labeled_utts": utts}
                row.append(cell(summary, len(seeds)))
            rows.append(row)
        out += [f"WER (%) on {args.set}, {d} decoding: mean ± std over seeds {', '.join(seeds)} "
                "(errors/words summed over seeds)", ""]
        out += markdown(["labels"] + [labels[s] for s in systems], rows) + [""]
    print("\n".join(out).rstrip())
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps({"set": args.set, "seeds": seeds, "budgets": budgets, "labels": labels,
                                   "train_utts": args.train_utts, "results": tables}, indent=1) + "\n")
        tmp.replace(args.json)
    if not found:
        print(f"wer_table.py: no results under {args.exp}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
