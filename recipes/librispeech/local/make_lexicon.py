#!/usr/bin/env python3
"""Letter lexicon for lexicon-constrained CTC decoding from a word list.

Reads words from the first column of each input (openslr's
librispeech-lexicon.txt or librispeech-vocab.txt, a Kaldi text, plain word
lists; ``-`` for stdin) and writes ``WORD W O R D |`` for every word that the
CTC dictionary can spell (w2v's lexicon format, flashlight/torchaudio's too).
Kaldi-style transcripts (``uid word word``) are read with --text.

Example:
    python local/make_lexicon.py --dict data/manifest/dict.ltr.txt -o data/lang/lexicon.txt \
        corpus/lm/librispeech-lexicon.txt
"""

from __future__ import annotations

import argparse
import sys

from w2vtools.fileio import open_input
from w2vtools.formats.labels import read_dictionary
from w2vtools.lm import alphabet_of, write_lexicon


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="word lists (first column is the word)")
    ap.add_argument("--dict", required=True, help="fairseq dict.ltr.txt of the CTC model")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--text", action="append", default=[], help="Kaldi text files whose words join too")
    args = ap.parse_args()

    alphabet = alphabet_of(read_dictionary(args.dict))
    words: set[str] = set()
    for path in args.inputs:
        with open_input(path) as f:
            for line in f:
                fields = line.split()
                if fields:
                    words.add(fields[0])
    for path in args.text:
        with open_input(path) as f:
            for line in f:
                words.update(line.split()[1:])
    n = write_lexicon(args.output, words, alphabet)
    print(f"make_lexicon.py: {args.output}: {n} of {len(words)} words spellable with {args.dict}", file=sys.stderr)
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
