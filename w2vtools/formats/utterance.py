"""The unit every command iterates over: one utterance of audio with its id."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Utterance:
    """One utterance: where its audio is and which part of it.

    Attributes:
        uid: the utterance id, the join key across every file (Kaldi style).
        source: a path or a ``wav.scp`` command ending in ``|``.
        start, end: seconds within the source (Kaldi ``segments``); None = whole.
        num_samples: length in samples at the source's own rate, when known
            (manifests know it; ``wav.scp`` does not).
        speaker: speaker id when known.
        text: transcript when known.
    """

    uid: str
    source: str
    start: float | None = None
    end: float | None = None
    num_samples: int | None = None
    speaker: str | None = None
    text: str | None = None

