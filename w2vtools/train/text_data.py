"""Training data for a language model: sentences of text as token sequences, in batches.

The text counterpart of :class:`w2vtools.train.data.AudioDataset`, with the same
interface for :class:`w2vtools.train.trainer.Trainer` and
:class:`w2vtools.train.data.BatchSampler`: one item is a whole batch
(``dataset[BatchKey]``) and ``sizes_for_batching`` are lengths in *tokens*, so
``data.max_samples_per_batch`` bounds sentences x longest sentence in tokens
(fairseq's ``max_tokens``).

Units (:func:`sentence_units`): ``word`` (the sentence's words) or ``char``
(its letters with ``|`` after each word, the CTC letter targets of
:func:`w2vtools.formats.labels.words_to_letters`). The vocabulary follows the
fairseq ``Dictionary`` convention: ``<s> <pad> </s> <unk>`` then the units by
count. As in fairseq's sentence-level language modeling (``eval_lm
--sample-break-mode eos``), a sentence ``w1 .. wn`` is read as the input ``</s>
w1 .. wn`` and predicts the targets ``w1 .. wn </s>``: ``</s>`` stands for the
sentence start, and the end of the sentence is predicted like any unit.

Example:
    >>> vocab = build_vocabulary([["A", "B"], ["B"]], min_count=1)
    >>> vocab
    ['<s>', '<pad>', '</s>', '<unk>', 'B', 'A']
    >>> ds = TextDataset([encode_units(["A", "B"], vocab)], words=[2])
    >>> batch = ds[BatchKey(epoch=0, index=0, ids=(0,))]
    >>> batch["source"].tolist(), batch["targets"].tolist()
    ([[2, 5, 4]], [[5, 4, 2]])
"""

from __future__ import annotations

import collections
import logging
from typing import Iterable, Sequence

import numpy as np
import torch

from w2vtools.errors import W2VError
from w2vtools.formats.labels import SPECIAL_SYMBOLS, dictionary_from_counts, words_to_letters
from w2vtools.train.data import BatchKey

log = logging.getLogger("w2v.train")

UNITS = ("word", "char")
PAD, EOS, UNK = 1, 2, 3  # fairseq Dictionary indices of <pad>, </s>, <unk>


def sentence_units(words: str, unit: str) -> list[str]:
    """The units a sentence is modelled in: its words, or its letters with ``|`` closing each word.

    Example:
        >>> sentence_units("HI THERE", "char")
        ['H', 'I', '|', 'T', 'H', 'E', 'R', 'E', '|']
        >>> sentence_units("HI THERE", "word")
        ['HI', 'THERE']
    """
    if unit == "word":
        return words.split()
    if unit == "char":
        return words_to_letters(words, upper=False).split() if words.split() else []
    raise W2VError(f"--unit must be one of {', '.join(UNITS)}, got {unit!r}")


def build_vocabulary(sentences: Iterable[Sequence[str]], *, min_count: int = 1, max_size: int = 0) -> list[str]:
    """``<s> <pad> </s> <unk>``, then the units seen at least ``min_count`` times, most frequent first
    (ties by unit), at most ``max_size`` of them (0: all). Units left out become ``<unk>``.

    Example:
        >>> build_vocabulary([["A", "B", "B", "C"]], min_count=2)
        ['<s>', '<pad>', '</s>', '<unk>', 'B']
    """
    counts: collections.Counter = collections.Counter()
    for units in sentences:
        counts.update(units)
    kept = [u for u, n in dictionary_from_counts(counts) if n >= min_count and u not in SPECIAL_SYMBOLS]
    if max_size:
        kept = kept[:max_size]
    return [*SPECIAL_SYMBOLS, *kept]


def encode_units(units: Sequence[str], vocabulary: Sequence[str] | dict[str, int]) -> list[int]:
    """Token ids of ``units`` (``<unk>`` for units outside the vocabulary).

    Example:
        >>> encode_units(["A", "Z"], ["<s>", "<pad>", "</s>", "<unk>", "A"])
        [4, 3]
    """
    index = vocabulary if isinstance(vocabulary, dict) else {u: i for i, u in enumerate(vocabulary)}
    return [index.get(u, UNK) for u in units]


def collate_sentences(sentences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, targets, padding_mask), each (B, longest + 1): ``</s> w1..wn`` predicts ``w1..wn </s>``.

    Example:
        >>> source, targets, mask = collate_sentences([[5], [6, 7]])
        >>> source.tolist(), targets.tolist()
        ([[2, 5, 1], [2, 6, 7]], [[5, 2, 1], [6, 7, 2]])
    """
    width = max(len(s) for s in sentences) + 1
    source = torch.full((len(sentences), width), PAD, dtype=torch.long)
    targets = torch.full((len(sentences), width), PAD, dtype=torch.long)
    for row, ids in enumerate(sentences):
        n = len(ids)
        source[row, 0] = EOS
        source[row, 1 : n + 1] = torch.tensor(ids, dtype=torch.long)
        targets[row, :n] = torch.tensor(ids, dtype=torch.long)
        targets[row, n] = EOS
    return source, targets, source.eq(PAD)


class TextDataset(torch.utils.data.Dataset):
    """Encoded sentences, collated into padded next-token batches.

    Args:
        sentences: token ids per sentence (without ``</s>``).
        words: words per sentence (for the per-word perplexity); default: the token counts.
        max_tokens: longer sentences (``</s>`` included) are left out and counted
            (:attr:`num_too_long`): the model's ``max_positions``.
        name: for log messages ("train", "valid").

    Raises:
        W2VError: nothing left to train on.
    """

    #: the trainer logs throughput as num_samples / sample_rate: tokens per second here
    sample_rate = 1

    def __init__(self, sentences: Sequence[Sequence[int]], *, words: Sequence[int] | None = None,
                 max_tokens: int = 0, name: str = "train") -> None:
        words = list(words) if words is not None else [len(s) for s in sentences]
        keep = [i for i, s in enumerate(sentences) if s and (not max_tokens or len(s) + 1 <= max_tokens)]
        self.num_empty = sum(1 for s in sentences if not s)
        self.num_too_long = len(sentences) - len(keep) - self.num_empty
        self.name = name
        self.sentences = [list(sentences[i]) for i in keep]
        self.words = [int(words[i]) for i in keep]
        self.sizes = np.asarray([len(s) + 1 for s in self.sentences], dtype=np.int64)
        if self.num_too_long:
            log.warning("%s: left out %d of %d sentences longer than %d tokens (the model's max_positions)",
                        name, self.num_too_long, len(sentences), max_tokens)
        if not self.sentences:
            raise W2VError(f"{name}: no sentences left to train on ({len(sentences)} given)")
        log.info("%s: %d sentences, %d tokens, %d words", name, len(self.sentences), int(self.sizes.sum()),
                 sum(self.words))

    @property
    def sizes_for_batching(self) -> np.ndarray:
        return self.sizes

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, key: BatchKey) -> dict:
        source, targets, padding_mask = collate_sentences([self.sentences[i] for i in key.ids])
        return {
            "id": [str(i) for i in key.ids],
            "source": source,
            "targets": targets,
            "padding_mask": padding_mask if padding_mask.any() else None,
            "epoch": key.epoch,
            "index": key.index,
            "num_samples": int((~padding_mask).sum()),
            "words": sum(self.words[i] for i in key.ids),
        }
