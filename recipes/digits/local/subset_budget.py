#!/usr/bin/env python3
"""Copy a Kaldi data dir keeping a fraction of its utterances (a label budget).

The subset is balanced over transcripts (digits) and speakers: utterances are
grouped by (text, speaker), shuffled with a fixed seed, and taken round-robin
over the groups, so 1 % of FSDD train (27 utterances) still hears every digit
from several speakers. Per-utterance files (wav.scp, text, utt2spk, utt2dur,
segments, feats.scp, utt2num_frames) are filtered; spk2utt is rebuilt.
``--rest DIR`` also writes the utterances left out: the audio that
self-training pseudo-labels (its ``text`` stays, only to measure how good the
pseudo-labels are; nothing trains on it).

Example:
    python local/subset_budget.py data/train 10 data/train_10pct --rest data/train_10pct_unlab
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from w2vtools.formats.kaldi import read_kaldi_table as read_table, subset_data_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("percent", type=float, help="0 < percent <= 100")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rest", type=Path, help="also write the utterances not kept here (none at 100 %%)")
    args = ap.parse_args()
    if not 0 < args.percent <= 100:
        print(f"subset_budget.py: percent must be in (0, 100], got {args.percent}", file=sys.stderr)
        return 1

    text = read_table(args.src / "text")
    utt2spk = read_table(args.src / "utt2spk")
    n_keep = max(1, round(len(text) * args.percent / 100))
    groups: dict[tuple[str, str], list[str]] = {}
    for uid in sorted(text):
        groups.setdefault((text[uid], utt2spk.get(uid, uid)), []).append(uid)
    rng = random.Random(args.seed)
    order = sorted(groups)
    rng.shuffle(order)
    for key in order:
        rng.shuffle(groups[key])
    keep: list[str] = []
    while len(keep) < n_keep:
        for key in order:
            if groups[key] and len(keep) < n_keep:
                keep.append(groups[key].pop())
    kept = set(keep)

    subset_data_dir(args.src, args.dest, kept)
    if args.rest is not None and len(kept) < len(text):
        subset_data_dir(args.src, args.rest, set(text) - kept)
    print(f"subset_budget.py: {args.dest}: {len(kept)} of {len(text)} utterances ({args.percent:g} %)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
