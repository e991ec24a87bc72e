"""Unit files (``w2v quantize`` output) and the vocabulary a unit model reads them with.

A unit file has one utterance a line, ``uid tok tok ...``: vq-wav2vec codes written
``g0-g1`` (fairseq's ``vq-wav2vec_featurize.py``) or one integer per frame. A unit
model's vocabulary is fairseq's masked-LM dictionary: ``<s> <pad> </s> <unk>``, the
units of ``dict.txt`` (``unit count`` lines, most frequent first, as
``fairseq-preprocess`` writes them), then ``<mask>``, the index fairseq's masked_lm
task appends when it loads the dictionary.

Example:
    >>> unit_vocabulary(["3-1", "0-2"])
    ['<s>', '<pad>', '</s>', '<unk>', '3-1', '0-2', '<mask>']
    >>> encode_units(["0-2", "9-9"], {"0-2": 5}, unk=3)
    [5, 3]
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

from w2vtools.errors import W2VError
from w2vtools.fileio import open_input
from w2vtools.formats.labels import SPECIAL_SYMBOLS

MASK = "<mask>"
UNK_INDEX = SPECIAL_SYMBOLS.index("<unk>")
_GROUPED = re.compile(r"^\d+(-\d+)+$")


def read_units(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{uid: [unit, ...]}`` of a unit file, in file order (``-`` = stdin).

    Raises:
        W2VError: a line without units, a repeated id, or no lines at all (file and line named).

    Example:
        >>> read_units("units.txt")["0_george_0"][:3]   # doctest: +SKIP
        ['12-40', '12-40', '7-301']
    """
    table: dict[str, list[str]] = {}
    with open_input(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise W2VError(f"{path}:{lineno}: utterance {fields[0]!r} has no units")
            if fields[0] in table:
                raise W2VError(f"{path}:{lineno}: utterance {fields[0]!r} appears twice")
            table[fields[0]] = fields[1:]
    if not table:
        raise W2VError(f"{path}: no utterances (expected 'uid unit unit ...' lines, as w2v quantize writes)")
    return table


def unit_vocabulary(symbols: Sequence[str]) -> list[str]:
    """The tokens of a unit model: fairseq's four specials, ``symbols`` in order, then ``<mask>``."""
    return [*SPECIAL_SYMBOLS, *[s for s in symbols if s not in SPECIAL_SYMBOLS and s != MASK], MASK]


def encode_units(units: Sequence[str], index: Mapping[str, int], *, unk: int = UNK_INDEX) -> list[int]:
    """Token ids of ``units``; a unit outside the vocabulary becomes ``<unk>``."""
    return [index.get(u, unk) for u in units]


def parse_unit(token: str, groups: int, num_vars: int) -> int | None:
    """The flat code index of a unit token for a quantizer of ``groups`` x ``num_vars``, or None.

    ``g0-g1`` tokens give ``g0 * num_vars + g1``; an integer token is that index
    (``w2v quantize --index``). None: not a unit of this quantizer (a special token,
    another number of groups, an entry beyond ``num_vars``).

    Example:
        >>> parse_unit("3-1", 2, 4), parse_unit("13", 2, 4), parse_unit("3-9", 2, 4), parse_unit("<s>", 2, 4)
        (13, 13, None, None)
    """
    if _GROUPED.match(token):
        parts = [int(p) for p in token.split("-")]
        if len(parts) != groups or any(p >= num_vars for p in parts):
            return None
        flat = 0
        for p in parts:
            flat = flat * num_vars + p
        return flat
    if token.isdigit():
        flat = int(token)
        return flat if flat < num_vars**groups else None
    return None
