#!/usr/bin/env python3
"""Kaldi data directories for the Free Spoken Digit Dataset.

FSDD files are ``{digit}_{speaker}_{index}.wav``; the dataset's own split puts
indices 0-4 in test and 5-49 in train. The development set (model selection,
early stopping, LM weights) comes out of the training indices: 5-9 by default,
so train keeps 10-49. Only the splits named by ``--splits`` are written (and
their audio headers read): the recipe writes train and dev first and test only
in its final decoding stage, so nothing before it can touch the test audio. Utterance ids are speaker-prefixed
(``jackson-0_jackson_5``) so that sorting by utterance also sorts by speaker,
as Kaldi requires. The transcript is the digit as an upper-case word (``ZERO``),
like LibriSpeech's upper-case letters.

Writes DEST/<split> for each of ``--splits`` with wav.scp, text, utt2spk, spk2utt and
utt2dur (seconds, from the WAV headers).

Example:
    python local/prepare_fsdd.py corpus/fsdd/recordings data --splits train,dev
    python local/prepare_fsdd.py corpus/fsdd/recordings data --splits test
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import soundfile

WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def c_sorted(keys):
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def split_of(index: int, test_max: int, dev_max: int) -> str:
    """The split of a recording index: ``test`` (0..test_max), ``dev`` (..dev_max), else ``train``.

    Example:
        >>> [split_of(i, 4, 9) for i in (0, 4, 5, 9, 10)]
        ['test', 'test', 'dev', 'dev', 'train']
    """
    if index <= test_max:
        return "test"
    return "dev" if index <= dev_max else "train"


def write_table(path: Path, rows: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for key in c_sorted(rows):
            f.write(f"{key} {rows[key]}\n")
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", type=Path, help="the FSDD recordings/ folder")
    ap.add_argument("dest", type=Path, help="where the split folders go")
    ap.add_argument("--test-max-index", type=int, default=4, help="indices 0..N are test (default 4)")
    ap.add_argument("--dev-max-index", type=int, default=9,
                    help="indices above the test ones up to N are dev (default 9; N = test max: no dev)")
    ap.add_argument("--splits", default="train,dev", help="which of train,dev,test to write (default train,dev)")
    args = ap.parse_args()
    wanted = [s for s in args.splits.split(",") if s]
    unknown = sorted(set(wanted) - {"train", "dev", "test"})
    if unknown or not wanted:
        print(f"prepare_fsdd.py: --splits takes train, dev, test; got {args.splits!r}", file=sys.stderr)
        return 1
    if args.dev_max_index < args.test_max_index:
        print(f"prepare_fsdd.py: --dev-max-index {args.dev_max_index} is below --test-max-index "
              f"{args.test_max_index}", file=sys.stderr)
        return 1

    wavs = sorted(args.recordings.glob("*.wav"))
    if not wavs:
        print(f"prepare_fsdd.py: {args.recordings}: no .wav files", file=sys.stderr)
        return 1
    splits: dict[str, dict[str, dict[str, str]]] = {
        s: {"wav.scp": {}, "text": {}, "utt2spk": {}, "utt2dur": {}} for s in wanted
    }
    skipped = []
    for wav in wavs:
        m = NAME.match(wav.name)
        if not m:
            skipped.append(wav.name)
            continue
        digit, speaker, index = int(m.group(1)), m.group(2).lower(), int(m.group(3))
        uid = f"{speaker}-{wav.stem}"
        split = split_of(index, args.test_max_index, args.dev_max_index)
        if split not in splits:
            continue  # never opened: another stage's split
        info = soundfile.info(str(wav))
        tables = splits[split]
        tables["wav.scp"][uid] = str(wav.resolve())
        tables["text"][uid] = WORDS[digit]
        tables["utt2spk"][uid] = speaker
        tables["utt2dur"][uid] = f"{info.frames / info.samplerate:.3f}"
    if skipped:
        print(f"prepare_fsdd.py: skipped {len(skipped)} files not named digit_speaker_index.wav, "
              f"e.g. {skipped[0]}", file=sys.stderr)

    for split, tables in splits.items():
        if not tables["text"]:
            print(f"prepare_fsdd.py: {args.recordings}: no recordings fall in {split} (check --test-max-index, "
                  f"--dev-max-index)", file=sys.stderr)
            return 1
    for split, tables in splits.items():
        out = args.dest / split
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in tables.items():
            write_table(out / name, rows)
        spk2utt: dict[str, list[str]] = {}
        for uid in c_sorted(tables["utt2spk"]):
            spk2utt.setdefault(tables["utt2spk"][uid], []).append(uid)
        write_table(out / "spk2utt", {s: " ".join(u) for s, u in spk2utt.items()})
        hours = sum(float(d) for d in tables["utt2dur"].values()) / 3600
        print(f"prepare_fsdd.py: {out}: {len(tables['text'])} utterances, {len(spk2utt)} speakers, "
              f"{hours:.2f} h", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
