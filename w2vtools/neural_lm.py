"""Transformer language models on text (``w2v lm --neural``): training, perplexity, sentence scores.

* :func:`train_neural_lm` trains a causal :class:`~w2vtools.models.token_transformer.TokenTransformer`
  over words or characters (:mod:`w2vtools.train.text_data`) with the one trainer
  (:mod:`w2vtools.train.trainer`) and the next-token objective
  (:class:`~w2vtools.train.objectives.NextTokenObjective`). The text is normalized as
  ``w2v lm`` normalizes it for KenLM (:func:`w2vtools.lm.normalize_line`, with ``--dict``),
  a held-out part is set aside (or ``--valid`` given), and both parts are saved in the
  run directory (``train.txt``, ``valid.txt``), so an n-gram built from ``train.txt``
  is compared on exactly the same held-out text.
* :class:`NeuralLM` loads a checkpoint and scores whole sentences, batched by tokens:
  the log10 probability of ``w1 .. wn </s>``, the quantity KenLM's ``score(bos=True,
  eos=True)`` gives, so an n-gram and a neural score add with comparable weights
  (``w2v decode --rescore``). Sentences longer than the model's ``max_positions`` are
  scored in overlapping windows (each token once, with at least half a window of context).
* :meth:`NeuralLM.evaluate`: perplexity per word, counted as KenLM counts it (one
  ``</s>`` per sentence is a word; :class:`w2vtools.lm.Evaluation`), and per token.

The checkpoint holds the weights, the vocabulary (``dictionary``) and the unit
(``extra["unit"]``); loading it takes two lines::

    from w2vtools.neural_lm import NeuralLM
    lm = NeuralLM.load("exp/nlm/checkpoint_best.pt")      # lm.score(["HELLO WORLD"]) -> [log10 P]

Example:
    >>> summary = train_neural_lm("lm_text.txt", "exp/nlm", unit="word", preset="tiny",
    ...                           dict_path="dict.ltr.txt")                              # doctest: +SKIP
    >>> summary["valid"].perplexity                                                      # doctest: +SKIP
    212.4
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, open_input
from w2vtools.formats.labels import read_dictionary
from w2vtools.lm import Evaluation, alphabet_of, normalize_line
from w2vtools.models.checkpoint import read_checkpoint
from w2vtools.models.loading import load_model
from w2vtools.models.token_transformer import TokenTransformer, TokenTransformerConfig, token_transformer_preset
from w2vtools.train.config import LM_PRESETS, TrainConfig, apply_dict, resolve_config
from w2vtools.train.launch import check_model_overrides, start_run
from w2vtools.train.objectives import NextTokenObjective
from w2vtools.train.text_data import (
    EOS, PAD, UNITS, UNK, TextDataset, build_vocabulary, encode_units, sentence_units,
)

log = logging.getLogger("w2v.lm")

LN10 = math.log(10.0)
FAMILY = "transformer_lm"


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclasses.dataclass
class NeuralEvaluation(Evaluation):
    """:class:`w2vtools.lm.Evaluation` (per-word perplexity, ``</s>`` counted) plus the model's tokens."""

    tokens: int = 0  # predicted tokens, one </s> per sentence included

    @property
    def token_perplexity(self) -> float:
        return 10 ** (-self.log10_prob / self.tokens) if self.tokens else math.nan

    def format(self) -> str:
        return (f"perplexity {self.perplexity:.2f} per word, {self.token_perplexity:.3f} per token "
                f"[ {self.tokens} tokens ], OOV rate {self.oov_rate:.2f}% [ {self.oovs} / {self.words} words ], "
                f"{self.sentences} sentences")


class NeuralLM:
    """A trained Transformer LM that scores sentences (see the module docstring).

    Args:
        model: a causal :class:`TokenTransformer`.
        vocabulary: its tokens in order (``<s> <pad> </s> <unk>`` first).
        unit: ``word`` or ``char``.
        device: where the model runs.
        max_tokens: tokens per scoring batch (sentences x longest).

    Example:
        >>> lm = NeuralLM.load("exp/nlm/checkpoint_best.pt")           # doctest: +SKIP
        >>> lm.score(["ALSO A POPULAR CONTRIVANCE", "ALSO A POPULAR CONTRIVANCES"])  # doctest: +SKIP
        [-9.81, -12.27]
    """

    def __init__(self, model: TokenTransformer, vocabulary: Sequence[str], unit: str, *, device: str = "cpu",
                 max_tokens: int = 16384) -> None:
        if not model.cfg.causal:
            raise W2VError("a bidirectional TokenTransformer is not a language model (causal=False)")
        self.model = model.to(device).eval()
        self.vocabulary = list(vocabulary)
        self.index = {u: i for i, u in enumerate(self.vocabulary)}
        self.unit = unit
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.window = model.cfg.max_positions
        self._cache: dict[str, float] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu", max_tokens: int = 16384) -> "NeuralLM":
        """A ``w2v lm --neural`` checkpoint as a scorer.

        Raises:
            W2VError: not a checkpoint of a language model.
        """
        if not Path(path).is_file():
            raise W2VError(f"{path}: no such file")
        loaded = load_model(path)
        if loaded.task != "lm" or not isinstance(loaded.model, TokenTransformer):
            raise W2VError(f"{path}: a {loaded.task} model, not a Transformer LM (w2v lm --neural makes one)")
        unit = (loaded.extra or {}).get("unit")
        if unit not in UNITS or not loaded.dictionary:
            raise W2VError(f"{path}: the checkpoint does not record its unit and vocabulary")
        return cls(loaded.model, loaded.dictionary, unit, device=device, max_tokens=max_tokens)

    def encode(self, sentence: str) -> list[int]:
        """Token ids of a sentence (words separated by spaces); unknown units are ``<unk>``."""
        return encode_units(sentence_units(sentence, self.unit), self.index)

    def score(self, sentences: Sequence[str]) -> list[float]:
        """log10 P(``w1 .. wn </s>``) of each sentence; repeated sentences are scored once."""
        todo = sorted({s for s in sentences if s not in self._cache})
        if todo:
            for s, value in zip(todo, self._score_new(todo)):
                self._cache[s] = value
            if len(self._cache) > 1_000_000:  # a bound on memory over a long run; scores stay exact
                self._cache = {s: self._cache[s] for s in sentences}
        return [self._cache[s] for s in sentences]

    def _score_new(self, sentences: Sequence[str]) -> list[float]:
        rows = [row for i, s in enumerate(sentences) for row in _windows(i, self.encode(s), self.window)]
        totals = np.zeros(len(sentences), dtype=np.float64)
        rows.sort(key=lambda r: len(r[1]))
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and (end + 1 - start) * len(rows[end][1]) <= self.max_tokens:
                end += 1
            for (i, _, _, _), value in zip(rows[start:end], self._score_rows(rows[start:end])):
                totals[i] += value
            start = end
        return (totals / LN10).tolist()

    @torch.inference_mode()
    def _score_rows(self, rows: Sequence[tuple[int, list[int], list[int], int]]) -> list[float]:
        """Natural-log probability of each row's targets from position ``first`` on (one padded batch)."""
        width = max(len(src) for _, src, _, _ in rows)
        source = torch.full((len(rows), width), PAD, dtype=torch.long)
        targets = torch.full((len(rows), width), PAD, dtype=torch.long)
        for r, (_, src, tgt, first) in enumerate(rows):
            source[r, : len(src)] = torch.tensor(src)
            targets[r, first : len(tgt)] = torch.tensor(tgt[first:])
        source, targets = source.to(self.device), targets.to(self.device)
        mask = source.eq(PAD)
        logits = self.model(source, mask if mask.any() else None)["logits"].float()
        lprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return lprobs.masked_fill(targets.eq(PAD), 0.0).sum(dim=1).tolist()

    def evaluate(self, sentences: Sequence[str]) -> NeuralEvaluation:
        """Perplexity of normalized sentences (empty ones are skipped), counted as :func:`w2vtools.lm.evaluate_lm`."""
        sentences = [s for s in (" ".join(x.split()) for x in sentences) if s]
        if not sentences:
            raise W2VError("no sentences to evaluate")
        total = sum(self.score(sentences))
        words = sum(len(s.split()) for s in sentences)
        ids = [self.encode(s) for s in sentences]
        tokens = sum(len(x) + 1 for x in ids)
        oovs = sum(1 for s in sentences for w in s.split() if UNK in self.encode(w))
        return NeuralEvaluation(sentences=len(sentences), words=words, oovs=oovs, log10_prob=total,
                                log10_prob_in_vocab=math.nan, tokens=tokens)


def _windows(i: int, ids: list[int], window: int) -> list[tuple[int, list[int], list[int], int]]:
    """Rows ``(sentence, source, targets, first scored position)`` covering ``</s> ids`` -> ``ids </s>``.

    One row when it fits the model's ``window`` positions; else windows advancing by
    half a window, each scoring only the targets the previous one did not.
    """
    source, targets = [EOS, *ids], [*ids, EOS]
    if len(source) <= window:
        return [(i, source, targets, 0)]
    rows, step, done = [], max(1, window // 2), 0
    start = 0
    while done < len(targets):
        end = min(start + window, len(targets))
        rows.append((i, source[start:end], targets[start:end], done - start))
        done = end
        start = min(start + step, len(targets) - window) if end < len(targets) else end
    return rows


# ---------------------------------------------------------------------------------------------
# Training


def read_sentences(text: str, dict_path: str | None = None, *, normalize: bool = True) -> list[str]:
    """The non-empty lines of ``text`` (``-``: stdin), normalized to ``dict_path``'s alphabet as
    ``w2v lm`` does (else whitespace only)."""
    alphabet = alphabet_of(read_dictionary(dict_path)) if dict_path and normalize else None
    with open_input(text) as f:
        lines = [normalize_line(line, alphabet) if alphabet else " ".join(line.split()) for line in f]
    sentences = [line for line in lines if line]
    if not sentences:
        raise W2VError(f"{text}: no sentences after normalization")
    return sentences


def split_held_out(sentences: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): ``fraction`` of the sentences drawn at random with ``seed``, both in text order.

    Example:
        >>> train, valid = split_held_out([f"S{i}" for i in range(10)], 0.2, 1)
        >>> len(train), len(valid)
        (8, 2)
    """
    if not 0 < fraction < 1:
        raise W2VError(f"--valid-percent must be between 0 and 100 (exclusive), got {100 * fraction:g}")
    n = max(1, int(round(len(sentences) * fraction)))
    if n >= len(sentences):
        raise W2VError(f"{len(sentences)} sentences are too few to hold {100 * fraction:g}% out: give --valid")
    held = set(np.random.default_rng(seed).permutation(len(sentences))[:n].tolist())
    return ([s for i, s in enumerate(sentences) if i not in held], [s for i, s in enumerate(sentences) if i in held])


def resolve_lm_config(preset: str, *, config_file: str | os.PathLike | None = None,
                      sets: Sequence[str] = ()) -> TrainConfig:
    """Defaults, the LM preset (:data:`w2vtools.train.config.LM_PRESETS`), a YAML file, then ``--set`` items.

    Example:
        >>> resolve_lm_config("tiny", sets=["optim.max_update=50"]).optim.max_update
        50
    """
    if preset not in LM_PRESETS:
        raise W2VError(f"unknown LM preset {preset!r} (known: {', '.join(LM_PRESETS)})")
    base = apply_dict(TrainConfig(), copy.deepcopy(LM_PRESETS[preset]), f"preset {preset}")
    cfg = resolve_config(base=base, config_file=config_file, sets=list(sets))
    if cfg.model.arch != FAMILY:
        raise W2VError(f"model.arch {cfg.model.arch!r}: w2v lm --neural trains a {FAMILY}")
    check_model_overrides(TokenTransformerConfig, cfg.model.overrides, reserved={"vocab_size", "causal", "padding_idx"})
    return cfg


@dataclasses.dataclass
class _TextSplit:
    train: list[str]
    valid: list[str]


def _text_split(text: str, valid: str | None, valid_fraction: float, dict_path: str | None, normalize: bool,
                seed: int) -> _TextSplit:
    sentences = read_sentences(text, dict_path, normalize=normalize)
    if valid is not None:
        return _TextSplit(sentences, read_sentences(valid, dict_path, normalize=normalize))
    train, held = split_held_out(sentences, valid_fraction, seed)
    log.info("%s: %d sentences for training, %d held out (%g%%)", text, len(train), len(held), 100 * valid_fraction)
    return _TextSplit(train, held)


def _vocabulary(split: _TextSplit, unit: str, min_count: int, max_vocab: int, last: Path, resume: bool) -> list[str]:
    """The resumed run's vocabulary, else the training text's units."""
    if resume:
        data = read_checkpoint(last)
        if data is None or not data.get("dictionary"):
            raise W2VError(f"{last}: not a w2v language-model checkpoint")
        return list(data["dictionary"])
    vocab = build_vocabulary((sentence_units(s, unit) for s in split.train), min_count=min_count,
                             max_size=max_vocab)
    log.info("vocabulary: %d %ss (+4 special tokens)%s", len(vocab) - 4, unit,
             f", those seen at least {min_count} times" if min_count > 1 else "")
    return vocab


def _dataset(sentences: Sequence[str], unit: str, vocab: Sequence[str], max_tokens: int, name: str) -> TextDataset:
    index = {u: i for i, u in enumerate(vocab)}
    ids = [encode_units(sentence_units(s, unit), index) for s in sentences]
    return TextDataset(ids, words=[len(s.split()) for s in sentences], max_tokens=max_tokens, name=name)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with atomic_write(path) as f:
        f.writelines(line + "\n" for line in lines)


def train_neural_lm(
    text: str,
    save_dir: str | os.PathLike,
    *,
    unit: str = "word",
    preset: str = "tiny",
    valid: str | None = None,
    valid_fraction: float = 0.05,
    dict_path: str | None = None,
    normalize: bool = True,
    min_count: int | None = None,
    max_vocab: int = 0,
    config_file: str | os.PathLike | None = None,
    sets: Sequence[str] = (),
    resume: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Train a Transformer LM on ``text``; returns the trainer's summary plus ``valid``, the
    held-out :class:`NeuralEvaluation` of the best checkpoint.

    Args:
        text: training text, one sentence a line (``-``: stdin).
        save_dir: checkpoints, ``config.yaml``, ``log.jsonl``, ``train.txt``/``valid.txt``
            (the normalized text each part was made of).
        unit: ``word`` or ``char``.
        preset: ``tiny`` or ``base`` (:data:`w2vtools.train.config.LM_PRESETS`).
        valid: held-out text; None sets ``valid_fraction`` of ``text`` aside (seeded by ``run.seed``).
        dict_path: a ``dict.ltr.txt`` whose alphabet the text is normalized to (as ``w2v lm``).
        min_count: units seen fewer times become ``<unk>`` (default: 2 for words, so that
            ``<unk>`` is trained; 1 for characters).
        max_vocab: keep at most this many units (0: all).

    Raises:
        W2VError: bad options, unreadable or empty text, a run to overwrite or nothing to resume.
    """
    if unit not in UNITS:
        raise W2VError(f"--unit must be one of {', '.join(UNITS)}, got {unit!r}")
    cfg = resolve_lm_config(preset, config_file=config_file, sets=sets)
    run = start_run(cfg, save_dir, resume=resume, device=device)
    split = _text_split(text, valid, valid_fraction, dict_path, normalize, cfg.run.seed)
    vocab = _vocabulary(split, unit, min_count or (2 if unit == "word" else 1), max_vocab, run.last, resume)
    mcfg = token_transformer_preset(cfg.model.model_preset, len(vocab), causal=True, **cfg.model.overrides)
    torch.manual_seed(cfg.run.seed)
    model = TokenTransformer(mcfg)
    train_set = _dataset(split.train, unit, vocab, mcfg.max_positions, "train")
    valid_set = _dataset(split.valid, unit, vocab, mcfg.max_positions, "valid")
    if run.dist_info.is_main:
        run.write_config(print_config=False)
        _write_lines(run.save_dir / "train.txt", split.train)
        _write_lines(run.save_dir / "valid.txt", split.valid)
    summary = run.train(model, NextTokenObjective(padding_idx=PAD), train_set=train_set, valid_set=valid_set,
                        family=FAMILY, task="lm", dictionary=vocab, feature_encoder_prefix="\0",
                        model_extra={"unit": unit})
    if not run.dist_info.is_main:
        return summary
    best = run.save_dir / "checkpoint_best.pt"
    scorer = NeuralLM.load(best if best.is_file() else run.last, device=str(run.dist_info.device))
    summary["valid"] = scorer.evaluate(split.valid)
    log.info("held-out text (%s): %s", "--valid" if valid else "valid.txt", summary["valid"].format())
    return summary


def is_neural_lm(path: str | os.PathLike) -> bool:
    """True when ``path`` is a w2v checkpoint (a ``w2v lm --neural`` model), not a KenLM ARPA or binary."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK") and read_checkpoint(path) is not None  # torch.save writes a zip archive


def evaluate_text(text: str, lm: str, *, dict_path: str | None = None, device: str = "cpu") -> NeuralEvaluation:
    """Perplexity of ``text`` (normalized with ``dict_path``'s alphabet, as for training) under a neural LM.

    Example:
        >>> print(evaluate_text("exp/nlm/valid.txt", "exp/nlm/checkpoint_best.pt").format())   # doctest: +SKIP
        perplexity 240.11 per word, 1.962 per token [ 71843 tokens ], OOV rate 0.00% [ 0 / 10870 words ], 611 sentences
    """
    return NeuralLM.load(lm, device=device).evaluate(read_sentences(text, dict_path))
