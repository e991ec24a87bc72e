"""Training data from unit files: ``<s> units </s>`` token rows for a unit BERT.

The unit-file counterpart of :class:`w2vtools.train.data.AudioDataset`, with the same
interface for :class:`w2vtools.train.trainer.Trainer` and
:class:`w2vtools.train.data.BatchSampler`: one item is a whole batch
(``dataset[BatchKey]``) and ``sizes_for_batching`` are row lengths in tokens, so
``data.max_samples_per_batch`` bounds rows x longest row in tokens (fairseq's
``max_tokens``).

Each utterance becomes one row, fairseq's masked-LM sample: ``<s>``, its units (at
most ``max_tokens - 2``: a longer utterance is cropped to a window at an offset
seeded by (seed, epoch, batch index), as audio crops are), ``</s>``, padded with
``<pad>``. Units are kept in memory as token ids (a few bytes per 10 ms of audio).

Example:
    >>> from w2vtools.formats.units import unit_vocabulary
    >>> vocab = unit_vocabulary(["3-1", "0-2"])
    >>> ds = UnitDataset({"a": ["3-1", "0-2", "3-1"]}, vocab, max_tokens=512)
    >>> ds[BatchKey(0, 0, (0,))]["source"].tolist()
    [[0, 4, 5, 4, 2]]
"""

from __future__ import annotations

import collections
import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from w2vtools.errors import W2VError
from w2vtools.formats.durations import format_duration
from w2vtools.formats.labels import SPECIAL_SYMBOLS, count_symbols
from w2vtools.formats.units import UNK_INDEX, encode_units
from w2vtools.train.data import BatchKey, purpose, stable_seed

log = logging.getLogger("w2v.train")

BOS, PAD, EOS = (SPECIAL_SYMBOLS.index(s) for s in ("<s>", "<pad>", "</s>"))


def unit_counts(units: Mapping[str, Sequence[str]]) -> collections.Counter:
    """How often each unit occurs (what ``dict.txt`` records).

    Example:
        >>> unit_counts({"a": ["1-2", "1-2", "3-4"]})["1-2"]
        2
    """
    return count_symbols(" ".join(seq) for seq in units.values())


class UnitDataset(torch.utils.data.Dataset):
    """Unit sequences as token rows, batched (one item = one batch).

    Args:
        units: ``{uid: [unit, ...]}`` (:func:`~w2vtools.formats.units.read_units`).
        vocabulary: the model's tokens (:func:`~w2vtools.formats.units.unit_vocabulary`).
        max_tokens: the longest row, markers included (the model's positions).
        min_units: utterances with fewer units are left out (:attr:`num_too_short`).
        seed: with (epoch, batch index), seeds the crop offsets.
        name: for log messages ("train", "valid").
        units_per_second: the units' rate (100 for vq-wav2vec's 10 ms), for the logs.

    Attributes:
        uids, sizes: the kept utterances and their row lengths (markers included).
        num_unknown: units outside the vocabulary (read as ``<unk>``).

    Raises:
        W2VError: nothing left, or rows that cannot hold a unit.
    """

    def __init__(self, units: Mapping[str, Sequence[str]], vocabulary: Sequence[str], *, max_tokens: int,
                 min_units: int = 1, seed: int = 1, name: str = "train", units_per_second: float = 100.0) -> None:
        if max_tokens < 3:
            raise W2VError(f"data.max_sample_size {max_tokens}: a row needs room for <s>, a unit and </s>")
        self.name, self.seed, self.max_tokens = name, int(seed), int(max_tokens)
        self.units_per_second = float(units_per_second)
        index = {tok: i for i, tok in enumerate(vocabulary)}
        self.uids: list[str] = []
        self.rows: list[np.ndarray] = []
        self.num_too_short = self.num_unknown = 0
        total_units = 0
        for uid, seq in units.items():
            if len(seq) < max(1, min_units):
                self.num_too_short += 1
                continue
            ids = np.asarray(encode_units(seq, index), dtype=np.int64)
            self.num_unknown += int((ids == UNK_INDEX).sum())
            total_units += len(ids)
            self.uids.append(uid)
            self.rows.append(ids)
        if self.num_too_short:
            log.warning("%s: left out %d of %d utterances with fewer than %d units", name, self.num_too_short,
                        len(units), min_units)
        if not self.uids:
            raise W2VError(f"{name}: no utterances left to {purpose(name)} (all {len(units)} filtered out)")
        if self.num_unknown:
            log.warning("%s: %d of %d units (%.1f %%) are not in the vocabulary and read as <unk>", name,
                        self.num_unknown, total_units, 100.0 * self.num_unknown / total_units)
        self.sizes = np.asarray([min(len(r), self.max_tokens - 2) + 2 for r in self.rows], dtype=np.int64)
        log.info("%s: %d utterances, %d units (%s at %g units/s)", name, len(self.uids), total_units,
                 format_duration(total_units / self.units_per_second), self.units_per_second)

    @property
    def sample_rate(self) -> float:
        return self.units_per_second

    @property
    def sizes_for_batching(self) -> np.ndarray:
        return self.sizes

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, key: BatchKey) -> dict:
        rng = np.random.default_rng(stable_seed(self.seed, "crop", self.name, key.epoch, key.index))
        keep = self.max_tokens - 2
        crops = []
        for i in key.ids:
            row = self.rows[i]
            start = int(rng.integers(0, len(row) - keep + 1)) if len(row) > keep else 0
            crops.append(row[start : start + keep])
        longest = max(len(c) for c in crops) + 2
        source = torch.full((len(crops), longest), PAD, dtype=torch.long)
        for r, units in enumerate(crops):
            source[r, 0] = BOS
            source[r, 1 : len(units) + 1] = torch.from_numpy(units)
            source[r, len(units) + 1] = EOS
        padding_mask = source.eq(PAD)
        lengths = torch.tensor([len(c) for c in crops], dtype=torch.long)
        return {
            "id": [self.uids[i] for i in key.ids],
            "source": source,
            "padding_mask": padding_mask if bool(padding_mask.any()) else None,
            "unit_lengths": lengths,
            "epoch": key.epoch,
            "index": key.index,
            "num_samples": int(lengths.sum()),
        }
