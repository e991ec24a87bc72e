"""Which utterances, how long, in which batches: the corpus planning every command shares.

* :func:`parse_shard` and :func:`select_shard`: ``--shard K/N``, the K-th of N
  contiguous blocks (featurize, decode and stored features split the same way).
* :func:`utterance_length`: the one rule for an utterance's length in samples.
* :func:`plan_jobs` and :func:`load_ahead`: featurize's and quantize's work plan
  (batches of short utterances, long ones alone) and its audio, loaded in threads.
* :func:`check_ids`: the id rule of every command that writes ids into tables,
  applied where the corpus is read, before any model runs.
* :class:`SkipLog`: the one rule for a bad utterance in a long run (featurize,
  quantize, decode): named with its reason on one line, skipped, the run goes on;
  exit 3 when some were left out, 1 and no output when all were.
* :func:`input_identity`: what a resumed run compares to tell whether an
  utterance's audio changed since it was computed.

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

import concurrent.futures as cf
import hashlib
import json
import logging
import math
import os
from collections import deque
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch

from w2vtools.audio import RecordingWindows, audio_info, is_command, load_utterance, num_resampled
from w2vtools.errors import PartialFailure, W2VError
from w2vtools.formats.utterance import Utterance

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Shards and lengths


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (1-based K) -> (K, N).

    Example:
        >>> parse_shard("2/8")
        (2, 8)
    """
    if text is None:
        return None
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise W2VError(f"--shard {text}: expected K/N with whole numbers, e.g. 3/8") from None
    if n < 1 or not 1 <= k <= n:
        raise W2VError(f"--shard {text}: K must be between 1 and N")
    return k, n


def select_shard(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Shard K of N: the K-th of N contiguous blocks of ``items`` (sizes differ by at most one).

    The same items and N always give the same split, and the shards cover every
    item exactly once (as Kaldi's ``split_scp.pl``). Items are utterances, feature
    keys or emission files.

    Example:
        >>> [len(select_shard([Utterance(str(i), "x") for i in range(10)], (k, 3))) for k in (1, 2, 3)]
        [4, 3, 3]
    """
    items = list(items)
    if shard is None:
        return items
    k, n = shard
    base, extra = divmod(len(items), n)
    start = (k - 1) * base + min(k - 1, extra)
    size = base + (1 if k <= extra else 0)
    return items[start : start + size]


def utterance_length(utt: Utterance, sample_rate: int, *, run_commands: bool = True) -> int | None:
    """Length of ``utt`` in samples once resampled to ``sample_rate``.

    The rule, in order:

    * a ``cmd |`` source (``wav.scp``) has no header: the command is run once and
      its audio counted; with ``run_commands=False`` the length is None (unknown)
      instead, for callers that would rather not run a command twice;
    * a segment (``start``/``end`` seconds, Kaldi ``segments``) is cut from the
      header's length: its end is clipped to the recording, a negative end means
      "to the end";
    * a whole file has the manifest's sample count when the manifest gives one,
      else the header's.

    Counts at the file's own rate (the header gives the rate) are converted with
    :func:`w2vtools.audio.num_resampled`, the length the loader returns.

    Raises:
        W2VError: unreadable audio or a failing command.

    Example:
        >>> utterance_length(Utterance("u1", "a.wav", num_samples=8000), 16000)   # doctest: +SKIP
        16000
    """
    if is_command(utt.source):
        return int(len(load_utterance(utt, sample_rate))) if run_commands else None
    info = audio_info(utt.source)
    rate = info.sample_rate
    if utt.start is not None or utt.end is not None:
        first = int(round((utt.start or 0.0) * rate))
        last = info.num_frames if utt.end is None or utt.end < 0 else min(info.num_frames, int(round(utt.end * rate)))
        n = last - first
    else:
        n = utt.num_samples if utt.num_samples is not None else info.num_frames
    return num_resampled(max(0, n), rate, sample_rate)


# ---------------------------------------------------------------------------------------------
# Batches


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
    lengths = [len(w) for w in waves]
    longest = max(lengths)
    source = torch.zeros(len(waves), longest, dtype=torch.float32)
    for row, w in enumerate(waves):
        source[row, : len(w)] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    if all(n == longest for n in lengths):
        return source, None
    mask = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]
    return source, mask


# ---------------------------------------------------------------------------------------------
# Long recordings


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


# ---------------------------------------------------------------------------------------------
# Work plans: featurize and quantize


@dataclass
class Job:
    """A unit of work: a batch of short utterances, or one utterance cut into windows."""

    utts: list[Utterance]
    lengths: list[int | None]
    chunked: bool = False


def plan_jobs(
    utts: Sequence[Utterance],
    lengths: Sequence[int | None],
    *,
    sample_rate: int,
    batch_seconds: float,
    chunk_seconds: float,
    max_padding: float = 0.1,
) -> list[Job]:
    """Length-sorted batches for known lengths; long or unknown-length utterances as single jobs.

    A batch holds at most ``max_padding`` padding (as a fraction of its padded samples):
    computing on padding is wasted work, most of all on a CPU.

    Example:
        >>> utts = [Utterance("a", "a.wav"), Utterance("b", "b.wav"), Utterance("c", "c |")]
        >>> [(j.chunked, [u.uid for u in j.utts]) for j in plan_jobs(
        ...     utts, [16000, 16000, None], sample_rate=16000, batch_seconds=10, chunk_seconds=60)]
        [(False, ['a', 'b']), (True, ['c'])]
    """
    max_samples = int(batch_seconds * sample_rate)
    chunk_limit = int(chunk_seconds * sample_rate)
    short = [i for i, n in enumerate(lengths) if n is not None and n <= chunk_limit]
    jobs = [
        Job([utts[short[j]] for j in b], [lengths[short[j]] for j in b])
        for b in plan_batches(
            [lengths[i] for i in short], max_samples, max_padding=max_padding, keys=[utts[i].uid for i in short]
        )
    ]
    rest = [i for i, n in enumerate(lengths) if n is None or n > chunk_limit]
    rest.sort(key=lambda i: (-(lengths[i] or 0), utts[i].uid.encode("utf-8")))
    jobs += [Job([utts[i]], [lengths[i]], chunked=True) for i in rest]
    return jobs


def length_or_error(utt: Utterance, sample_rate: int) -> int | None | W2VError:
    """:func:`utterance_length` without running commands; a bad file's error is returned, not raised,
    so one unreadable utterance is reported and skipped instead of stopping the run."""
    try:
        return utterance_length(utt, sample_rate, run_commands=False)
    except W2VError as e:
        return e


def _audio_or_error(utt: Utterance, sample_rate: int, long: bool = False) -> np.ndarray | RecordingWindows | W2VError:
    """The utterance's audio, or its error. A long recording in a file (a job cut into windows)
    is read window by window as the model asks for them, so it is never held whole."""
    try:
        if long and not is_command(utt.source):
            return RecordingWindows(utt, sample_rate)
        return load_utterance(utt, sample_rate)
    except W2VError as e:
        return e


def load_ahead(jobs: Sequence[Job], sample_rate: int, workers: int, depth: int) -> Iterator[tuple[Job, list]]:
    """Yield (job, [wave or W2VError]) in order while the next ``depth`` jobs load in threads.

    Decoding (libsndfile) and resampling (torch) release the GIL, so threads overlap
    audio loading with the model's compute. ``workers=0`` loads in the calling thread.
    """
    if workers <= 0:
        for job in jobs:
            yield job, [_audio_or_error(u, sample_rate, job.chunked) for u in job.utts]
        return
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="w2v-audio") as pool:
        pending: deque = deque()
        it = iter(jobs)

        def submit_next() -> bool:
            job = next(it, None)
            if job is None:
                return False
            pending.append((job, [pool.submit(_audio_or_error, u, sample_rate, job.chunked) for u in job.utts]))
            return True

        for _ in range(depth):
            if not submit_next():
                break
        while pending:
            job, futures = pending.popleft()
            submit_next()
            yield job, [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------
# Ids, bad utterances, input identity: the rules every running command shares


def check_ids(utts: Sequence[Utterance], name: str) -> None:
    """Refuse ids that no Kaldi table can hold, before any work is done.

    An id may hold any character, non-ASCII included, except whitespace (Kaldi
    tables, ``text`` and ``scp`` files split on it) and it may not be empty. Only a
    TSV manifest can produce such an id (from a file name); Kaldi tables cannot.
    The error names the file, the line (when ``name`` is a readable TSV) and the
    audio, so the file can be renamed.

    Example:
        >>> check_ids([Utterance("naïve-01", "a.wav")], "x.tsv")
        >>> check_ids([Utterance("my file", "/d/my file.wav")], "x.tsv")
        Traceback (most recent call last):
        ...
        w2vtools.errors.W2VError: x.tsv: utterance id 'my file' (audio /d/my file.wav) contains whitespace, which Kaldi tables cannot hold; rename the file
    """
    for i, u in enumerate(utts):
        if u.uid and not any(c.isspace() for c in u.uid):
            continue
        what = "is empty" if not u.uid else "contains whitespace, which Kaldi tables cannot hold; rename the file"
        raise W2VError(f"{name}: {_row_name(name, i)}utterance id {u.uid!r} (audio {u.source}) {what}")


def _row_name(name: str, index: int) -> str:
    """``line N: `` for the ``index``-th row of a TSV manifest (line 1 is its root; blank lines do not count)."""
    try:
        with open(name, encoding="utf-8") as f:
            rows = (n for n, line in enumerate(f, 1) if n > 1 and line.strip())
            for _ in range(index):
                next(rows)
            return f"line {next(rows)}: "
    except (OSError, StopIteration, UnicodeDecodeError):
        return ""


class SkipLog:
    """The one rule for a bad utterance in a long run: name it, skip it, go on.

    Each skip is one warning line ``<uid>: skipped: <reason>``. At the end,
    :meth:`check_some_written` (before the output is committed) makes a run where every
    utterance failed an error with no output (exit 1), and :meth:`raise_if_any` (after
    the commit) makes a run with some left out a
    :class:`~w2vtools.errors.PartialFailure` (exit 3).

    Example:
        >>> skips = SkipLog(logging.getLogger("w2v.demo"))
        >>> skips.add("u7", "truncated WAV")
        >>> skips.raise_if_any(10, "feats.h5")
        Traceback (most recent call last):
        ...
        w2vtools.errors.PartialFailure: 1 of 10 utterances failed (u7); the rest are in feats.h5
    """

    def __init__(self, logger: logging.Logger):
        self.log = logger
        self.uids: list[str] = []
        self.first: str = ""

    def __len__(self) -> int:
        return len(self.uids)

    def add(self, uid: str, reason: object) -> None:
        self.uids.append(uid)
        self.first = self.first or f"{uid}: {reason}"
        self.log.warning("%s: skipped: %s", uid, reason)

    def check_some_written(self, written: int, out: str) -> None:
        """Raise (exit 1) when utterances failed and none was written: the caller then writes no output."""
        if self.uids and written == 0:
            raise W2VError(f"all {len(self.uids)} utterances failed (first: {self.first}); nothing written to {out}")

    def raise_if_any(self, total: int, out: str) -> None:
        """Raise :class:`PartialFailure` (exit 3) when some utterances were left out of ``out``."""
        if self.uids:
            shown = ", ".join(self.uids[:5]) + (" ..." if len(self.uids) > 5 else "")
            raise PartialFailure(f"{len(self.uids)} of {total} utterances failed ({shown}); the rest are in {out}")


def input_identity(utt: Utterance) -> str:
    """A short fingerprint of what an utterance's features are computed from.

    A file: its absolute path, size and modification time (ns); a ``cmd |`` source:
    the command line; both with the segment bounds and the manifest's length. A
    resumed run recomputes an utterance whose fingerprint changed (cheap: one
    ``stat``; content hashes would read every file again).

    Example:
        >>> input_identity(Utterance("u", "sox a.flac -t wav - |")) == input_identity(Utterance("u", "sox a.flac -t wav - |"))
        True
    """
    if is_command(utt.source):
        what: list = ["cmd", utt.source.strip()]
    else:
        try:
            st = os.stat(utt.source)
            what = [os.path.abspath(utt.source), st.st_size, st.st_mtime_ns]
        except OSError:
            what = [os.path.abspath(utt.source), "missing"]
    what += [utt.start, utt.end, utt.num_samples]
    return hashlib.sha1(json.dumps(what).encode("utf-8")).hexdigest()[:16]
