"""Read any audio list a command accepts: TSV manifest, Kaldi data dir, ``wav.scp``, or ``-``.

A TSV file brings its line-aligned siblings along when they exist: ``NAME.wrd``
as each utterance's text and ``NAME.spk`` as its speaker (a sibling whose line
count does not match is ignored with a warning).

Example:
    >>> utts = read_corpus("data/train.tsv")     # doctest: +SKIP
    >>> utts = read_corpus("data/kaldi/train")   # a data dir: segments, text, speakers
    >>> utts = read_corpus("-")                  # stdin: a TSV or wav.scp, told apart by content
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import sys

from w2vtools.errors import W2VError
from w2vtools.formats import kaldi, manifest
from w2vtools.formats.utterance import Utterance


def read_corpus(spec: str | os.PathLike) -> list[Utterance]:
    """Utterances of ``spec`` in file order (TSV) or C-sorted key order (Kaldi)."""
    spec = str(spec)
    if spec == "-":
        return _parse_text(sys.stdin.read(), "<stdin>")
    if os.path.isdir(spec):
        return kaldi.read_data_dir(spec)
    if not os.path.exists(spec):
        raise W2VError(f"{spec}: no such file or directory")
    try:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        # e.g. a checkpoint given where a corpus goes: say what was expected, not which byte failed
        raise W2VError(f"{spec}: not a text file; expected a TSV manifest, Kaldi data dir or wav.scp") from None
    utts = _parse_text(text, spec)
    if manifest.looks_like_manifest(*(text.splitlines()[:2] + [None])[:2]):
        utts = _with_siblings(spec, utts)
    return utts


def _with_siblings(tsv: str, utts: list[Utterance]) -> list[Utterance]:
    """Attach ``NAME.wrd`` (text) and ``NAME.spk`` (speaker) found beside ``NAME.tsv``."""
    stem, _ = os.path.splitext(tsv)
    for ext, attr in (("wrd", "text"), ("spk", "speaker")):
        path = f"{stem}.{ext}"
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n").rstrip("\r") for line in f]
        if len(lines) != len(utts):
            logging.getLogger("w2v.corpus").warning(
                "%s: %d lines but %s has %d rows: not used", path, len(lines), tsv, len(utts)
            )
            continue
        utts = [dataclasses.replace(u, **{attr: line}) for u, line in zip(utts, lines)]
    return utts


def _parse_text(text: str, name: str) -> list[Utterance]:
    lines = text.splitlines()
    if not lines:
        raise W2VError(f"{name}: empty input, expected a TSV manifest or wav.scp")
    if manifest.looks_like_manifest(lines[0], lines[1] if len(lines) > 1 else None):
        return manifest.parse_manifest(io.StringIO(text), name).utterances()
    utts: list[Utterance] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.strip().split(None, 1)
        if len(fields) != 2:
            raise W2VError(f"{name}:{lineno}: expected 'uid path-or-command', got {line!r}")
        if fields[0] in seen:
            raise W2VError(f"{name}: duplicate key {fields[0]!r}")
        seen.add(fields[0])
        utts.append(Utterance(fields[0], fields[1]))
    return utts
