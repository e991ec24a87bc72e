"""One runner over a corpus: what ``featurize``, ``quantize``, ``decode --model`` and ``align --model`` share.

A command says what the model computes per frame (a ``forward`` function); this module
does the rest, the same way for all of them:

* the corpus: :func:`corpus_utterances` (read, shard K of N, ids checked before any
  model loads);
* the plan: :func:`plan_corpus` learns lengths from headers (unreadable files are named
  and skipped, :class:`~w2vtools.batching.SkipLog`) and packs length-sorted batches by
  padded samples (:func:`~w2vtools.batching.plan_jobs`); recordings longer than
  ``chunk_seconds`` (and ``cmd |`` sources, whose length is unknown) go alone;
* the model: :class:`Runner` runs padded batches with padding masks (an utterance's
  output is the same batched or alone), and a long recording in overlapping windows
  (:func:`~w2vtools.batching.chunk_spans`) whose frames are glued back at frame level
  (:func:`~w2vtools.batching.stitch`), the windows of one recording one after another,
  each read from its file only when its turn comes (:class:`~w2vtools.audio.RecordingWindows`),
  so memory is bounded by the window (and the batch budget), not by the recording: what
  grows with the recording is its output (frames x dimension), never its audio;
* the run: :func:`run_corpus` loads audio ahead in threads, computes ``streams`` batches
  at once (each with ``threads // streams`` intra-op threads on a CPU:
  :func:`thread_settings`) and yields results in the plan's order whatever order they
  finish in; recordings too short for the model, or whose output holds NaN/Inf, are
  named and skipped.

The output lock (:func:`w2vtools.fileio.exclusive_output`) is taken by each command
before it loads the model, so a second writer fails at once.

Tolerance of windowed output. Frame ``t`` of a window starting at sample ``a`` is
global frame ``a / hop + t`` exactly, so the frame count and timing of a stitched
recording equal a whole-recording run's. The values equal it exactly only for a
frame-local model (fbank, MFCC). A Transformer attends over its whole input and a
model with ``normalize`` or group norm over time normalizes over it, so a window's
frames differ from the whole recording's everywhere a little, and most within
``chunk_overlap`` of a stitch point, where one side's context is cut. The stated tolerance,
tested on 60 s of real speech (``tests/test_runner.py``): a model without global operators
(layer-norm feature encoder, no attention) gives the whole run's log-probabilities within
1e-4 everywhere; a Transformer (the tiny preset, random weights: attention spread over the
whole input, the worst case) agrees on the best class of at least 90 % of the frames farther
than ``chunk_overlap`` from a stitch point, with a median difference of at most 0.2 nats.

Example:
    >>> import numpy as np
    >>> r = Runner(lambda x, m: (x.unfold(1, 4, 2).mean(-1, keepdim=True), None),
    ...            num_frames=lambda n: (n - 4) // 2 + 1, sample_rate=100, frame_shift=0.02,
    ...            chunk_seconds=0.2, chunk_overlap=0.04)
    >>> wave = np.arange(100, dtype=np.float32)
    >>> bool(np.allclose(r.long(wave), r([wave])[0]))
    True
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import functools
import logging
from collections import deque
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from w2vtools.audio import RecordingWindows
from w2vtools.autocast import inference_dtype, warn_if_bf16_is_slow
from w2vtools import malloc
from w2vtools.batching import (
    Job,
    SkipLog,
    check_ids,
    chunk_spans,
    collate,
    length_or_error,
    load_ahead,
    plan_batches,
    plan_jobs,
    select_shard,
    stitch,
)
from w2vtools.errors import W2VError
from w2vtools.formats.corpus import read_corpus
from w2vtools.formats.utterance import Utterance
from w2vtools.models.int8 import quantize_int8
from w2vtools.threads import default_threads

log = logging.getLogger("w2v.runner")

#: Why an utterance whose output holds NaN or Inf is left out (NaN weights give NaN everywhere)
NON_FINITE = "the model's output holds NaN or Inf (are the checkpoint's weights finite?)"

#: Default padded audio seconds per batch on a CPU: there batching gains nothing, and
#: more, smaller batches balance the streams (the last batch runs alone) and keep the
#: peak heap small (measurements in BENCHMARKS.md). Short clips (digits) still share a batch.
CPU_BATCH_SECONDS = 5.0

#: Default on a GPU, where big batches pay.
GPU_BATCH_SECONDS = 200.0

#: With freed memory kept for reuse, the heap is trimmed after every this many batches
TRIM_EVERY_KEPT = 32

#: ``forward(source (B, S), padding mask (B, S) or None) -> ((B, T, D) output, (B, T) frame mask or None)``
Forward = Callable[[torch.Tensor, "torch.Tensor | None"], tuple]


# ---------------------------------------------------------------------------------------------
# Settings


def check_device(device: str) -> bool:
    """Refuse a device this machine lacks; True for a CPU.

    Example:
        >>> check_device("cpu")
        True
    """
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise W2VError(f"--device {device}: expected cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise W2VError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                       "use --device cpu")
    return kind == "cpu"


def default_batch_seconds(device: str) -> float:
    """:data:`CPU_BATCH_SECONDS` on a CPU, :data:`GPU_BATCH_SECONDS` elsewhere.

    Example:
        >>> default_batch_seconds("cpu")
        5.0
    """
    return CPU_BATCH_SECONDS if torch.device(device).type == "cpu" else GPU_BATCH_SECONDS


@contextlib.contextmanager
def thread_settings(device: str, threads: int | None, streams: int | None) -> Iterator[int]:
    """Set torch's intra-op threads to ``threads // streams`` for the block; yields ``streams``.

    ``threads`` None: :func:`w2vtools.threads.default_threads`; ``streams`` None: ``threads``
    on a CPU (single-threaded streams lose less to other processes on a shared machine),
    1 on a GPU. On a CPU, glibc keeps freed memory for reuse (:mod:`w2vtools.malloc`). The
    caller's thread count is restored afterwards: a library call must not change it.

    Example:
        >>> with thread_settings("cpu", 2, 1) as streams:
        ...     streams, torch.get_num_threads()
        (1, 2)
    """
    if threads is not None and threads < 1 or streams is not None and streams < 1:
        raise W2VError("--threads and --streams must be at least 1")
    on_cpu = check_device(device)
    threads = int(threads) if threads else default_threads()
    streams = int(streams) if streams else (threads if on_cpu else 1)
    if on_cpu:
        malloc.keep_freed_memory(one_arena=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // streams))
    try:
        yield streams
    finally:
        torch.set_num_threads(previous)


def check_int8(int8: bool, device: str, amp: bool = False) -> None:
    """Refuse ``--int8`` off the CPU or with ``--amp``, before anything loads.

    Example:
        >>> check_int8(True, "cpu")
        >>> check_int8(True, "cuda")
        Traceback (most recent call last):
        ...
        w2vtools.errors.W2VError: --int8 --device cuda: int8 quantization runs on a CPU only (its kernels have no CUDA version); on a GPU use --amp instead, or drop --int8
    """
    if not int8:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = str(device)
    if kind != "cpu":
        raise W2VError(f"--int8 --device {device}: int8 quantization runs on a CPU only (its kernels have no "
                       "CUDA version); on a GPU use --amp instead, or drop --int8")
    if amp:
        raise W2VError("--int8 and --amp: choose one (int8 kernels take float32 inputs)")


def prepare_model(module: torch.nn.Module, device: str = "cpu", *, int8: bool = False, amp: bool = False,
                  name: str = "the model") -> torch.nn.Module:
    """The one place a model is made ready to run: on ``device``, in eval mode, and with
    ``int8`` quantized for the CPU (:func:`w2vtools.models.int8.quantize_int8`, in place).

    Args:
        module: the model (its weights already checked: quantized weights cannot be).
        device: where it runs; ``int8`` needs ``cpu``.
        int8: dynamic int8 quantization of its linear and dense convolution layers.
        amp: whether the caller autocasts; refused with ``int8`` (int8 kernels take float32).
        name: the model as the user named it, for messages.

    Raises:
        W2VError: ``int8`` off the CPU or with ``amp``, or a model with nothing to quantize.

    Example:
        >>> m = prepare_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "cpu", int8=True)
        >>> type(m[0]).__name__
        'Int8Linear'
    """
    check_int8(int8, device, amp)
    module = module.to(torch.device(device)).eval()
    if int8:
        counts = quantize_int8(module)
        if not counts["linear"] + counts["conv"]:
            raise W2VError(f"--int8: {name} has no linear or convolution layers to quantize")
        log.info("%s: int8: %d linear and %d convolution layers quantized", name, counts["linear"], counts["conv"])
    return module


# ---------------------------------------------------------------------------------------------
# A model over waveforms


class Runner:
    """Runs a per-frame model over waveforms: padded batches, long recordings in windows.

    Args:
        forward: the model call (see :data:`Forward`); run under ``torch.inference_mode``
            (and autocast with ``amp``). Float outputs come back as float32 NumPy arrays,
            integer outputs (codes) as they are.
        num_frames: frames for a number of samples (the model's rule).
        sample_rate, frame_shift: the model's input rate and seconds per frame.
        device, amp: where the model runs; autocast (float16 on CUDA, bfloat16 on CPU).
        chunk_seconds, chunk_overlap: recordings longer than ``chunk_seconds`` run in
            windows of that length with ``chunk_overlap`` seconds of context each side.
        batch_seconds: padded audio seconds per batch (windows of one recording too).

    Example:
        >>> r = Runner(lambda x, m: (x[:, ::10, None], None), num_frames=lambda n: (n + 9) // 10,
        ...            sample_rate=100, frame_shift=0.1)
        >>> [x.shape for x in r([np.zeros(100, np.float32), np.zeros(50, np.float32)])]
        [(10, 1), (5, 1)]
    """

    def __init__(self, forward: Forward, *, num_frames: Callable[[int], int], sample_rate: int, frame_shift: float,
                 device: str = "cpu", amp: bool = False, chunk_seconds: float = 60.0, chunk_overlap: float = 2.0,
                 batch_seconds: float | None = None):
        if chunk_seconds <= 0 or chunk_overlap < 0 or batch_seconds is not None and batch_seconds <= 0:
            raise W2VError("--batch-seconds and --chunk-seconds must be positive, --chunk-overlap not negative")
        self.forward = forward
        self.num_frames = num_frames
        self.sample_rate = int(sample_rate)
        self.frame_shift = float(frame_shift)
        self.hop = int(round(frame_shift * self.sample_rate))
        self.device = torch.device(device)
        self.amp = amp
        if amp:
            warn_if_bf16_is_slow(self.device, "--amp")
        self.chunk_seconds = float(chunk_seconds)
        self.chunk_samples = int(chunk_seconds * self.sample_rate)
        self.overlap_samples = int(chunk_overlap * self.sample_rate)
        self.batch_seconds = float(batch_seconds if batch_seconds is not None else default_batch_seconds(device))
        self.batch_samples = int(self.batch_seconds * self.sample_rate)

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=inference_dtype(self.device.type))

    def __call__(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(T_i, ...) output for each waveform, computed as one padded batch."""
        source, mask = collate(waves)
        source = source.to(self.device, non_blocking=True)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            out, frame_mask = self.forward(source, mask)
        out = (out.float() if out.is_floating_point() else out).cpu().numpy()
        result = []
        for row, w in enumerate(waves):
            n = self.num_frames(len(w))
            if frame_mask is not None:
                have = int((~frame_mask[row]).sum())
                if have != n:
                    raise RuntimeError(f"model gave {have} frames for {len(w)} samples, num_frames() says {n}")
            result.append(np.ascontiguousarray(out[row, :n]))
        return result

    def long(self, wave: np.ndarray) -> np.ndarray:
        """The output of one long recording, in overlapping windows stitched at frame level.

        Windows are batched by :attr:`batch_samples` (one at a time when a window exceeds
        it) and computed in order, so memory is bounded by the window, not the recording.
        """
        n = len(wave)
        if n <= self.chunk_samples:
            return self([wave])[0]
        spans = chunk_spans(n, self.chunk_samples, self.overlap_samples, self.hop, self.num_frames(n))
        pieces: list[np.ndarray | None] = [None] * len(spans)
        for batch in plan_batches([s.end - s.start for s in spans], max(self.batch_samples, 1)):
            outs = self([wave[spans[i].start : spans[i].end] for i in batch])
            for i, x in zip(batch, outs):
                pieces[i] = x
        return stitch(pieces, spans)

    def compute(self, job: Job, waves: list[np.ndarray]) -> list[np.ndarray]:
        """A job's outputs: a batch, or one recording in windows."""
        return [self.long(waves[0])] if job.chunked else self(waves)


# ---------------------------------------------------------------------------------------------
# A corpus


def corpus_utterances(corpus: str, shard: tuple[int, int] | None = None) -> list[Utterance]:
    """The utterances of ``corpus`` (shard K of N), ids checked; an empty one is an error.

    Example:
        >>> utts = corpus_utterances("data/test.tsv", (1, 4))   # doctest: +SKIP
    """
    utts = select_shard(read_corpus(corpus), shard)
    if not utts:
        raise W2VError(f"{corpus}: no utterances" + (f" in shard {shard[0]}/{shard[1]}" if shard else ""))
    check_ids(utts, corpus)
    return utts


def plan_corpus(utts: Sequence[Utterance], runner: Runner, skips: SkipLog) -> tuple[list[Job], float]:
    """The jobs for ``utts`` and their audio seconds; unreadable utterances go to ``skips``.

    Lengths come from headers, read in threads; ``cmd |`` sources are not run here
    (their length is unknown until loaded, so they go alone, in windows when long).

    Example:
        >>> jobs, seconds = plan_corpus(utts, runner, SkipLog(log))   # doctest: +SKIP
    """
    sr = runner.sample_rate
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        lengths = list(pool.map(lambda u: length_or_error(u, sr), utts))
    keep = []
    for u, n in zip(utts, lengths):
        if isinstance(n, W2VError):
            skips.add(u.uid, n)
        else:
            keep.append((u, n))
    jobs = plan_jobs([u for u, _ in keep], [n for _, n in keep], sample_rate=sr,
                     batch_seconds=runner.batch_seconds, chunk_seconds=runner.chunk_seconds)
    return jobs, sum((n or 0) for _, n in keep) / sr


def _usable(job: Job, waves: list, runner: Runner, skips: SkipLog) -> list[tuple[Utterance, np.ndarray]]:
    """The (utt, wave) pairs of a job that loaded and are long enough; the others go to ``skips``."""
    good = []
    for u, w in zip(job.utts, waves):
        if isinstance(w, W2VError):
            skips.add(u.uid, w)
        elif runner.num_frames(len(w)) < 1:
            skips.add(u.uid, f"{u.source}: {len(w)} samples at {runner.sample_rate} Hz is too short for the model")
        else:
            good.append((u, w))
    return good


def run_corpus(jobs: Sequence[Job], runner: Runner, skips: SkipLog, *, streams: int = 1,
               workers: int = 2) -> Iterator[tuple[Utterance, int, np.ndarray]]:
    """Yield ``(utterance, samples, output)`` in the plan's order, ``streams`` batches computing at once.

    Audio loads ahead in ``workers`` threads. Memory: at most ``streams`` batches computing
    and ``streams`` finished ones waiting for their turn. A model error stops the run;
    a bad utterance (unreadable, too short, NaN/Inf output) goes to ``skips``.

    Example:
        >>> for utt, n, x in run_corpus(jobs, runner, skips):   # doctest: +SKIP
        ...     writer.write(utt.uid, x)
    """
    pool = cf.ThreadPoolExecutor(max_workers=streams, thread_name_prefix="w2v-stream")
    inflight: deque = deque()
    count = [0]
    try:
        for job, waves in load_ahead(jobs, runner.sample_rate, workers, depth=max(2, workers * 2, streams + 1)):
            good = _usable(job, waves, runner, skips)
            del waves
            if not good:
                continue
            while True:  # room for one more: fewer than `streams` computing, `2 * streams` held
                while inflight and inflight[0][1].done():
                    yield from _finished(inflight.popleft(), skips, count)
                running = [f for _, f in inflight if not f.done()]
                if len(running) < streams and len(inflight) < 2 * streams:
                    break
                waiting_on = [inflight[0][1]] if len(inflight) >= 2 * streams else running
                cf.wait(waiting_on, return_when=cf.FIRST_COMPLETED)
            job_good = Job([u for u, _ in good], [len(w) for _, w in good], job.chunked)
            inflight.append((good, pool.submit(runner.compute, job_good, [w for _, w in good])))
        while inflight:
            yield from _finished(inflight.popleft(), skips, count)
    finally:
        for _, f in inflight:
            f.cancel()
        pool.shutdown(wait=True)


def _finished(entry, skips: SkipLog, count: list[int]) -> Iterator[tuple[Utterance, int, np.ndarray]]:
    """The results of one finished batch (waiting for it); NaN/Inf outputs go to ``skips``."""
    good, future = entry
    try:
        outs = future.result()  # a model error stops the run, as in one stream
    except W2VError as e:
        if not isinstance(good[0][1], RecordingWindows):
            raise
        skips.add(good[0][0].uid, e)  # a window of a long recording could not be read
        return
    for (u, w), x in zip(good, outs):
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            skips.add(u.uid, NON_FINITE)
            continue
        yield u, len(w), x
    del good, outs, entry
    count[0] += 1
    release_freed_memory(count[0])


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(batch_number: int) -> None:
    """Give the pages of freed batch tensors back to the OS: after every batch, or every
    :data:`TRIM_EVERY_KEPT` batches while they are kept for reuse.

    Batches of different shapes fragment glibc's heap, so without trimming the resident
    size creeps up with the number of batches. When :func:`w2vtools.malloc.keep_freed_memory`
    is in force, freed pages are what the next batch reuses, and trimming them after every
    batch would only make the kernel zero-fill them again (a large share of featurize's
    CPU time); trimming every few dozen batches still bounds the creep. Measurements:
    BENCHMARKS.md.

    Example:
        >>> release_freed_memory(1)
    """
    if malloc.is_keeping_freed_memory() and batch_number % TRIM_EVERY_KEPT:
        return
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
