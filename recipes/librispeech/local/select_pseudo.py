#!/usr/bin/env python3
"""Pick confident pseudo-labels for self-training and write them as a Kaldi data dir.

Inputs are what ``w2v decode --nbest N --nbest-out NBEST --ctm CTM`` writes: the
1-best Kaldi text, ``NBEST.scores`` (``uid-RANK score posterior`` lines, decoder
scores with the LM included) and the 1-best's CTM with word confidences. The
confidence of an utterance (``--confidence``) is one of:

* ``word`` (the default): the mean word confidence of the 1-best in CTM (the mean
  posterior of each word's letters at the frames the decoder emits them);
* ``nbest``: the posterior of the 1-best among the decoder's n best (the softmax of
  the total scores, ``.scores``' third column; computed from the written scores,
  ``exp(s1) / sum_i exp(si)``, when an older file has none).

Why ``word``: ``benchmarks/bench_confidence.py`` ranks real-frame emissions of
known error rate by both (BENCHMARKS.md, "Confidences"). Word confidence had the
better rank correlation with the utterance WER on every seed; the WER of the
kept half was a tie (one seed each way, one even). It cannot be measured on the
recipe's test fixture: its seed model's pseudo-labels are nearly all wrong.

Ties are broken by the 1-best score per second of audio. Empty hypotheses are never kept.

The kept utterances (``--keep`` fraction, most confident first, and at least
``--min-confidence``) are copied from the unlabeled data dir with their text
replaced by the hypotheses. A table of every utterance's confidence goes to
DEST/confidence (``uid confidence score_per_second kept``).

Example:
    python local/select_pseudo.py data/train-other-500 exp/st/decode_unlab/hyp.txt \
        exp/st/decode_unlab/nbest.txt.scores data/train-other-500_pseudo --keep 0.5 \
        --ctm exp/st/decode_unlab/hyp.ctm
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

PER_UTT = ["wav.scp", "utt2spk", "utt2dur", "segments"]


def read_table(path: Path) -> dict[str, str]:
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(" ")
            if key:
                rows[key] = value.strip()
    return rows


def read_ctm_confidences(path: Path) -> dict[str, list[float]]:
    """{uid: [word confidence, ...]} from CTM lines ``uid channel start duration WORD confidence``."""
    confs: dict[str, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6:
                confs.setdefault(fields[0], []).append(float(fields[5]))
    return confs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="the unlabeled Kaldi data dir that was decoded")
    ap.add_argument("hyp", type=Path, help="1-best Kaldi text")
    ap.add_argument("scores", type=Path, help="n-best scores: 'uid-RANK score [posterior]' lines")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--ctm", type=Path, help="the 1-best's CTM with word confidences (for --confidence word)")
    ap.add_argument("--confidence", choices=["word", "nbest"], default="word",
                    help="word: mean word confidence of the 1-best (needs --ctm); nbest: its n-best posterior")
    ap.add_argument("--keep", type=float, default=0.5, help="fraction of the utterances to keep (default 0.5)")
    ap.add_argument("--min-confidence", type=float, default=0.0)
    args = ap.parse_args()
    if not 0 < args.keep <= 1:
        print(f"select_pseudo.py: --keep must be in (0, 1], got {args.keep}", file=sys.stderr)
        return 1

    if args.confidence == "word" and args.ctm is None:
        print("select_pseudo.py: --confidence word needs --ctm", file=sys.stderr)
        return 1
    hyps = read_table(args.hyp)
    nbest: dict[str, list[tuple[int, float]]] = {}
    posterior: dict[str, float] = {}
    for key, value in read_table(args.scores).items():
        uid, _, rank = key.rpartition("-")
        if uid in hyps and rank.isdigit():
            fields = value.split()
            nbest.setdefault(uid, []).append((int(rank), float(fields[0])))
            if rank == "1" and len(fields) > 1:
                posterior[uid] = float(fields[1])
    word_conf = read_ctm_confidences(args.ctm) if args.ctm else {}
    durs = {k: float(v) for k, v in read_table(args.data / "utt2dur").items()} if (args.data / "utt2dur").exists() else {}

    rows = []
    for uid, text in hyps.items():
        scores = [s for _, s in sorted(nbest.get(uid, []))]
        if not scores or not math.isfinite(scores[0]):
            conf, per_sec = 0.0, -math.inf
        else:
            finite = [s for s in scores if math.isfinite(s)]
            top = max(finite)
            conf = posterior.get(uid, math.exp(scores[0] - top) / sum(math.exp(s - top) for s in finite))
            per_sec = scores[0] / max(durs.get(uid, 1.0), 1e-3)
        if args.confidence == "word":
            confs = word_conf.get(uid, [])
            conf = sum(confs) / len(confs) if confs else 0.0
        rows.append((uid, text, conf, per_sec))
    candidates = [r for r in rows if r[1] and r[2] >= args.min_confidence]
    candidates.sort(key=lambda r: (-r[2], -r[3], r[0]))
    n_keep = min(len(candidates), max(1, round(len(rows) * args.keep))) if candidates else 0
    kept = {r[0]: r[1] for r in candidates[:n_keep]}
    if not kept:
        print("select_pseudo.py: no hypothesis passed the selection", file=sys.stderr)
        return 1

    args.dest.mkdir(parents=True, exist_ok=True)
    c_key = lambda k: k.encode("utf-8")  # noqa: E731
    for name in PER_UTT:
        src = args.data / name
        if src.exists():
            with open(src, encoding="utf-8") as f, open(args.dest / name, "w", encoding="utf-8") as out:
                out.writelines(line for line in f if line.split(" ", 1)[0] in kept)
    if (args.data / "segments").exists():
        print("select_pseudo.py: data dirs with segments are not supported here", file=sys.stderr)
        return 1
    with open(args.dest / "text", "w", encoding="utf-8") as out:
        for uid in sorted(kept, key=c_key):
            out.write(f"{uid} {kept[uid]}\n")
    utt2spk = read_table(args.dest / "utt2spk")
    spk2utt: dict[str, list[str]] = {}
    for uid in sorted(utt2spk, key=c_key):
        spk2utt.setdefault(utt2spk[uid], []).append(uid)
    with open(args.dest / "spk2utt", "w", encoding="utf-8") as out:
        for spk in sorted(spk2utt, key=c_key):
            out.write(f"{spk} {' '.join(spk2utt[spk])}\n")
    with open(args.dest / "confidence", "w", encoding="utf-8") as out:
        for uid, _, conf, per_sec in sorted(rows, key=lambda r: c_key(r[0])):
            out.write(f"{uid} {conf:.4f} {per_sec:.3f} {int(uid in kept)}\n")
    print(f"select_pseudo.py: {args.dest}: kept {len(kept)} of {len(rows)} utterances "
          f"(confidence >= {min(r[2] for r in candidates[:n_keep]):.3f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
