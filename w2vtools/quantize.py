"""``w2v quantize``: discrete units per frame.

Two sources of units:

* a model's own quantizer: vq-wav2vec (Gumbel or k-means) and wav2vec 2.0 codes,
  ``G`` indices per frame, written ``g0-g1`` (fairseq's ``vq-wav2vec_featurize.py``)
  or with ``index=True`` as one integer per frame, ``sum_g code_g * V**(G-1-g)``
  (``g0 * V + g1`` for two groups of V entries);
* k-means on stored features (HuBERT-style): :func:`fit_kmeans` learns K centroids
  from a features file (:func:`~w2vtools.formats.features.open_features`),
  :func:`assign_units` gives each frame its nearest centroid.

Output: one utterance a line, ``uid tok tok ...``, in corpus order (``-`` = stdout),
written atomically by one process at a time; bad recordings are named and skipped
(exit 3; exit 1 and no output when every one failed).
``dedup`` collapses runs of the same unit. Codebook usage and perplexity
(``exp`` of the entropy of the unit distribution, per group) are reported.

Example:
    >>> quantize_audio("data/train.tsv", "codes.txt", model="vq-wav2vec")   # doctest: +SKIP
    >>> cb = fit_kmeans("feats.h5", 100)                                     # doctest: +SKIP
    >>> save_codebook("km100.npy", cb); assign_units("feats.h5", cb, "units.txt", dedup=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from w2vtools.batching import SkipLog
from w2vtools.errors import W2VError
from w2vtools.encoders import Encoder, load_encoder
from w2vtools.fileio import atomic_write, exclusive_output
from w2vtools.formats.features import open_features
from w2vtools.malloc import keep_freed_memory
from w2vtools.models.unit_bert import quantizer_shape
from w2vtools.runner import Runner, check_device, corpus_utterances, plan_corpus, run_corpus

log = logging.getLogger("w2v.quantize")


# ---------------------------------------------------------------------------------------------
# Formatting and statistics


def format_codes(codes: np.ndarray, *, num_vars: int | None = None, index: bool = False, dedup: bool = False) -> list[str]:
    """Tokens for a (T, G) code array: ``"g0-g1"`` strings, or one integer per frame with ``index``.

    Example:
        >>> format_codes(np.array([[1, 2], [1, 2], [3, 0]]))
        ['1-2', '1-2', '3-0']
        >>> format_codes(np.array([[1, 2], [1, 2], [3, 0]]), num_vars=10, index=True, dedup=True)
        ['12', '30']
    """
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    if index:
        if codes.shape[1] > 1 and not num_vars:
            raise ValueError("index=True with several groups needs num_vars")
        flat = np.zeros(codes.shape[0], dtype=np.int64)
        for g in range(codes.shape[1]):
            flat = flat * (num_vars or 1) + codes[:, g]
        toks = [str(int(v)) for v in flat]
    else:
        toks = ["-".join(str(int(v)) for v in row) for row in codes]
    if dedup:
        toks = [t for i, t in enumerate(toks) if i == 0 or t != toks[i - 1]]
    return toks


@dataclass
class CodeStats:
    """Counts of codes per group, for usage and perplexity.

    Example:
        >>> s = CodeStats(1, 4); s.add(np.array([[0], [1], [0], [1]]))
        >>> s.usage(), round(s.perplexity()[0], 3)
        ([0.5], 2.0)
    """

    groups: int
    num_vars: int
    counts: np.ndarray = field(init=False)

    def __post_init__(self):
        self.counts = np.zeros((self.groups, self.num_vars), dtype=np.int64)

    def add(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes).reshape(-1, self.groups)
        for g in range(self.groups):
            self.counts[g] += np.bincount(codes[:, g], minlength=self.num_vars)[: self.num_vars]

    def usage(self) -> list[float]:
        """Fraction of each group's codebook that was used at least once."""
        return [float((c > 0).sum() / self.num_vars) for c in self.counts]

    def perplexity(self) -> list[float]:
        """exp(entropy) of each group's code distribution (1 .. num_vars)."""
        out = []
        for c in self.counts:
            total = c.sum()
            if total == 0:
                out.append(0.0)
                continue
            p = c[c > 0] / total
            out.append(float(np.exp(-(p * np.log(p)).sum())))
        return out

    def line(self) -> str:
        used = ", ".join(f"{u * 100:.1f}%" for u in self.usage())
        ppl = ", ".join(f"{p:.1f}" for p in self.perplexity())
        n = int(self.counts[0].sum())
        return f"{n} frames; codebook usage {used} of {self.num_vars} per group; perplexity {ppl}"


class OrderedLines:
    """Write lines as they come, then emit them in a given key order (memory: one offset per key)."""

    def __init__(self, out: str):
        self.out = out
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        self._where: dict[str, tuple[int, int]] = {}

    def add(self, key: str, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        self._where[key] = (self._tmp.tell(), len(data))
        self._tmp.write(data)

    def finish(self, order: Sequence[str]) -> None:
        self._tmp.flush()
        with atomic_write(self.out, "wb") as f:
            for key in order:
                if key in self._where:
                    pos, size = self._where[key]
                    self._tmp.seek(pos)
                    f.write(self._tmp.read(size))
        self._tmp.close()


# ---------------------------------------------------------------------------------------------
# Model codes


def _find_quantizing(module):
    if hasattr(module, "quantize") and hasattr(module, "num_frames"):
        return module
    for attr in ("encoder", "w2v_encoder", "model"):
        inner = getattr(module, attr, None)
        if inner is not None and hasattr(inner, "quantize"):
            return inner
    raise W2VError(f"{type(module).__name__}: this model cannot quantize (vq-wav2vec or wav2vec 2.0 needed)")


def quantize_audio(
    corpus: str,
    out: str,
    *,
    model,
    index: bool = False,
    dedup: bool = False,
    device: str = "cpu",
    batch_seconds: float | None = 200.0,
    threads: int | None = None,
    workers: int = 2,
    chunk_seconds: float = 60.0,
    chunk_overlap: float = 2.0,
) -> CodeStats:
    """Write the model quantizer's codes for every utterance of ``corpus`` to ``out``.

    Args:
        corpus: TSV manifest, Kaldi data dir, ``wav.scp`` or ``-``.
        out: text file (``-`` = stdout): ``uid tok tok ...`` per line, corpus order.
        model: checkpoint path, named model, or an :class:`~w2vtools.encoders.Encoder`.
        index: one integer per frame instead of ``g0-g1``.
        dedup: collapse repeated consecutive tokens.
        batch_seconds, chunk_seconds, chunk_overlap: the corpus runner's batches and
            windows (:mod:`w2vtools.runner`): recordings longer than ``chunk_seconds``
            are quantized in windows, their codes stitched at frame level.

    Returns:
        the :class:`CodeStats` (usage, perplexity), also logged.
    """
    if threads:
        torch.set_num_threads(int(threads))
    if check_device(device):
        keep_freed_memory()  # batch after batch of activations reuse the same pages (w2vtools/malloc.py)
    utts = corpus_utterances(corpus)
    with exclusive_output(out):
        enc = model if isinstance(model, Encoder) else load_encoder(model, device=device)
        if enc.family in ("fbank", "mfcc"):
            raise W2VError(f"--model {enc.family} has no quantizer; use --kmeans on stored features instead")
        module = _find_quantizing(enc.module)
        module.eval().to(device)
        runner = Runner(lambda x, m: (module.quantize(x, m), None), num_frames=module.num_frames,
                        sample_rate=int(module.sample_rate), frame_shift=float(module.frame_shift), device=device,
                        chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap, batch_seconds=batch_seconds)
        groups, num_vars = quantizer_shape(module)
        stats = CodeStats(groups, num_vars)
        skips = SkipLog(log)
        lines = OrderedLines(out)

        def emit(u, codes):
            lines.add(u.uid, " ".join([u.uid, *format_codes(codes, num_vars=num_vars, index=index, dedup=dedup)]))

        t0 = time.monotonic()
        audio = 0.0
        jobs, _ = plan_corpus(utts, runner, skips)
        for u, n, codes in run_corpus(jobs, runner, skips, workers=workers):
            stats.add(codes)
            emit(u, codes)
            audio += n / runner.sample_rate
        skips.check_some_written(len(utts) - len(skips), out)  # all failed: no output file
        lines.finish([u.uid for u in utts])
    wall = time.monotonic() - t0
    log.info("quantize: %d utterances, %.1f audio-s/s; %s", len(utts) - len(skips), audio / max(wall, 1e-9),
             stats.line())
    skips.raise_if_any(len(utts), out)
    return stats


# ---------------------------------------------------------------------------------------------
# k-means on stored features


def sample_frames(spec: str, max_frames: int, *, seed: int = 0) -> np.ndarray:
    """Up to ``max_frames`` frames drawn uniformly from a features file (float32, (N, D)).

    Reservoir sampling over utterances in file order, so memory is bounded by
    ``max_frames`` however large the file is.
    """
    rng = np.random.default_rng(seed)
    reservoir: np.ndarray | None = None
    seen = 0
    with open_features(spec) as r:
        for uid, x in r:
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 2 or x.shape[0] == 0:
                continue
            if reservoir is None:
                reservoir = np.empty((max_frames, x.shape[1]), np.float32)
            elif x.shape[1] != reservoir.shape[1]:
                raise W2VError(f"{spec}: {uid} has dimension {x.shape[1]}, earlier utterances {reservoir.shape[1]}")
            # fill first, then reservoir-sample the rest (vectorized: frame number s replaces
            # slot j ~ U[0, s] when j < max_frames; later frames win ties, as sequentially)
            fill = min(max(max_frames - seen, 0), x.shape[0])
            reservoir[seen : seen + fill] = x[:fill]
            rest = x[fill:]
            if len(rest):
                positions = seen + fill + np.arange(len(rest))
                j = rng.integers(0, positions + 1)
                keep = j < max_frames
                reservoir[j[keep]] = rest[keep]
            seen += x.shape[0]
    if reservoir is None:
        raise W2VError(f"{spec}: no frames to learn k-means from")
    return reservoir[: min(seen, max_frames)].copy()


def _sq_dist(x, c):
    """Squared distances (N, K) without the (N, K, D) broadcast."""
    return (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]


def _nearest(x, c, block: int = 65536):
    idx = torch.empty(x.shape[0], dtype=torch.long)
    dmin = torch.empty(x.shape[0], dtype=x.dtype)
    for s in range(0, x.shape[0], block):
        d = _sq_dist(x[s : s + block], c)
        dmin[s : s + block], idx[s : s + block] = d.min(1)
    return idx, dmin.clamp_min(0)


def fit_kmeans(
    spec: str, k: int, *, max_frames: int = 200_000, iterations: int = 100, tol: float = 1e-4, seed: int = 0
) -> np.ndarray:
    """Learn ``k`` centroids on frames of a features file (k-means++ init, Lloyd iterations).

    Args:
        spec: features file (``feats.h5``, ``scp:feats.scp``, ...).
        k: number of units.
        max_frames: frames sampled for fitting (HuBERT fits on a sample too).
        iterations: at most this many Lloyd steps; stops when the inertia improves by < ``tol`` (relative).
        seed: sampling and initialization seed (same seed, same codebook).

    Returns:
        (k, D) float32 centroids.

    Example:
        >>> cb = fit_kmeans("feats.h5", 100)    # doctest: +SKIP
    """
    if k < 1:
        raise W2VError(f"--kmeans {k}: need at least one unit")
    x_np = sample_frames(spec, max_frames, seed=seed)
    if x_np.shape[0] < k:
        raise W2VError(f"{spec}: {x_np.shape[0]} frames cannot make {k} clusters")
    x = torch.from_numpy(x_np).double()
    g = torch.Generator().manual_seed(seed)
    # k-means++: each next centroid drawn with probability proportional to squared distance.
    centers = torch.empty(k, x.shape[1], dtype=x.dtype)
    centers[0] = x[torch.randint(x.shape[0], (1,), generator=g)]
    _, d = _nearest(x, centers[:1])
    for j in range(1, k):
        total = d.sum()
        if total <= 0:
            pick = torch.randint(x.shape[0], (1,), generator=g)
        else:
            pick = torch.multinomial(d / total, 1, generator=g)
        centers[j] = x[pick]
        d = torch.minimum(d, _sq_dist(x, centers[j : j + 1])[:, 0].clamp_min(0))
    prev = math.inf
    for it in range(iterations):
        idx, d = _nearest(x, centers)
        inertia = float(d.sum())
        sums = torch.zeros_like(centers).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            # re-seed empty clusters at the frames farthest from their centroid
            far = torch.topk(d, int(empty.sum())).indices
            centers[empty] = x[far]
        if math.isfinite(prev) and prev - inertia <= tol * max(prev, 1e-12) and not empty.any():
            break
        prev = inertia
    log.info("k-means: %d units on %d frames of dim %d, %d iterations, inertia/frame %.4g",
             k, x.shape[0], x.shape[1], it + 1, inertia / x.shape[0])
    return centers.float().numpy()


def save_codebook(path: str | os.PathLike, centroids: np.ndarray) -> None:
    """Save centroids as a ``.npy`` (K, D) float32 array, atomically."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.asarray(centroids, dtype=np.float32))


def load_codebook(path: str | os.PathLike) -> np.ndarray:
    """Load a codebook saved by :func:`save_codebook` (a (K, D) ``.npy``)."""
    try:
        cb = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise W2VError(f"{path}: no such codebook file") from None
    except ValueError as e:
        raise W2VError(f"{path}: not a .npy codebook ({e})") from None
    if cb.ndim != 2:
        raise W2VError(f"{path}: a codebook is (K, D), this array is {cb.shape}")
    return cb.astype(np.float32)


def assign_units(spec: str, centroids: np.ndarray, out: str, *, dedup: bool = False) -> CodeStats:
    """Nearest-centroid unit per frame of every utterance in a features file; writes ``uid u u ...``.

    Example:
        >>> stats = assign_units("feats.h5", load_codebook("km100.npy"), "units.txt")   # doctest: +SKIP
    """
    c = torch.from_numpy(np.asarray(centroids, np.float32))
    stats = CodeStats(1, c.shape[0])
    with exclusive_output(out), open_features(spec) as r, atomic_write(out) as f:
        for uid, x in r:
            x = np.asarray(x, np.float32)
            if x.ndim != 2 or x.shape[1] != c.shape[1]:
                raise W2VError(f"{spec}: {uid} has features {x.shape}, the codebook has dimension {c.shape[1]}")
            idx, _ = _nearest(torch.from_numpy(x), c)
            codes = idx.numpy()[:, None]
            stats.add(codes)
            f.write(" ".join([uid, *format_codes(codes, index=True, num_vars=c.shape[0], dedup=dedup)]) + "\n")
    log.info("quantize: %s", stats.line())
    return stats
