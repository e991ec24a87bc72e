"""Batches for inference: length-sorted, bounded by padded audio seconds, with padding masks.

* :func:`plan_batches` sorts utterances longest first (so an out-of-memory shows up
  in the first batch, not after an hour) and packs them so that
  ``batch size x longest length`` stays under a sample budget: the memory a batch
  takes is that of its padded tensor, not of its real audio.
* :func:`collate` pads waveforms into a ``(B, S)`` tensor and a ``(B, S)`` bool mask,
  True at padding (the encoder contract in :mod:`w2vtools.models`).
* :func:`chunk_spans` cuts a long recording into overlapping windows aligned to the
  model's frame hop, and :func:`stitch` glues their frames back so the result has
  exactly ``num_frames(len)`` frames; memory then depends on the chunk length only.

Example:
    >>> plan_batches([16000, 48000, 32000], max_samples=96000)
    [[1, 2], [0]]
    >>> plan_batches([16000, 48000, 32000], max_samples=96000, max_padding=0.1)
    [[1], [2], [0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def plan_batches(
    lengths: Sequence[int],
    max_samples: int,
    *,
    max_batch_size: int | None = None,
    max_padding: float = 1.0,
    keys: Sequence[str] | None = None,
) -> list[list[int]]:
    """Indices grouped into batches, longest first; each batch's padded size <= ``max_samples``.

    Ties in length are broken by ``keys`` (else index) so the plan is deterministic.
    An utterance longer than ``max_samples`` gets a batch of its own.

    Args:
        lengths: samples per utterance (after resampling).
        max_samples: budget for ``len(batch) * max(lengths in batch)``.
        max_batch_size: optional cap on utterances per batch.
        max_padding: largest fraction of a batch's padded samples that may be padding
            (computing on padding is wasted work; 0.1 keeps it under 10%).
        keys: tie-breakers (utterance ids).

    Example:
        >>> plan_batches([10, 30, 20, 30], max_samples=60)
        [[1, 3], [2, 0]]
    """
    order = sorted(
        range(len(lengths)),
        key=lambda i: (-int(lengths[i]), keys[i].encode("utf-8") if keys is not None else b"", i),
    )
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    real = 0
    for i in order:
        n = int(lengths[i])
        new_longest = max(longest, n)
        padded = new_longest * (len(current) + 1)
        full = max_batch_size is not None and len(current) >= max_batch_size
        wasteful = padded > 0 and (padded - real - n) / padded > max_padding
        if current and (full or padded > max_samples or wasteful):
            batches.append(current)
            current, new_longest, real = [], n, 0
        current.append(i)
        longest = new_longest
        real += n
    if current:
        batches.append(current)
    return batches


def collate(waves: Sequence[np.ndarray]):
    """Zero-pad 1-D float32 waveforms into ``(source (B, S), padding_mask (B, S) bool True=pad)``.

    The mask is None when nothing is padded (all the same length).

    Example:
        >>> src, mask = collate([np.ones(3, np.float32), np.ones(2, np.float32)])
        >>> src.shape, mask.tolist()
        (torch.Size([2, 3]), [[False, False, False], [False, False, True]])
    """
    import torch

    lengths = [len(w) for w in waves]
    longest = max(lengths)
    source = torch.zeros(len(waves), longest, dtype=torch.float32)
    for row, w in enumerate(waves):
        source[row, : len(w)] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    if all(n == longest for n in lengths):
        return source, None
    mask = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]
    return source, mask


@dataclass(frozen=True)
class Chunk:
    """One window of a long recording.

    Attributes:
        start, end: the window in samples (input to the model).
        keep_from, keep_to: the frames of this window's output to keep (window-relative).
    """

    start: int
    end: int
    keep_from: int
    keep_to: int


def chunk_spans(num_samples: int, chunk_samples: int, overlap_samples: int, hop: int, total_frames: int) -> list[Chunk]:
    """Overlapping windows covering ``num_samples``, each kept for ``chunk_samples`` of frames.

    Window ``k`` keeps global frames ``[k*c/hop, (k+1)*c/hop)`` and sees ``overlap``
    extra samples of context on each side (frame ``t`` of a window starting at sample
    ``a`` is global frame ``a/hop + t``, since ``a`` is a multiple of the hop). The
    last window runs to the end of the recording so the frame count is exactly the
    model's ``total_frames``.

    Example:
        >>> [(c.start, c.end, c.keep_from, c.keep_to) for c in chunk_spans(1000, 400, 100, 100, 9)]
        [(0, 500, 0, 4), (300, 900, 1, 5), (500, 1000, 3, 4)]
    """
    chunk = max(hop, (chunk_samples // hop) * hop)
    overlap = int(math.ceil(overlap_samples / hop)) * hop
    frames_per_chunk = chunk // hop
    spans: list[Chunk] = []
    first_frame = 0
    while first_frame < total_frames:
        core_start = first_frame * hop
        last = first_frame + frames_per_chunk >= total_frames
        start = max(0, core_start - overlap)
        if last:
            # give the final window as much left context as an inner one gets
            start = max(0, min(start, ((num_samples - chunk - overlap) // hop) * hop))
        end = num_samples if last else min(num_samples, core_start + chunk + overlap)
        keep_to_global = total_frames if end == num_samples else first_frame + frames_per_chunk
        offset = start // hop
        spans.append(Chunk(start, end, first_frame - offset, keep_to_global - offset))
        first_frame = keep_to_global
    return spans


def stitch(pieces: Sequence[np.ndarray], spans: Sequence[Chunk]) -> np.ndarray:
    """Concatenate the kept frames of each window's (T_k, D) output."""
    kept = []
    for x, span in zip(pieces, spans):
        if x.shape[0] < span.keep_to:
            raise ValueError(f"window {span} produced {x.shape[0]} frames, needs {span.keep_to}")
        kept.append(x[span.keep_from : span.keep_to])
    return np.concatenate(kept, axis=0)
