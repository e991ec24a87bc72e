"""Praat TextGrid files (the "long" text format Praat writes and every reader accepts).

Each tier is a list of ``(start, end, label)`` intervals in seconds. Praat needs a tier to
cover ``[0, duration]`` without gaps, so the gaps between (and around) the intervals are
filled with empty ones.

Example:
    >>> write_textgrid("u1.TextGrid", 1.2, {"words": [(0.3, 0.6, "ONE")]})   # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from w2vtools.fileio import atomic_write


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def fill_gaps(intervals: Sequence[tuple[float, float, str]], duration: float) -> list[tuple[float, float, str]]:
    """The intervals with empty ones between them and up to ``duration``; times rounded to 1 ms.

    Example:
        >>> fill_gaps([(0.2, 0.5, "A")], 1.0)
        [(0.0, 0.2, ''), (0.2, 0.5, 'A'), (0.5, 1.0, '')]
    """
    out: list[tuple[float, float, str]] = []
    t = 0.0
    for start, end, label in intervals:
        start, end = round(start, 3), round(end, 3)
        if start > t:
            out.append((t, start, ""))
        out.append((max(start, t), end, label))
        t = end
    if round(duration, 3) > t:
        out.append((t, round(duration, 3), ""))
    return out


def write_textgrid(path: str | os.PathLike, duration: float, tiers: Mapping[str, Sequence[tuple[float, float, str]]]) -> None:
    """Write interval tiers, in the given order, as one TextGrid (atomically, UTF-8)."""
    duration = round(duration, 3)
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration}",
             "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for k, (name, intervals) in enumerate(tiers.items(), 1):
        filled = fill_gaps(intervals, duration)
        lines += [f"    item [{k}]:", '        class = "IntervalTier"', f"        name = {_quote(name)}",
                  "        xmin = 0", f"        xmax = {duration}", f"        intervals: size = {len(filled)}"]
        for i, (start, end, label) in enumerate(filled, 1):
            lines += [f"        intervals [{i}]:", f"            xmin = {start}", f"            xmax = {end}",
                      f"            text = {_quote(label)}"]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
