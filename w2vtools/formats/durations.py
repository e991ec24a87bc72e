"""Durations in the unit a reader takes in at a glance: ``4.2 s``, ``12.5 min``, ``3.41 h``.

Summaries print audio lengths that range from a few digits (seconds) to
LibriSpeech (960 h); a fixed unit turns the small ones into ``0.000 h``.

Example:
    >>> format_duration(4.2), format_duration(750), format_duration(12276)
    ('4.2 s', '12.5 min', '3.41 h')
"""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """``seconds`` in s below two minutes, in min below two hours, else in h (3 significant digits or more).

    Example:
        >>> format_duration(0.35), format_duration(119.96), format_duration(3456000)
        ('0.35 s', '120 s', '960 h')
    """
    seconds = float(seconds)
    if abs(seconds) < 120:
        return f"{seconds:.3g} s" if abs(seconds) < 100 else f"{seconds:.0f} s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f} min"
    hours = seconds / 3600
    return f"{hours:.3g} h" if hours < 100 else f"{hours:.0f} h"
