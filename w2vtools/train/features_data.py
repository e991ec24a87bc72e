"""Training data from stored features: ``(T, D)`` matrices per utterance id, with CTC labels.

The feature-file counterpart of :class:`w2vtools.train.data.AudioDataset`, with the
same interface for :class:`w2vtools.train.trainer.Trainer` and
:class:`w2vtools.train.data.BatchSampler`: one item is a whole batch
(``dataset[BatchKey]``), ``sizes_for_batching`` are lengths in *frames*, so
``data.max_samples_per_batch`` bounds items x longest item in frames.

Any spec :func:`w2vtools.formats.features.open_features` reads works (``*.h5``,
``scp:feats.scp``, ``ark:f.ark``, an h5context folder). The file is read once at
start-up for the lengths and the per-dimension mean/variance (the model stores
them for its input normalization); when the features fit in ``cache_bytes`` they
stay in memory, otherwise batches re-read them (each DataLoader worker opens its
own reader).

Example:
    >>> ds = FeatureDataset("feats/train.h5", labels={"0_george_5": [5, 6, 4]})   # doctest: +SKIP
    >>> sampler = BatchSampler(ds.sizes_for_batching, max_samples=4000, seed=1)
    >>> batch = ds[next(iter(sampler))]
    >>> batch["source"].shape        # (B, T, D)
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import numpy as np
import torch

from w2vtools.errors import W2VError
from w2vtools.formats.durations import format_duration
from w2vtools.formats.features import open_features
from w2vtools.train.data import BatchKey, label_option, purpose

log = logging.getLogger("w2v.train")


class FeatureDataset(torch.utils.data.Dataset):
    """Stored features joined with label sequences by utterance id.

    Args:
        spec: the feature file (any :func:`~w2vtools.formats.features.open_features` spec).
        labels: token-id sequences by utterance id; utterances without features or
            without labels are left out and counted (:attr:`num_unlabelled`,
            :attr:`num_missing`).
        min_frames: shorter utterances are left out (:attr:`num_too_short`).
        max_frames: longer ones too (0 = no limit; :attr:`num_too_long`).
        name: for log messages ("train", "valid").
        cache_bytes: keep the features in memory when they fit in this many bytes.

    Attributes:
        uids: the kept utterance ids, in the file's order.
        sizes: their lengths in frames.
        dim: the feature dimension.
        attrs: what the feature file records (``frame_shift``, ``model``, ``layer``...).
        frame_rate: frames per second (from ``frame_shift``; 100 when unrecorded).

    Raises:
        W2VError: unreadable file, matrices of different widths, non-finite values,
            or nothing left to train on.
    """

    def __init__(
        self,
        spec: str,
        labels: Mapping[str, Sequence[int]],
        *,
        min_frames: int = 1,
        max_frames: int = 0,
        name: str = "train",
        cache_bytes: int = 2 << 30,
    ) -> None:
        self.spec = str(spec)
        self.name = name
        reader = open_features(self.spec)
        if reader.is_stream:
            # training makes a pass to measure, then one per epoch: a pipe can be read once
            raise W2VError(f"{self.spec}: finetune reads its {name} features several times, a pipe only once: "
                           "write them to a file (w2v featurize ... feats.h5) and give that")
        self.attrs = dict(reader.attrs)
        shift = self.attrs.get("frame_shift")
        self.frame_shift = float(shift) if shift else 0.01
        self.frame_rate = 1.0 / self.frame_shift
        self.dim = 0
        self.num_unlabelled = self.num_too_short = self.num_too_long = 0
        try:
            seen, stats = self._scan(reader, labels, min_frames, max_frames, cache_bytes)
        finally:
            reader.close()
        self.num_missing = sum(1 for uid in labels if uid not in seen)
        self.sizes = np.asarray(self.sizes, dtype=np.int64)
        self.labels = [list(labels[u]) for u in self.uids]
        self._reader = None
        self._reader_pid = -1
        self._report(len(seen), len(labels), min_frames, max_frames)
        total, sum_x, sum_x2 = stats
        mean = sum_x / total
        var = np.maximum(sum_x2 / total - mean * mean, 0.0)
        self.mean = torch.from_numpy(mean.astype(np.float32))
        self.std = torch.from_numpy(np.sqrt(var).astype(np.float32))
        log.info("%s: %d utterances, %d frames of %d dims (%s at %.0f frames/s)%s", name, len(self.uids),
                 int(total), self.dim, format_duration(total / self.frame_rate), self.frame_rate,
                 "" if self._cache is not None else "; read from the file per batch")

    def _scan(self, reader, labels: Mapping[str, Sequence[int]], min_frames: int, max_frames: int,
              cache_bytes: int) -> tuple[set[str], tuple[float, np.ndarray, np.ndarray]]:
        """Read the file once: keep the labelled utterances of a fitting length (cached when they fit
        in ``cache_bytes``); the ids seen and (frames, sum, sum of squares) of the kept ones."""
        self.uids: list[str] = []
        self.sizes: list[int] = []
        cache: dict[str, np.ndarray] | None = {}
        cached_bytes = 0
        total = 0.0
        sum_x = sum_x2 = None
        seen: set[str] = set()
        for uid, x in reader:
            x = np.asarray(x)
            self._check_shape(uid, x)
            seen.add(uid)
            if uid not in labels:
                self.num_unlabelled += 1
                continue
            n = int(x.shape[0])
            if n < max(1, min_frames):
                self.num_too_short += 1
                continue
            if max_frames and n > max_frames:
                self.num_too_long += 1
                continue
            x64 = x.astype(np.float64)
            if not np.isfinite(x64).all():
                raise W2VError(f"{self.spec}: {uid!r} has NaN or infinite values")
            if sum_x is None:
                sum_x, sum_x2 = np.zeros(self.dim), np.zeros(self.dim)
            sum_x += x64.sum(axis=0)
            sum_x2 += (x64 * x64).sum(axis=0)
            total += n
            self.uids.append(uid)
            self.sizes.append(n)
            if cache is not None:
                arr = np.ascontiguousarray(x, dtype=np.float32)
                cached_bytes += arr.nbytes
                if cached_bytes > cache_bytes:
                    cache = None  # too large: read batches from the file instead
                else:
                    cache[uid] = arr
        self._cache = cache
        return seen, (total, sum_x, sum_x2)

    def _check_shape(self, uid: str, x: np.ndarray) -> None:
        """Every matrix is (T, D) with the first one's D."""
        if x.ndim != 2:
            raise W2VError(f"{self.spec}: {uid!r} is not a (T, D) matrix (shape {x.shape})")
        if not self.dim:
            self.dim = int(x.shape[1])
        elif x.shape[1] != self.dim:
            raise W2VError(f"{self.spec}: {uid!r} has {x.shape[1]} dimensions, earlier ones {self.dim}")

    def _report(self, count: int, num_labels: int, min_frames: int, max_frames: int) -> None:
        """Log what was left out; raise when nothing is left."""
        for what, n in (("without labels", self.num_unlabelled),
                        (f"shorter than {min_frames} frames", self.num_too_short),
                        (f"longer than {max_frames} frames", self.num_too_long)):
            if n:
                log.warning("%s: left out %d of %d utterances %s", self.name, n, count, what)
        if self.num_missing:
            # a transcript table often covers several sets: not a problem in itself
            log.info("%s: %d labelled utterances have no features in %s", self.name, self.num_missing, self.spec)
        if not self.uids:
            raise W2VError(f"{self.name}: no utterances left to {purpose(self.name)} in {self.spec} "
                           f"({count} with features, {num_labels} with labels; no id is in both: give the "
                           f"transcripts of these utterances with {label_option(self.name)})")

    # The trainer logs throughput as num_samples / sample_rate: frames per second here.
    @property
    def sample_rate(self) -> float:
        return self.frame_rate

    @property
    def sizes_for_batching(self) -> np.ndarray:
        return self.sizes

    def __len__(self) -> int:
        return len(self.uids)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None  # readers hold open files: each worker opens its own
        state["_reader_pid"] = -1
        return state

    def _matrix(self, i: int) -> np.ndarray:
        uid = self.uids[i]
        if self._cache is not None:
            return self._cache[uid]
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = open_features(self.spec)
            self._reader_pid = os.getpid()
        return np.asarray(self._reader[uid], dtype=np.float32)

    def __getitem__(self, key: BatchKey) -> dict:
        mats = [self._matrix(i) for i in key.ids]
        longest = max(m.shape[0] for m in mats)
        source = torch.zeros(len(mats), longest, self.dim, dtype=torch.float32)
        padding_mask = torch.ones(len(mats), longest, dtype=torch.bool)
        for row, m in enumerate(mats):
            source[row, : m.shape[0]] = torch.from_numpy(m)
            padding_mask[row, : m.shape[0]] = False
        seqs = [self.labels[i] for i in key.ids]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        targets = torch.zeros(len(seqs), max(1, int(lengths.max())), dtype=torch.long)
        for row, s in enumerate(seqs):
            targets[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        return {
            "id": [self.uids[i] for i in key.ids],
            "source": source,
            "padding_mask": padding_mask if padding_mask.any() else None,
            "epoch": key.epoch,
            "index": key.index,
            "num_samples": int((~padding_mask).sum()),
            "targets": targets,
            "target_lengths": lengths,
        }
