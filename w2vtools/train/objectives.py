"""Training objectives: what one micro-batch costs, and what the logs show.

An objective is called with the (possibly DDP-wrapped) model and a batch from
:mod:`w2vtools.train.data` and returns ``(loss_sum, sample_size, stats)``:

* ``loss_sum``: a scalar tensor *summed* over the batch's targets (the trainer
  divides the gradients by the sample size all-reduced over micro-batches and
  ranks, so N processes x update_freq 1 == 1 process x update_freq N);
* ``sample_size``: the number of targets the loss is summed over;
* ``stats``: plain floats, summed by the trainer over micro-batches and ranks
  (with ``_batches`` counting micro-batches for the means).

:meth:`Objective.metrics` turns summed stats into the logged numbers (loss in
bits per target, accuracy, perplexities, ...); :meth:`Objective.guard` tells the
trainer what "collapsed" looks like for the model.

Example:
    >>> objective = PretrainObjective()                  # doctest: +SKIP
    >>> loss_sum, sample_size, stats = objective(model, batch)
    >>> objective.metrics({**stats, "_batches": 1})["accuracy"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torchaudio.functional import edit_distance

LN2 = math.log(2.0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _to_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        return float(value.detach().float().item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True)
class Guard:
    """What a healthy contrastive run must move away from.

    Attributes:
        chance_bits: the loss in bits of guessing among K negatives + 1 positive,
            log2(K + 1), or None when the objective is not contrastive.
        num_codes: the number of code-book entries (groups x entries), or None.
    """

    chance_bits: float | None = None
    num_codes: int | None = None
    groups: int = 1


class Objective:
    """Base class: subclasses implement ``__call__`` and may refine ``metrics`` / ``guard``."""

    #: stats averaged over micro-batches rather than summed over targets
    mean_keys: tuple[str, ...] = ()

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        raise TypeError(f"{type(self).__name__} does not define __call__")

    def metrics(self, stats: dict[str, float]) -> dict[str, float]:
        """Logged numbers from stats summed over micro-batches (and ranks)."""
        out: dict[str, float] = {}
        sample_size = stats.get("sample_size", 0.0)
        batches = max(1.0, stats.get("_batches", 1.0))
        if sample_size > 0 and "loss" in stats:
            out["loss"] = stats["loss"] / sample_size / LN2
        for key, value in stats.items():
            if key in self.mean_keys:
                out[key] = value / batches
            elif _is_summed_loss(key) and sample_size > 0:
                out[key] = value / sample_size / LN2
        return out

    def guard(self, model: torch.nn.Module) -> Guard:
        return Guard()


def _is_summed_loss(key: str) -> bool:
    # loss terms the models sum over targets ("loss_contrastive", "diversity_loss", "features_pen")
    return key != "loss" and (key.startswith("loss_") or key.endswith("_loss") or key == "features_pen")


class PretrainObjective(Objective):
    """Self-supervised loss of any family: ``model(source, padding_mask)`` then
    ``model.pretraining_loss(net_output)``.

    The model's stats are passed through; ``correct``/``count`` become
    ``accuracy``, and perplexities and temperature are averaged over micro-batches.

    Example:
        >>> loss_sum, sample_size, stats = PretrainObjective()(model, batch)   # doctest: +SKIP
    """

    mean_keys = ("code_perplexity", "prob_perplexity", "temp", "temperature", "kmeans_loss")
    #: model stats that are recomputed here from summed parts
    derived_keys = ("accuracy",)

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        net_output = model(batch["source"], batch.get("padding_mask"))
        loss_sum, sample_size, raw = unwrap(model).pretraining_loss(net_output)
        stats: dict[str, float] = {}
        for key, value in (raw or {}).items():
            v = _to_float(value)
            if v is not None and key not in ("sample_size", "_batches") and key not in self.derived_keys:
                stats[key] = v
        stats["loss"] = float(loss_sum.detach().float().item())
        stats["sample_size"] = float(sample_size)
        stats["nsentences"] = float(batch["source"].shape[0])
        return loss_sum, int(sample_size), stats

    def metrics(self, stats: dict[str, float]) -> dict[str, float]:
        out = super().metrics(stats)
        if stats.get("count", 0) > 0 and "correct" in stats:
            out["accuracy"] = stats["correct"] / stats["count"]
        return out

    def guard(self, model: torch.nn.Module) -> Guard:
        core = unwrap(model)
        cfg = getattr(core, "cfg", None) or getattr(core, "config", None)

        def field(*names: str) -> Any:
            for name in names:
                for obj in (core, cfg):
                    if obj is not None and getattr(obj, name, None) is not None:
                        return getattr(obj, name)
            return None

        negatives = field("num_negatives")
        cross = field("cross_sample_negatives") or 0
        # log2(K+1) is chance for InfoNCE (wav2vec 2.0, or wav2vec with infonce); the binary
        # cross-entropy of wav2vec/vq-wav2vec has no such plateau.
        infonce = field("infonce")
        infonce = True if infonce is None and getattr(core, "family", None) == "wav2vec2" else bool(infonce)
        chance = math.log2(int(negatives) + int(cross) + 1) if negatives and infonce else None
        groups = field("latent_groups", "vq_groups")
        entries = field("latent_vars", "vq_vars")
        quantized = field("quantize_targets", "vq_type")
        num_codes = None
        if groups and entries and quantized not in (False, "none", None):
            num_codes = int(groups) * int(entries)
        return Guard(chance_bits=chance, num_codes=num_codes, groups=int(groups or 1))


class CTCObjective(Objective):
    """CTC loss of ``model(source, padding_mask) -> (logits (B,T,V), padding_mask (B,T))``.

    Blank is token 0 (fairseq's ``<s>``); the loss is summed over utterances with
    ``zero_infinity`` (an utterance too short for its transcript adds 0, not inf).
    ``sample_size`` counts utterances (``sentence_avg``, as fairseq's wav2vec 2.0
    fine-tuning does) or target tokens. In eval mode, greedy decoding adds token
    (and, given a dictionary with a word separator, word) error counts, so the
    validation metrics include ``uer`` and ``wer`` in percent.

    Args:
        sentence_avg: normalise by utterances (True) or by target tokens.
        dictionary: token strings by index, for word error rates.
        word_separator: the token between words (``|`` for letter targets).
        ignore_tokens: token ids dropped before scoring (blank, pad, eos, unk).

    Example:
        >>> objective = CTCObjective(dictionary=["<s>", "<pad>", "</s>", "<unk>", "|", "A"])
        >>> loss_sum, n, stats = objective(ctc_model, batch)                   # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        sentence_avg: bool = True,
        dictionary: Sequence[str] | None = None,
        word_separator: str = "|",
        ignore_tokens: Sequence[int] = (0, 1, 2),
    ) -> None:
        self.sentence_avg = sentence_avg
        self.dictionary = list(dictionary) if dictionary is not None else None
        self.word_separator = word_separator
        self.ignore_tokens = set(int(t) for t in ignore_tokens)

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        logits, out_mask = model(batch["source"], batch.get("padding_mask"))
        lprobs = F.log_softmax(logits.float(), dim=-1)
        batch_size, frames = lprobs.shape[:2]
        if out_mask is not None:
            input_lengths = (~out_mask).sum(dim=1)
        else:
            input_lengths = torch.full((batch_size,), frames, dtype=torch.long, device=lprobs.device)
        targets = batch["targets"].to(lprobs.device)
        target_lengths = batch["target_lengths"].to(lprobs.device)
        flat_targets = torch.cat([targets[i, : target_lengths[i]] for i in range(batch_size)])
        with torch.backends.cudnn.flags(enabled=False):
            loss_sum = F.ctc_loss(
                lprobs.transpose(0, 1),
                flat_targets,
                input_lengths,
                target_lengths,
                blank=0,
                reduction="sum",
                zero_infinity=True,
            )
        ntokens = int(target_lengths.sum())
        sample_size = batch_size if self.sentence_avg else ntokens
        stats = {
            "loss": float(loss_sum.detach().item()),
            "sample_size": float(sample_size),
            "ntokens": float(ntokens),
            "nsentences": float(batch_size),
        }
        if not model.training:
            stats.update(self._errors(lprobs.detach(), input_lengths, targets, target_lengths))
        return loss_sum, sample_size, stats

    def _errors(self, lprobs, input_lengths, targets, target_lengths) -> dict[str, float]:
        best = lprobs.argmax(dim=-1).cpu()
        token_errors = token_total = word_errors = word_total = 0
        for i in range(best.shape[0]):
            path = torch.unique_consecutive(best[i, : int(input_lengths[i])]).tolist()
            hyp = [t for t in path if t not in self.ignore_tokens]
            ref = [t for t in targets[i, : int(target_lengths[i])].tolist() if t not in self.ignore_tokens]
            token_errors += edit_distance(ref, hyp)
            token_total += len(ref)
            if self.dictionary is not None:
                ref_words = self._words(ref)
                hyp_words = self._words(hyp)
                word_errors += edit_distance(ref_words, hyp_words)
                word_total += len(ref_words)
        stats = {"token_errors": float(token_errors), "token_total": float(token_total)}
        if self.dictionary is not None:
            stats.update({"word_errors": float(word_errors), "word_total": float(word_total)})
        return stats

    def _words(self, ids: list[int]) -> list[str]:
        text = "".join(self.dictionary[t] if t < len(self.dictionary) else "?" for t in ids)
        return [w for w in text.split(self.word_separator) if w]

    def metrics(self, stats: dict[str, float]) -> dict[str, float]:
        out = super().metrics(stats)
        if stats.get("token_total", 0) > 0:
            out["uer"] = 100.0 * stats["token_errors"] / stats["token_total"]
        if stats.get("word_total", 0) > 0:
            out["wer"] = 100.0 * stats["word_errors"] / stats["word_total"]
        return out


def span_mask(lengths: Sequence[int], mask_prob: float, mask_length: int) -> torch.Tensor:
    """vq-wav2vec's span masking: (B, max(lengths)) bool, True at the masked units.

    Each of a sequence's ``n`` units starts a span with probability ``mask_prob``:
    ``int(mask_prob * n + u)`` starts (u ~ U[0, 1), so the expected count is
    ``mask_prob * n``; at least one, so every sequence has a target) drawn without
    replacement, each masking ``mask_length`` units from there (spans overlap and stop
    at the sequence's end). Draws from torch's CPU generator, which the trainer seeds
    per batch: the masks of a batch are the same on any device, rank or resume.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> mask = span_mask([100, 30], 0.05, 10)
        >>> mask.shape, bool(mask[1, 30:].any())
        (torch.Size([2, 100]), False)
    """
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for row, n in enumerate(lengths):
        if n < 1:
            continue
        count = min(n, max(1, int(mask_prob * n + float(torch.rand(())))))
        starts = torch.randperm(n)[:count]
        spans = (starts[:, None] + torch.arange(mask_length)[None]).flatten()
        mask[row, spans[spans < n]] = True
    return mask


class MaskedUnitObjective(Objective):
    """Masked-unit prediction (BERT on vq-wav2vec units): cross-entropy at the masked units.

    The batch's ``source`` is ``<s> units </s>`` rows (:class:`~w2vtools.train.units_data.UnitDataset`),
    ``unit_lengths`` the units per row. Units are masked in spans (:func:`span_mask`);
    a masked unit's input becomes ``<mask>``, or with ``leave_unmasked_prob`` stays as
    it is and with ``random_token_prob`` becomes a random unit (BERT's 80/10/10). The
    model predicts every masked unit: ``model(tokens, padding_mask, masked_tokens=mask)``.

    Stats: ``loss`` (nats, summed), ``correct``/``count`` -> ``accuracy`` (masked-unit
    accuracy), and in eval mode ``baseline_correct`` -> ``baseline_accuracy``: the
    accuracy of always answering the most frequent training unit, the floor to beat.

    Args:
        vocab_size: tokens of the model; ``mask_idx``: the ``<mask>`` token.
        num_specials: tokens below this are markers, never random replacements.
        most_frequent: the most frequent training unit (token id), for the baseline.

    Example:
        >>> objective = MaskedUnitObjective(vocab_size=40, mask_idx=39)
        >>> loss_sum, n, stats = objective(bert, batch)                    # doctest: +SKIP
    """

    def __init__(self, *, vocab_size: int, mask_idx: int, mask_prob: float = 0.05, mask_length: int = 10,
                 leave_unmasked_prob: float = 0.0, random_token_prob: float = 0.0, num_specials: int = 4,
                 most_frequent: int | None = None) -> None:
        self.vocab_size, self.mask_idx, self.num_specials = vocab_size, mask_idx, num_specials
        self.mask_prob, self.mask_length = mask_prob, mask_length
        self.leave_unmasked_prob, self.random_token_prob = leave_unmasked_prob, random_token_prob
        self.most_frequent = most_frequent

    def corrupt(self, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The model's input: masked units as ``<mask>``, kept, or random (drawn on the CPU generator)."""
        inputs = tokens.clone()
        n = int(masked.sum())
        draw = torch.rand(n)
        replace = torch.full((n,), self.mask_idx, dtype=torch.long)
        random_units = torch.randint(self.num_specials, self.mask_idx, (n,))
        keep = draw < self.leave_unmasked_prob
        randomize = ~keep & (draw < self.leave_unmasked_prob + self.random_token_prob)
        replace = torch.where(randomize, random_units, replace)
        replace = torch.where(keep, tokens[masked].cpu(), replace)
        inputs[masked] = replace.to(tokens.device)
        return inputs

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        tokens = batch["source"]
        lengths = batch["unit_lengths"].tolist()
        masked = torch.zeros(tokens.shape, dtype=torch.bool)
        spans = span_mask(lengths, self.mask_prob, self.mask_length)
        masked[:, 1 : spans.shape[1] + 1] = spans  # position 0 is <s>
        masked = masked.to(tokens.device)
        out = model(self.corrupt(tokens, masked), batch.get("padding_mask"), masked_tokens=masked)
        logits = out["logits"].float()
        targets = tokens[masked]
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        count = int(targets.numel())
        stats = {
            "loss": float(loss_sum.detach().item()),
            "sample_size": float(count),
            "correct": float((logits.detach().argmax(dim=-1) == targets).sum().item()),
            "count": float(count),
            "ntokens": float(sum(lengths)),
            "nsentences": float(tokens.shape[0]),
        }
        if not model.training and self.most_frequent is not None:
            stats["baseline_correct"] = float((targets == self.most_frequent).sum().item())
        return loss_sum, count, stats

    def metrics(self, stats: dict[str, float]) -> dict[str, float]:
        out = super().metrics(stats)
        if stats.get("count", 0) > 0:
            out["accuracy"] = stats["correct"] / stats["count"]
            if "baseline_correct" in stats:
                out["baseline_accuracy"] = stats["baseline_correct"] / stats["count"]
            if stats.get("ntokens", 0) > 0:
                out["masked_fraction"] = stats["count"] / stats["ntokens"]
        return out


class NextTokenObjective(Objective):
    """Language modeling: cross-entropy of each next token, ``model(source, padding_mask)["logits"]``.

    The batch (:class:`~w2vtools.train.text_data.TextDataset`) holds ``source``
    (``</s> w1 .. wn``) and ``targets`` (``w1 .. wn </s>``), padded with ``padding_idx``;
    the loss is summed over the real targets, so ``sample_size`` counts tokens, as
    fairseq's ``language_modeling`` does. Besides ``loss`` (bits per token), the metrics
    give ``ppl``, the token perplexity, and ``word_ppl``, the perplexity per word with
    one ``</s>`` per sentence counted as a word, as KenLM counts it (so a character LM's
    number compares with an n-gram's), and in eval mode ``accuracy`` of the argmax.

    Example:
        >>> objective = NextTokenObjective()
        >>> objective.metrics({"loss": 2.0 * LN2 * 10, "sample_size": 10, "words": 3, "nsentences": 1})["ppl"]
        4.0
    """

    def __init__(self, padding_idx: int = 1) -> None:
        self.padding_idx = padding_idx

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        logits = model(batch["source"], batch.get("padding_mask"))["logits"]
        targets = batch["targets"].to(logits.device)
        loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=self.padding_idx, reduction="sum")
        real = targets.ne(self.padding_idx)
        ntokens = int(real.sum())
        stats = {"loss": float(loss_sum.detach().item()), "sample_size": float(ntokens), "ntokens": float(ntokens),
                 "nsentences": float(targets.shape[0]), "words": float(batch.get("words", ntokens))}
        if not model.training:
            stats["correct"] = float((logits.argmax(-1).eq(targets) & real).sum())
        return loss_sum, ntokens, stats

    def metrics(self, stats: dict[str, float]) -> dict[str, float]:
        out = super().metrics(stats)
        if "loss" in out:
            out["ppl"] = 2.0 ** out["loss"]
        per_word = stats.get("words", 0.0) + stats.get("nsentences", 0.0)
        if per_word > 0 and "loss" in stats:
            out["word_ppl"] = math.exp(min(stats["loss"] / per_word, 700.0))
        if stats.get("sample_size", 0) > 0 and "correct" in stats:
            out["accuracy"] = stats["correct"] / stats["sample_size"]
        return out
