"""fairseq label files, line-aligned with a TSV manifest, and their sources.

* ``NAME.wrd``: one transcript per TSV row, words separated by single spaces
  (``HELLO WORLD``).
* ``NAME.ltr``: the same as letters separated by spaces, ``|`` as the word
  boundary and a trailing `` |`` (``H E L L O | W O R L D |``), upper-case as in
  fairseq's LibriSpeech recipe (``examples/wav2vec/libri_labels.py``).
* ``dict.ltr.txt``: ``symbol count`` lines, most frequent first (ties by symbol),
  ``|`` included; fairseq prepends ``<s> <pad> </s> <unk>`` when loading it, see
  :func:`ctc_vocabulary`.
* ``NAME.spk``: one speaker id per TSV row (our extension, same line-aligned rule).

Transcript sources read by :func:`read_transcripts`: a Kaldi ``text`` file
(``uid words...``), LibriSpeech ``*.trans.txt`` files (same line format; a folder
is searched recursively), or an LJ Speech ``metadata.csv`` (``id|raw|normalized``,
the normalized column is used).

Example:
    >>> words_to_letters("hello  world")
    'H E L L O | W O R L D |'
    >>> letters_to_words("H E L L O | W O R L D |")
    'HELLO WORLD'
    >>> ctc_vocabulary(["|", "E", "T"])
    ['<s>', '<pad>', '</s>', '<unk>', '|', 'E', 'T']
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, open_input
from w2vtools.formats.text import read_text_table

WORD_BOUNDARY = "|"
# fairseq's Dictionary always starts with these four, in this order; index 0 (<s>)
# is the CTC blank in fairseq's wav2vec 2.0 fine-tuning.
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")


def normalize_words(text: str, *, upper: bool = True) -> str:
    """Collapse whitespace (and upper-case): the form written to ``.wrd``.

    Example:
        >>> normalize_words("  Hello\\tworld ")
        'HELLO WORLD'
    """
    words = text.split()
    out = " ".join(words)
    return out.upper() if upper else out


def words_to_letters(text: str, *, upper: bool = True) -> str:
    """A transcript as fairseq letter targets: ``HELLO WORLD`` -> ``H E L L O | W O R L D |``.

    An empty transcript gives ``|`` (one word boundary), so every row has a target.

    Example:
        >>> words_to_letters("it's")
        "I T ' S |"
    """
    words = normalize_words(text, upper=upper).split(" ")
    words = [w for w in words if w]
    if not words:
        return WORD_BOUNDARY
    return " ".join(" ".join(w) + " " + WORD_BOUNDARY for w in words)


def letters_to_words(letters: str) -> str:
    """Inverse of :func:`words_to_letters` (also for CTC output tokens joined by spaces).

    Example:
        >>> letters_to_words("A | B C |")
        'A BC'
    """
    tokens = letters.split()
    return " ".join(w for w in "".join(tokens).split(WORD_BOUNDARY) if w)


def count_symbols(lines: Iterable[str]) -> collections.Counter:
    """Count space-separated symbols over ``.ltr`` lines."""
    counts: collections.Counter = collections.Counter()
    for line in lines:
        counts.update(line.split())
    return counts


def dictionary_from_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(symbol, count)`` sorted by count, most frequent first, ties by symbol."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def write_dictionary(path: str | os.PathLike, counts: Mapping[str, int] | Sequence[tuple[str, int]]) -> None:
    """Write ``dict.ltr.txt`` (``symbol count`` lines, most frequent first, ties by symbol).

    Example:
        >>> write_dictionary("data/dict.ltr.txt", {"|": 10, "E": 7, "A": 7})   # doctest: +SKIP
        # |  10 / A 7 / E 7
    """
    items = dictionary_from_counts(dict(counts))
    for sym, _ in items:
        if not sym or any(c.isspace() for c in sym):
            raise W2VError(f"{path}: dictionary symbol {sym!r} is empty or contains whitespace")
    with atomic_write(path) as f:
        for sym, n in items:
            f.write(f"{sym} {n}\n")


def read_dictionary(path: str | os.PathLike) -> list[str]:
    """The symbols of a fairseq ``dict.*.txt`` in file order (without the special symbols).

    Accepts fairseq's ``#fairseq:overwrite`` flag after the count.

    Example:
        >>> read_dictionary("data/dict.ltr.txt")[:3]   # doctest: +SKIP
        ['|', 'E', 'T']
    """
    symbols: list[str] = []
    seen: set[str] = set()
    with open_input(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split(" ")
            if fields[-1] == "#fairseq:overwrite":
                fields = fields[:-1]
            if len(fields) < 2:
                raise W2VError(f"{path}:{lineno}: expected 'symbol count', got {line!r}")
            sym, count = " ".join(fields[:-1]), fields[-1]
            try:
                int(count)
            except ValueError:
                raise W2VError(f"{path}:{lineno}: count is not an integer: {line!r}") from None
            if sym in seen:
                raise W2VError(f"{path}:{lineno}: duplicate symbol {sym!r}")
            seen.add(sym)
            symbols.append(sym)
    if not symbols:
        raise W2VError(f"{path}: empty dictionary")
    return symbols


def ctc_vocabulary(symbols: Sequence[str]) -> list[str]:
    """CTC output tokens in fairseq's order: ``<s>`` (blank), ``<pad>``, ``</s>``, ``<unk>``, then ``symbols``.

    Example:
        >>> ctc_vocabulary(["|", "E"])[0]
        '<s>'
    """
    return [*SPECIAL_SYMBOLS, *[s for s in symbols if s not in SPECIAL_SYMBOLS]]


def label_path(tsv: str | os.PathLike, ext: str) -> Path:
    """``data/train.tsv`` + ``ltr`` -> ``data/train.ltr``."""
    tsv = Path(tsv)
    return tsv.with_name(tsv.stem + "." + ext.lstrip("."))


def _count_rows(tsv: str | os.PathLike) -> int:
    with open_input(tsv) as f:
        next(f, None)
        return sum(1 for line in f if line.strip())


def read_labels(tsv: str | os.PathLike, ext: str) -> list[str]:
    """The lines of the label file beside ``tsv`` (``train.tsv`` -> ``train.<ext>``), checked for alignment.

    Raises:
        W2VError: the label file is missing or its line count differs from the TSV's rows.

    Example:
        >>> read_labels("data/train.tsv", "ltr")[0]   # doctest: +SKIP
        'H E L L O |'
    """
    path = label_path(tsv, ext)
    with open_input(path) as f:
        lines = [line.rstrip("\n").rstrip("\r") for line in f]
    rows = _count_rows(tsv)
    if len(lines) != rows:
        raise W2VError(f"{path}: {len(lines)} lines but {tsv} has {rows} rows (label files must be line-aligned)")
    return lines


def write_labels(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write one label line per TSV row, atomically."""
    with atomic_write(path) as f:
        for line in lines:
            if "\n" in line or "\r" in line:
                raise W2VError(f"{path}: a label contains a line break: {line!r}")
            f.write(line + "\n")


def read_transcripts(source: str | os.PathLike) -> dict[str, str]:
    """``{uid: transcript}`` from a Kaldi ``text``, LibriSpeech ``*.trans.txt`` (file or folder) or LJ Speech ``metadata.csv``.

    Example:
        >>> read_transcripts("LibriSpeech/dev-clean")["1272-128104-0000"][:15]   # doctest: +SKIP
        'MISTER QUILTER '
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(source.rglob("*.trans.txt"))
        if not files:
            raise W2VError(f"{source}: no *.trans.txt files under this folder")
    elif source.exists():
        files = [source]
    else:
        raise W2VError(f"{source}: no such file or directory")
    out: dict[str, str] = {}
    origin: dict[str, Path] = {}
    for path in files:
        if path.name.endswith(".csv"):
            table = _read_ljspeech(path)
        else:  # a Kaldi text or LibriSpeech *.trans.txt: the same `uid words...` lines
            table = {uid: " ".join(words) for uid, words in read_text_table(path).items()}
        for uid, text in table.items():
            if uid in out and out[uid] != text:
                raise W2VError(f"{path}: {uid!r} already has a different transcript in {origin[uid]}")
            out[uid] = text
            origin[uid] = path
    return out


def _read_ljspeech(path: Path) -> dict[str, str]:
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("|")
            if len(fields) < 2:
                raise W2VError(f"{path}:{lineno}: expected 'id|raw|normalized', got {line!r}")
            table[fields[0]] = fields[2] if len(fields) > 2 and fields[2] else fields[1]
    return table


def out_of_dictionary(letter_lines: Iterable[str], symbols: Iterable[str]) -> collections.Counter:
    """Counts of ``.ltr`` symbols that are not in ``symbols`` (fairseq maps them to ``<unk>``).

    Example:
        >>> out_of_dictionary(["A , B |"], ["A", "B", "|"])
        Counter({',': 1})
    """
    known = set(symbols)
    counts: collections.Counter = collections.Counter()
    for line in letter_lines:
        counts.update(s for s in line.split() if s not in known)
    return counts


def format_symbol_counts(counts: Mapping[str, int]) -> str:
    """``',' x45, '"' x3``: for messages about characters outside a dictionary."""
    return ", ".join(f"{sym!r} x{n}" for sym, n in dictionary_from_counts(dict(counts)))
