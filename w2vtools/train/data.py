"""Training data: utterances -> batches bounded by total samples, read in DataLoader workers.

Three pieces:

* :class:`AudioDataset` holds the utterance list (from :func:`read_corpus`), their
  lengths at the training sample rate, and drops (and counts) those shorter than
  ``min_sample_size``. Its items are whole *batches*: ``dataset[(epoch, index, ids)]``
  reads every utterance of the batch with :meth:`Utterance.load` (resampling there,
  i.e. in a worker), then either crops each to the batch's shortest item, capped at
  ``max_sample_size``, at a random offset (pretraining), or pads to the longest
  (fine-tuning, with optional label sequences).
* :class:`BatchSampler` forms the batches of an epoch: indices shuffled with the
  (seed, epoch), sorted by length (length bucketing), cut into batches of at most
  ``max_samples_per_batch`` samples (items x longest cropped item), batch order
  shuffled. Batch ``g`` of an epoch goes to rank ``g % world_size``, so ranks see
  disjoint batches, and the plan is the same for any (world_size, update_freq) with
  the same product. It can start mid-epoch (``start``) for an exact resume.
* :func:`make_loader`: a :class:`torch.utils.data.DataLoader` over the two.

The crop offsets of a batch come from a generator seeded by (seed, epoch, batch
index), not from a running stream, so a batch is the same whichever rank or
worker reads it and whether or not the run was resumed.

Example:
    >>> ds = AudioDataset(read_corpus("train.tsv"), sample_rate=16000,
    ...                   min_sample_size=4000, max_sample_size=16000)   # doctest: +SKIP
    >>> sampler = BatchSampler(ds.sizes_for_batching, max_samples=96000, seed=1)
    >>> loader = make_loader(ds, sampler, num_workers=2)
    >>> for batch in loader: batch["source"].shape                      # (B, S)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from w2vtools.audio import audio_info, is_command, load_utterance
from w2vtools.augment import Augmentation
from w2vtools.batching import SkipLog, utterance_length
from w2vtools.errors import W2VError
from w2vtools.formats.durations import format_duration
from w2vtools.formats.utterance import Utterance

log = logging.getLogger("w2v.train")


def purpose(name: str) -> str:
    """What a data set named ``name`` is for, in messages: "validate on" for ``valid``, else "train on".

    Example:
        >>> purpose("valid"), purpose("train")
        ('validate on', 'train on')
    """
    return "validate on" if name == "valid" else "train on"


def label_option(name: str) -> str:
    """The ``w2v finetune`` option that gives the labels of the set named ``name``.

    Example:
        >>> label_option("valid")
        '--valid-labels'
    """
    return "--valid-labels" if name == "valid" else "--labels"


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python runs (unlike ``hash``).

    Example:
        >>> stable_seed(1, "crop", 0, 5) == stable_seed(1, "crop", 0, 5)
        True
    """
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


#: What a bad recording raises while it is read: W2VError from the loader, the rest from
#: decoders and resamplers on input they choke on. A training run skips it, never dies of it.
READ_ERRORS = (W2VError, OSError, RuntimeError, ValueError)


@dataclass
class DataCheck:
    """What :func:`check_utterances` found: the utterances to train on, their lengths, what was left out."""

    utterances: list[Utterance]
    lengths: list[int]
    unreadable: list[str]  # their ids (each named with its reason in the log)
    wrong_num_samples: list[str]  # "uid: manifest N, header M"


def check_utterances(utterances: Sequence[Utterance], sample_rate: int, *, name: str = "train",
                     verify: bool = False) -> DataCheck:
    """The check before the first update: every utterance's header (cheap), or its whole audio (``verify``).

    * A file whose header cannot be read (missing, not audio, a WAV shorter than its
      header says, an empty file), or a ``cmd |`` source that fails, is left out, each
      named on one line by :class:`~w2vtools.batching.SkipLog`, and counted.
    * A manifest ``num_samples`` that differs from the header's frame count is not
      trusted: the header's length is used (a wrong value would drop rows as "too short"
      or count hours that are not there); the count and the first case are logged.
    * With ``verify`` (``w2v pretrain/finetune --verify``), each utterance is decoded in
      full as the loader will read it, so NaN samples or a corrupt FLAC body are found
      now instead of at run time (where they are skipped too, see :class:`AudioDataset`).

    Example:
        >>> found = check_utterances(read_corpus("train.tsv"), 16000)   # doctest: +SKIP
        >>> len(found.utterances) + len(found.unreadable)
        120
    """
    skips = SkipLog(log)
    kept: list[Utterance] = []
    lengths: list[int] = []
    wrong: list[str] = []
    for u in utterances:
        try:
            if not is_command(u.source) and u.num_samples is not None and u.start is None and u.end is None:
                frames = audio_info(u.source).num_frames
                if frames != u.num_samples:
                    wrong.append(f"{u.uid}: manifest {u.num_samples}, header {frames}")
                    u = dataclasses.replace(u, num_samples=None)
            n = utterance_length(u, sample_rate)
            if verify and not is_command(u.source):  # a command's audio was decoded to count it
                n = len(load_utterance(u, sample_rate))
        except READ_ERRORS as e:
            skips.add(u.uid, _one_line(e))
            continue
        kept.append(u)
        lengths.append(int(n))
    total = len(utterances)
    if wrong:
        log.warning("%s: %d of %d utterances have a num_samples in the manifest that differs from the audio "
                    "header (first: %s); using the header's (rebuild the manifest: w2v manifest)",
                    name, len(wrong), total, wrong[0])
    if skips.uids:
        log.warning("%s: left out %d of %d utterances that cannot be read (first: %s)",
                    name, len(skips.uids), total, skips.first)
    return DataCheck(kept, lengths, list(skips.uids), wrong)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@dataclass(frozen=True)
class BatchKey:
    """What a sampler yields and the dataset reads: a batch's identity and its items."""

    epoch: int
    index: int  # the batch's index in the epoch's global plan
    ids: tuple[int, ...]  # dataset item indices


class AudioDataset(torch.utils.data.Dataset):
    """Utterances read, resampled and collated into batches (one item = one batch).

    Args:
        utterances: from :func:`w2vtools.formats.corpus.read_corpus`.
        sample_rate: the model's rate; audio is resampled to it when loaded.
        min_sample_size: shorter utterances are left out; their number is in
            :attr:`num_too_short` and logged.
        max_sample_size: crop cap (``pad=False``); with ``pad=True``, longer
            utterances are left out (:attr:`num_too_long`).
        pad: pad to the longest item instead of cropping to the shortest.
        labels: for fine-tuning, token-id sequences by utterance id; an utterance
            without labels is left out (:attr:`num_unlabelled`).
        seed: seeds the crop offsets, together with (epoch, batch index).
        name: for log messages ("train", "valid").
        lengths: the lengths at ``sample_rate`` if already known (skips the check pass).
        verify: decode every utterance in the check pass (:func:`check_utterances`).
        augment: perturbs each utterance after loading (training sets; seeded with
            ``seed``, epoch and batch index). A cropped batch still keeps to the lengths
            it was planned with; a padded one is planned with the longest an
            utterance can become (:attr:`~w2vtools.augment.Augmentation.max_stretch`).

    Without ``lengths``, :func:`check_utterances` runs first: unreadable utterances are
    left out (:attr:`num_unreadable`) and manifest lengths are checked against headers.
    At run time an utterance that fails to load (NaN samples, a file changed since)
    is left out of its batch, and the batch's ``skipped`` entry says which and why;
    a batch with nothing left gets a deterministic substitute (see :meth:`__getitem__`).

    Example:
        >>> ds = AudioDataset(utts, sample_rate=16000, min_sample_size=4000,
        ...                   max_sample_size=16000)   # doctest: +SKIP
        >>> batch = ds[BatchKey(0, 0, (0, 1, 2))]
        >>> batch["source"].shape[1] == min(ds.sizes[:3].min(), 16000)
        True
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        *,
        sample_rate: int = 16000,
        min_sample_size: int = 0,
        max_sample_size: int | None = None,
        pad: bool = False,
        labels: dict[str, Sequence[int]] | None = None,
        seed: int = 1,
        name: str = "train",
        lengths: Sequence[int] | None = None,
        verify: bool = False,
        augment: Augmentation | None = None,
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.augment = augment
        self.min_sample_size = int(min_sample_size)
        self.max_sample_size = int(max_sample_size) if max_sample_size else None
        self.pad = bool(pad)
        self.seed = int(seed)
        self.name = name
        self.num_unreadable = self.num_wrong_length = 0
        if lengths is None:
            found = check_utterances(utterances, self.sample_rate, name=name, verify=verify)
            self.num_unreadable, self.num_wrong_length = len(found.unreadable), len(found.wrong_num_samples)
            total = len(utterances)
            utterances, lengths = found.utterances, found.lengths
        else:
            total = len(utterances)
        if len(lengths) != len(utterances):
            raise ValueError("lengths and utterances differ in number")
        keep: list[int] = []
        self.num_too_short = self.num_too_long = self.num_unlabelled = 0
        for i, (u, n) in enumerate(zip(utterances, lengths)):
            if n < max(1, self.min_sample_size):
                self.num_too_short += 1
            elif self.pad and self.max_sample_size and n > self.max_sample_size:
                self.num_too_long += 1
            elif labels is not None and u.uid not in labels:
                self.num_unlabelled += 1
            else:
                keep.append(i)
        self.utterances = [utterances[i] for i in keep]
        self.sizes = np.asarray([lengths[i] for i in keep], dtype=np.int64)
        self.labels = None if labels is None else [list(labels[u.uid]) for u in self.utterances]
        if self.num_too_short:
            log.warning(
                "%s: left out %d of %d utterances shorter than %d samples (%.2f s)",
                name, self.num_too_short, total, self.min_sample_size, self.min_sample_size / self.sample_rate,
            )
        if self.num_too_long:
            log.warning(
                "%s: left out %d of %d utterances longer than %d samples (%.2f s)",
                name, self.num_too_long, total, self.max_sample_size, self.max_sample_size / self.sample_rate,
            )
        if self.num_unlabelled:
            log.warning("%s: left out %d of %d utterances without labels", name, self.num_unlabelled, total)
        if not self.utterances:
            raise W2VError(f"{name}: no utterances left to {purpose(name)} (all {total} filtered out)")
        log.info(
            "%s: %d utterances, %s of audio at %d Hz",
            name, len(self.utterances), format_duration(self.sizes.sum() / self.sample_rate), self.sample_rate,
        )
        if augment is not None:
            log.info("%s: augmented: %s", name, augment)

    @property
    def sizes_for_batching(self) -> np.ndarray:
        """Each item's length as it will be in a batch (capped at the crop size)."""
        if self.max_sample_size and not self.pad:
            return np.minimum(self.sizes, self.max_sample_size)
        if self.augment is not None and self.augment.max_stretch > 1:
            return np.ceil(self.sizes * self.augment.max_stretch).astype(np.int64)
        return self.sizes

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, key: BatchKey) -> dict:
        """Read and collate a batch; an utterance that fails to load is left out of it, not fatal.

        The batch's ``skipped`` lists ``"uid: reason"`` of those left out (the trainer
        counts and logs them). When none of the batch loads, a substitute stands in:
        the first readable utterance from a position seeded by (seed, epoch, batch
        index), so every process still runs its step and a resumed run reads what the
        uninterrupted one read.
        """
        ids, wavs, skipped = [], [], []
        for i in key.ids:
            wav = self._load_or_reason(i)
            if isinstance(wav, str):
                skipped.append(f"{self.utterances[i].uid}: {wav}")
            else:
                ids.append(i)
                wavs.append(wav)
        if not wavs:
            i, wav = self._substitute(key, skipped)
            ids, wavs = [i], [wav]
        key = dataclasses.replace(key, ids=tuple(ids))
        if self.augment is not None:
            rng = np.random.default_rng(stable_seed(self.seed, "augment", self.name, key.epoch, key.index))
            wavs = [self.augment(w, rng, self.sample_rate) for w in wavs]
        batch = self._collate_padded(key, wavs) if self.pad else self._collate_cropped(key, wavs)
        batch["skipped"] = skipped
        return batch

    def _load_or_reason(self, i: int) -> np.ndarray | str:
        try:
            return load_utterance(self.utterances[i], self.sample_rate)
        except READ_ERRORS as e:
            return _one_line(e)

    def _substitute(self, key: BatchKey, skipped: list[str]) -> tuple[int, np.ndarray]:
        n = len(self.utterances)
        first = stable_seed(self.seed, "substitute", self.name, key.epoch, key.index) % n
        for step in range(min(n, 1000)):
            i = (first + step) % n
            wav = self._load_or_reason(i)
            if not isinstance(wav, str):
                return i, wav
            if i not in key.ids:
                skipped.append(f"{self.utterances[i].uid}: {wav}")
        raise W2VError(f"{self.name}: {min(n, 1000)} utterances in a row cannot be read (e.g. {skipped[0]}); "
                       "is the corpus still there?")

    def _collate_cropped(self, key: BatchKey, wavs: list[np.ndarray]) -> dict:
        target = min(len(w) for w in wavs)
        if self.max_sample_size:
            target = min(target, self.max_sample_size)
        if self.augment is not None:  # a slowed-down utterance must not make the batch outgrow its plan
            target = min(target, int(self.sizes_for_batching[list(key.ids)].min()))
        rng = np.random.default_rng(stable_seed(self.seed, "crop", self.name, key.epoch, key.index))
        source = torch.empty(len(wavs), target, dtype=torch.float32)
        for row, w in enumerate(wavs):
            start = int(rng.integers(0, len(w) - target + 1))
            source[row] = torch.from_numpy(w[start : start + target])
        return self._batch(key, source, None)

    def _collate_padded(self, key: BatchKey, wavs: list[np.ndarray]) -> dict:
        longest = max(len(w) for w in wavs)
        source = torch.zeros(len(wavs), longest, dtype=torch.float32)
        padding_mask = torch.ones(len(wavs), longest, dtype=torch.bool)
        for row, w in enumerate(wavs):
            source[row, : len(w)] = torch.from_numpy(w)
            padding_mask[row, : len(w)] = False
        batch = self._batch(key, source, padding_mask if padding_mask.any() else None)
        if self.labels is not None:
            seqs = [self.labels[i] for i in key.ids]
            lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
            targets = torch.zeros(len(seqs), max(1, int(lengths.max())), dtype=torch.long)
            for row, s in enumerate(seqs):
                targets[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            batch["targets"] = targets
            batch["target_lengths"] = lengths
        return batch

    def _batch(self, key: BatchKey, source: torch.Tensor, padding_mask: torch.Tensor | None) -> dict:
        n = int(source.shape[0] * source.shape[1]) if padding_mask is None else int((~padding_mask).sum())
        return {
            "id": [self.utterances[i].uid for i in key.ids],
            "source": source,
            "padding_mask": padding_mask,
            "epoch": key.epoch,
            "index": key.index,
            "num_samples": n,
        }


class BatchSampler(torch.utils.data.Sampler):
    """Deterministic, length-bucketed batches of at most ``max_samples`` samples, split over ranks.

    The epoch's global plan is cut to a multiple of ``world_size * update_freq`` so
    every update of every rank gets the same number of micro-batches; rank ``r``
    reads global batches ``r, r + W, r + 2W, ...``. For a given seed the plan
    depends only on the epoch, so 2 ranks x update_freq 1 read exactly what 1 rank
    x update_freq 2 reads.

    Args:
        sizes: each item's (capped) length, e.g. :attr:`AudioDataset.sizes_for_batching`.
        max_samples: bound on items x longest item of a batch.
        max_batch_size: at most this many items (0 = no limit).
        seed: with the epoch, fixes the order.
        shuffle: False keeps a fixed length-sorted order (validation).
        world_size, rank: the process layout.
        update_freq: micro-batches per update per rank.
        drop_remainder: cut the plan to a whole number of updates (training);
            validation keeps every batch.

    Example:
        >>> s = BatchSampler(np.array([5, 6, 7, 8]), max_samples=14, seed=0)
        >>> sorted(len(b) for b in s.plan(0))
        [1, 1, 2]
    """

    def __init__(
        self,
        sizes: Sequence[int] | np.ndarray,
        *,
        max_samples: int,
        max_batch_size: int = 0,
        seed: int = 1,
        shuffle: bool = True,
        world_size: int = 1,
        rank: int = 0,
        update_freq: int = 1,
        drop_remainder: bool = True,
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.max_samples = int(max_samples)
        self.max_batch_size = int(max_batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.update_freq = int(update_freq)
        self.drop_remainder = drop_remainder
        self.epoch = 0
        self.start = 0
        too_long = int((self.sizes > self.max_samples).sum())
        if too_long:
            raise W2VError(
                f"{too_long} utterances are longer than the batch bound of {self.max_samples} samples "
                "(raise data.max_samples_per_batch or lower data.max_sample_size)"
            )
        self._cache: tuple[int, list[tuple[int, ...]]] | None = None

    def plan(self, epoch: int) -> list[tuple[int, ...]]:
        """The global batches of ``epoch``, in the order they are consumed."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(stable_seed(self.seed, "batches", epoch))
        n = len(self.sizes)
        if self.shuffle:
            # A random tie-break, then a stable sort by length: fairseq's ordered_indices.
            order = rng.permutation(n)
            order = order[np.argsort(self.sizes[order], kind="stable")]
        else:
            order = np.argsort(self.sizes, kind="stable")
        batches: list[tuple[int, ...]] = []
        current: list[int] = []
        longest = 0
        for i in order.tolist():
            size = int(self.sizes[i])
            new_longest = max(longest, size)
            full = (len(current) + 1) * new_longest > self.max_samples or (
                self.max_batch_size and len(current) >= self.max_batch_size
            )
            if current and full:
                batches.append(tuple(current))
                current, new_longest = [], size
            current.append(i)
            longest = new_longest
        if current:
            batches.append(tuple(current))
        if self.shuffle:
            perm = rng.permutation(len(batches))
            batches = [batches[j] for j in perm]
        if self.drop_remainder:
            group = self.world_size * self.update_freq
            usable = len(batches) // group * group
            if usable == 0:
                raise W2VError(
                    f"only {len(batches)} batches per epoch, fewer than world_size x update_freq = {group}"
                    " (more data or a smaller data.max_samples_per_batch)"
                )
            batches = batches[:usable]
        self._cache = (epoch, batches)
        return batches

    def num_batches(self, epoch: int) -> int:
        """Global batches in ``epoch`` (all ranks together)."""
        return len(self.plan(epoch))

    def updates_per_epoch(self, epoch: int) -> int:
        return self.num_batches(epoch) // (self.world_size * self.update_freq)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from global batch ``start`` on (a multiple of world_size)."""
        if start % self.world_size:
            raise ValueError(f"start {start} is not a multiple of world_size {self.world_size}")
        self.epoch = int(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[BatchKey]:
        batches = self.plan(self.epoch)
        for g in range(self.start + self.rank, len(batches), self.world_size):
            yield BatchKey(self.epoch, g, batches[g])

    def __len__(self) -> int:
        total = len(self.plan(self.epoch))
        return len(range(self.start + self.rank, total, self.world_size))


def _worker_init(_: int) -> None:
    # Workers decode and resample; one thread each keeps them off the training threads.
    torch.set_num_threads(1)


def _unwrap(batch: dict) -> dict:
    return batch


def make_loader(
    dataset: AudioDataset, sampler: BatchSampler, *, num_workers: int = 2, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A DataLoader whose workers read, resample and collate whole batches.

    Example:
        >>> loader = make_loader(ds, BatchSampler(ds.sizes_for_batching, max_samples=96000))  # doctest: +SKIP
    """
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        collate_fn=_unwrap,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        pin_memory=pin_memory,  # page-locked batches copy to the GPU asynchronously
    )
