"""Read any audio list a command accepts: TSV manifest, Kaldi data dir, ``wav.scp``, or ``-``.

Example:
    >>> utts = read_corpus("data/train.tsv")     # doctest: +SKIP
    >>> utts = read_corpus("data/kaldi/train")   # a data dir: segments, text, speakers
    >>> utts = read_corpus("-")                  # stdin: a TSV or wav.scp, told apart by content
"""

from __future__ import annotations

import io
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
    with open(spec, encoding="utf-8") as f:
        return _parse_text(f.read(), spec)


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
