"""Transcript tables: Kaldi ``text`` (references, hypotheses, n-best), sclite ``trn`` and ``ctm``.

* Kaldi ``text``: ``uid word word ...`` one utterance a line; an utterance with
  no words is the bare ``uid``. Keys are unique; file order is kept (Kaldi's
  ``compute-wer`` scores references in file order).
* n-best: the same ``text`` format with keys ``uid-RANK`` (1 = best), as Kaldi's
  ``lattice-to-nbest`` names them, and a ``uid-RANK score`` table beside it.
* sclite ``trn``: ``word word ... (id)`` lines; the id is ``speaker-uid`` when a
  speaker is known (sclite's ``-i rm`` and ``spu_id`` conventions), else ``uid``.
* ``ctm``: ``uid channel start duration word [confidence]`` with times in seconds.

Example:
    >>> import io
    >>> table = read_text_table(io.StringIO("u1 HELLO WORLD\\nu2\\n"))
    >>> table
    {'u1': ['HELLO', 'WORLD'], 'u2': []}
    >>> trn_line(["HELLO", "WORLD"], "u1", speaker="spk")
    'HELLO WORLD (spk-u1)'
"""

from __future__ import annotations

import io
import os
from typing import IO, Iterable, Mapping, Sequence

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, open_input


def _parse_text_lines(lines: Iterable[str], name: str) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        uid = fields[0]
        if uid in table:
            raise W2VError(f"{name}:{lineno}: duplicate utterance id {uid!r}")
        table[uid] = fields[1:]
    return table


def read_text_table(source: str | os.PathLike | IO[str]) -> dict[str, list[str]]:
    """Read a Kaldi ``text`` table into ``{uid: [words]}``, in file order.

    ``source`` is a path, ``-`` (stdin) or an open text stream. Duplicate keys are
    a W2VError naming file and line.

    Example:
        >>> read_text_table(io.StringIO("a X Y\\nb\\n"))
        {'a': ['X', 'Y'], 'b': []}
    """
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        return _parse_text_lines(source, getattr(source, "name", "<stream>"))  # type: ignore[arg-type]
    try:
        with open_input(source) as f:
            return _parse_text_lines(f, str(source))
    except UnicodeDecodeError as e:
        raise W2VError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def text_line(uid: str, words: Sequence[str]) -> str:
    """One Kaldi ``text`` line (no newline): ``uid w1 w2``, or ``uid`` when empty.

    Example:
        >>> text_line("u1", ["A", "B"])
        'u1 A B'
    """
    if not uid or any(c.isspace() for c in uid):
        raise W2VError(f"utterance id {uid!r} is empty or contains whitespace")
    return f"{uid} {' '.join(words)}" if words else uid


def write_text_table(path: str | os.PathLike, table: Mapping[str, Sequence[str]] | Iterable[tuple[str, Sequence[str]]]) -> None:
    """Write a Kaldi ``text`` table atomically (``-`` = stdout), in the given order.

    Example:
        >>> write_text_table("hyp.txt", {"u1": ["HELLO"]})   # doctest: +SKIP
    """
    items = table.items() if isinstance(table, Mapping) else table
    with atomic_write(path) as f:
        for uid, words in items:
            f.write(text_line(uid, words) + "\n")


def nbest_key(uid: str, rank: int) -> str:
    """``uid-RANK`` (1-based), the key Kaldi's ``lattice-to-nbest`` gives the RANK-th path.

    Example:
        >>> nbest_key("u1", 2)
        'u1-2'
    """
    return f"{uid}-{rank}"


def trn_line(words: Sequence[str], uid: str, speaker: str | None = None) -> str:
    """One sclite ``trn`` line: ``w1 w2 (speaker-uid)``; ``(uid)`` without a speaker.

    Example:
        >>> trn_line([], "u1")
        ' (u1)'
    """
    key = f"{speaker}-{uid}" if speaker else uid
    return f"{' '.join(words)} ({key})"


def write_trn(path: str | os.PathLike, table: Mapping[str, Sequence[str]], utt2spk: Mapping[str, str] | None = None) -> None:
    """Write an sclite ``trn`` file (``-`` = stdout) for ``{uid: words}``.

    Example:
        >>> write_trn("hyp.trn", {"u1": ["A"]}, {"u1": "spk1"})   # doctest: +SKIP
        # A (spk1-u1)
    """
    with atomic_write(path) as f:
        for uid, words in table.items():
            f.write(trn_line(words, uid, (utt2spk or {}).get(uid)) + "\n")


def ctm_line(uid: str, start: float, duration: float, word: str, confidence: float | None = None, channel: str = "1") -> str:
    """One ``ctm`` line: ``uid 1 0.52 0.30 WORD [conf]`` (times rounded to 10 ms as Kaldi does).

    Example:
        >>> ctm_line("u1", 0.5, 0.3, "HI")
        'u1 1 0.50 0.30 HI'
    """
    line = f"{uid} {channel} {start:.2f} {duration:.2f} {word}"
    return line if confidence is None else f"{line} {confidence:.3f}"
