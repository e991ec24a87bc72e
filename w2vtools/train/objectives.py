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
