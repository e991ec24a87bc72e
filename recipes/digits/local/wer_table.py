#!/usr/bin/env python3
"""Collect WERs into one table: label budget x system.

Reads ``EXP/<system>_<budget>pct/decode_<set>_<decoder>/wer`` files, whose first
line that starts with ``%WER`` is Kaldi's compute-wer summary
(``%WER 4.33 [ 13 / 300, 1 ins, 2 del, 10 sub ]``), and prints a Markdown
table with one row per budget and one column per system+decoder. A missing
result shows as ``-``.

Example:
    python local/wer_table.py exp --set test --systems w2v2_ft,fbank_ds --decoders viterbi,kenlm
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

WER = re.compile(r"^%WER\s+([0-9.]+)\s+\[\s*(\d+)\s*/\s*(\d+)")
LABELS = {
    "w2v2_ft": "wav2vec 2.0 fine-tuned",
    "fbank_ds": "fbank + downstream",
    "w2v2feat_ds": "wav2vec 2.0 features + downstream",
}


def read_wer(path: Path) -> tuple[float, int, int] | None:
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = WER.match(line.strip())
        if m:
            return float(m.group(1)), int(m.group(2)), int(m.group(3))
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp", type=Path)
    ap.add_argument("--set", default="test")
    ap.add_argument("--budgets", default="1,10,100")
    ap.add_argument("--systems", default="w2v2_ft,fbank_ds,w2v2feat_ds")
    ap.add_argument("--decoders", default="viterbi,kenlm")
    ap.add_argument("--train-utts", type=int, default=0, help="size of the full training set, for the budget column")
    args = ap.parse_args()

    budgets = [b for b in args.budgets.split(",") if b]
    systems = [s for s in args.systems.split(",") if s]
    decoders = [d for d in args.decoders.split(",") if d]
    header = ["labels"] + [f"{LABELS.get(s, s)} ({d})" for s in systems for d in decoders]
    rows = []
    found = 0
    for b in budgets:
        label = f"{b} %"
        if args.train_utts:
            label += f" ({max(1, round(args.train_utts * float(b) / 100))} utts)"
        row = [label]
        for s in systems:
            for d in decoders:
                r = read_wer(args.exp / f"{s}_{b}pct" / f"decode_{args.set}_{d}" / "wer")
                if r is None:
                    row.append("-")
                else:
                    found += 1
                    row.append(f"{r[0]:.2f}")
        rows.append(row)

    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    def fmt(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(f"WER (%) on {args.set}")
    print()
    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt(r))
    if not found:
        print(f"wer_table.py: no results under {args.exp}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
