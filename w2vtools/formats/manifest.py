"""fairseq TSV manifests.

Line 1 is the absolute root directory; every further line is
``relpath<TAB>num_samples`` with the length in frames at the file's own rate.
fairseq's ``FileAudioDataset`` reads these files unchanged.

Utterance ids: the id of a row is its file name without the extension
(``train-clean-100/103/1240/103-1240-0000.flac`` -> ``103-1240-0000``), which
matches LibriSpeech transcripts and Kaldi habits. Where two rows of one manifest
share a file name, those rows use the relative path without the extension
instead (``a/0001``, ``b/0001``), so ids are always unique and depend only on the
manifest's own rows.

Example:
    >>> rows = read_manifest("data/train.tsv")   # doctest: +SKIP
    >>> rows.root, rows.items[0]                 # doctest: +SKIP
    ('/corpora/fsdd/recordings', ManifestItem(relpath='0_george_10.wav', num_samples=3616))
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from typing import IO, Iterable

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, open_input
from w2vtools.formats.utterance import Utterance


@dataclass(frozen=True)
class ManifestItem:
    relpath: str
    num_samples: int


@dataclass
class Manifest:
    root: str
    items: list[ManifestItem] = field(default_factory=list)

    def uids(self) -> list[str]:
        return uids_for([it.relpath for it in self.items])

    def utterances(self) -> list[Utterance]:
        return [
            Utterance(uid=uid, source=os.path.join(self.root, it.relpath), num_samples=it.num_samples)
            for uid, it in zip(self.uids(), self.items)
        ]


def _strip_ext(relpath: str) -> str:
    stem, ext = os.path.splitext(relpath)
    return stem if ext else relpath


def uids_for(relpaths: Iterable[str]) -> list[str]:
    """Utterance ids for manifest rows (see the module docstring for the rule)."""
    relpaths = list(relpaths)
    stems = [_strip_ext(os.path.basename(p)) for p in relpaths]
    counts = collections.Counter(stems)
    uids = [s if counts[s] == 1 else _strip_ext(p) for s, p in zip(stems, relpaths)]
    dup = [u for u, n in collections.Counter(uids).items() if n > 1]
    if dup:
        raise W2VError(f"manifest lists the same file twice: {dup[0]}")
    return uids


def parse_manifest(f: IO[str], name: str = "<manifest>") -> Manifest:
    root = f.readline().rstrip("\n").rstrip("\r")
    if not root:
        raise W2VError(f"{name}: empty manifest (line 1 must be the root directory)")
    if "\t" in root:
        raise W2VError(f"{name}:1: line 1 must be the root directory, got a row {root!r}")
    man = Manifest(root=root)
    for lineno, line in enumerate(f, 2):
        line = line.rstrip("\n").rstrip("\r")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise W2VError(f"{name}:{lineno}: expected 'relpath<TAB>num_samples', got {line!r}")
        try:
            n = int(parts[1])
        except ValueError:
            raise W2VError(f"{name}:{lineno}: num_samples is not an integer: {parts[1]!r}") from None
        man.items.append(ManifestItem(parts[0], n))
    return man


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a fairseq TSV manifest (``-`` for stdin)."""
    with open_input(path) as f:
        return parse_manifest(f, str(path))


def format_manifest(man: Manifest) -> str:
    """The TSV text, byte for byte as fairseq's ``wav2vec_manifest.py`` prints it.

    Example:
        >>> format_manifest(Manifest("/data", [ManifestItem("a/x.wav", 16000)]))
        '/data\\na/x.wav\\t16000\\n'
    """
    if "\n" in man.root or "\t" in man.root or not man.root:
        raise W2VError(f"manifest root {man.root!r} is empty or contains a tab or line break")
    for it in man.items:
        # fairseq splits rows on tabs and lines on newlines: such names cannot be represented.
        if "\t" in it.relpath or "\n" in it.relpath or "\r" in it.relpath:
            raise W2VError(f"{os.path.join(man.root, it.relpath)!r}: file name contains a tab or line break")
    return man.root + "\n" + "".join(f"{it.relpath}\t{it.num_samples}\n" for it in man.items)


def write_manifest(path: str | os.PathLike, man: Manifest) -> None:
    """Write a manifest atomically (``-`` for stdout)."""
    with atomic_write(path) as f:
        f.write(format_manifest(man))


def looks_like_manifest(first_line: str, second_line: str | None) -> bool:
    """Heuristic used for stdin: a root line without tabs, then ``path<TAB>int`` rows."""
    if "\t" in first_line:
        return False
    if second_line is None:
        # A lone line is a manifest without rows only if it names a directory, not `uid path`.
        line = first_line.strip()
        return len(line.split()) == 1 or os.path.isdir(line)
    parts = second_line.rstrip("\n").split("\t")
    return len(parts) >= 2 and parts[1].strip().isdigit()
