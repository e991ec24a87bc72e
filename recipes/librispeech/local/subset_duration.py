#!/usr/bin/env python3
"""Copy a Kaldi data dir keeping about HOURS of audio, spread over speakers.

The stand-in for Libri-light's limited-supervision lists when they are not at
hand (pass --librilight to run.sh to use the official 10 min / 1 h / 10 h
sets): utterances are taken round-robin over speakers in a seeded order until
the duration is reached (or the data runs out), so the subset covers as many
speakers as it can. Needs utt2dur (w2v manifest --to-kaldi writes it).

Example:
    python local/subset_duration.py data/train-clean-100 1.0 data/train_1h
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
    ap.add_argument("hours", type=float)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not (args.src / "utt2dur").exists():
        print(f"subset_duration.py: {args.src}/utt2dur not found", file=sys.stderr)
        return 1
    if (args.src / "segments").exists():
        print(f"subset_duration.py: {args.src} has segments; not supported here", file=sys.stderr)
        return 1
    dur = {k: float(v) for k, v in read_table(args.src / "utt2dur").items()}
    utt2spk = read_table(args.src / "utt2spk")
    by_spk: dict[str, list[str]] = {}
    for uid in sorted(utt2spk):
        by_spk.setdefault(utt2spk[uid], []).append(uid)
    rng = random.Random(args.seed)
    speakers = sorted(by_spk)
    rng.shuffle(speakers)
    for s in speakers:
        rng.shuffle(by_spk[s])
    budget = args.hours * 3600
    keep: list[str] = []
    total = 0.0
    while total < budget and any(by_spk.values()):
        for s in speakers:
            if by_spk[s] and total < budget:
                uid = by_spk[s].pop()
                keep.append(uid)
                total += dur.get(uid, 0.0)
    kept = set(keep)
    subset_data_dir(args.src, args.dest, kept)
    short = " (all there is)" if total < budget else ""
    print(f"subset_duration.py: {args.dest}: {len(kept)} utterances, {total / 3600:.3f} h of {args.hours:g} h{short}, "
          f"{len({utt2spk[u] for u in kept})} speakers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
