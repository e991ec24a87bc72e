#!/usr/bin/env python3
"""Plot WER against the number of labeled utterances, one line per system.

Reads the JSON that ``local/wer_table.py --json`` writes and draws, for one
decoder, each system's mean WER over seeds at each label budget with the
standard deviation as error bars (log x axis: the budgets are 1, 10, 100 %).
The image is written atomically.

Example:
    python local/plot_budgets.py exp/results_test.json exp/wer_vs_labels.png --decoder kenlm
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="wer_table.py --json output")
    ap.add_argument("image", type=Path, help="output image (.png, .pdf, .svg)")
    ap.add_argument("--decoder", default="kenlm")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(args.results.read_text(encoding="utf-8"))
    systems = data["results"].get(args.decoder)
    if not systems:
        print(f"plot_budgets.py: {args.results}: no {args.decoder} results", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for system, by_budget in systems.items():
        points = sorted((float(b), v) for b, v in by_budget.items())
        x = [v["labeled_utts"] or b for b, v in points]
        ax.errorbar(x, [v["mean"] for _, v in points], yerr=[v["std"] for _, v in points], marker="o",
                    capsize=3, label=data["labels"].get(system, system))
    ax.set_xscale("log")
    ax.set_xlabel("labeled utterances" if data.get("train_utts") else "labels (%)")
    ax.set_ylabel(f"WER (%) on {data['set']}")
    ax.set_title(f"{args.decoder} decoding, mean ± std over seeds {', '.join(data['seeds'])}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = args.image.with_name(args.image.stem + ".tmp" + args.image.suffix)
    fig.savefig(tmp, dpi=120)
    tmp.replace(args.image)
    print(f"plot_budgets.py: {args.image}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
