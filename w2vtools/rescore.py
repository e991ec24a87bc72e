"""n-best rescoring with a Transformer LM (``w2v decode --rescore LM.pt --nbest N``).

Each hypothesis of the beam search's n-best list gets four parts, computed once
(:meth:`Rescorer.candidates`), and the list is reordered by their weighted sum
(:func:`rerank`)::

    total = acoustic + lm_weight * ngram + rescore_weight * neural + word_score * words

* ``acoustic``: the CTC log-likelihood (natural log, every alignment summed) of the
  hypothesis's letters ``w1 | w2 | .. | wn`` given the emissions, a word boundary
  allowed before the first word and after the last (CTC forward, batched over the list);
* ``ngram``: the first pass's KenLM (``--lm``) log10 P(``<s> w1 .. wn </s>``), the number
  flashlight's decoder weighs with ``lm_weight`` (over letters for ``--decoder beam``);
  0 without an n-gram;
* ``neural``: the Transformer LM's log10 P(``w1 .. wn </s>``)
  (:class:`w2vtools.neural_lm.NeuralLM`, batched by tokens over all hypotheses at once);
* ``words``: the number of words.

Both LM scores are log10 probabilities of the whole sentence, so ``rescore_weight`` is
on the scale of ``lm_weight`` (``rescore_weight = lm_weight`` with ``lm_weight = 0`` puts
the neural LM exactly where the n-gram was). Every weight can be swept on stored
emissions without decoding again for each ``rescore_weight`` (:mod:`w2vtools.tune`).

Example:
    >>> rescorer = Rescorer(tokens, rescore="exp/nlm/checkpoint_best.pt", lm="lm.bin")     # doctest: +SKIP
    >>> best = rerank(rescorer.candidates(log_probs, hyps), Weights(lm_weight=1.0, rescore_weight=0.5))[0]  # doctest: +SKIP

Hypotheses are :class:`w2vtools.decode.Hypothesis` objects (any dataclass with ``words``,
``score`` and ``posterior``); this module does not import the decoder, which imports it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import kenlm
import torch
import torch.nn.functional as F

from w2vtools.errors import W2VError
from w2vtools.formats.labels import WORD_BOUNDARY, words_to_letters
from w2vtools.lm import call_quietly
from w2vtools.neural_lm import NeuralLM


@dataclasses.dataclass
class Candidate:
    """One n-best hypothesis with the parts of its rescored total (see the module docstring)."""

    hypothesis: Any  # a w2vtools.decode.Hypothesis
    acoustic: float
    ngram: float
    neural: float

    @property
    def words(self) -> list[str]:
        return self.hypothesis.words


@dataclasses.dataclass(frozen=True)
class Weights:
    """The weights of :func:`total`."""

    lm_weight: float = 0.0
    rescore_weight: float = 1.0
    word_score: float = 0.0

    @classmethod
    def of(cls, opts: Any) -> "Weights":
        """The weights a :class:`w2vtools.decode.DecoderOptions` names (``lm_weight`` counts only with an n-gram)."""
        return cls(opts.lm_weight if opts.lm else 0.0, opts.rescore_weight, opts.word_score)


def total(candidate: Candidate, weights: Weights) -> float:
    """``acoustic + lm_weight * ngram + rescore_weight * neural + word_score * words``.

    Example:
        >>> from types import SimpleNamespace
        >>> c = Candidate(SimpleNamespace(words=["A", "B"]), acoustic=-3.0, ngram=-2.0, neural=-1.0)
        >>> total(c, Weights(lm_weight=1.0, rescore_weight=2.0, word_score=0.5))
        -6.0
    """
    return (candidate.acoustic + weights.lm_weight * candidate.ngram + weights.rescore_weight * candidate.neural
            + weights.word_score * len(candidate.words))


def rerank(candidates: Sequence[Candidate], weights: Weights) -> list:
    """The hypotheses best first by :func:`total` (ties keep the first pass's order), each with its
    total as ``score`` and the softmax of the totals among the list as ``posterior``."""
    totals = [total(c, weights) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -totals[i])
    finite = torch.tensor([t if math.isfinite(t) else -1e30 for t in totals], dtype=torch.float64)
    posteriors = torch.softmax(finite, 0).tolist() if candidates else []
    return [dataclasses.replace(candidates[i].hypothesis, score=totals[i], posterior=posteriors[i]) for i in order]


class Rescorer:
    """Computes the parts of :func:`total` for n-best lists (see the module docstring).

    Args:
        tokens: the CTC model's tokens (``<s>`` blank first, ``|`` the word boundary).
        rescore: the Transformer LM checkpoint (``w2v lm --neural``).
        lm: the first pass's KenLM (ARPA or binary), or None.
        letter_ngram: the KenLM is over letters (``--decoder beam``), not words.
        device: where the Transformer LM runs.

    Raises:
        W2VError: the checkpoint is not a language model, or the tokens have no ``|``.
    """

    def __init__(self, tokens: Sequence[str], *, rescore: str, lm: str | None = None, letter_ngram: bool = False,
                 device: str = "cpu") -> None:
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if WORD_BOUNDARY not in self.index:
            raise W2VError(f"the model's tokens have no word boundary {WORD_BOUNDARY!r}")
        self.neural = NeuralLM.load(rescore, device=device)
        self.ngram = call_quietly(kenlm.Model, lm) if lm else None
        self.ngram_letters = letter_ngram

    def candidates(self, log_probs: torch.Tensor, hyps: Sequence[Any]) -> list[Candidate]:
        """The parts of every hypothesis of one utterance (``log_probs``: its (T, V) CTC log-probabilities)."""
        sentences = [" ".join(h.words) for h in hyps]
        neural = self.neural.score(sentences)
        acoustic = self.acoustic(log_probs, [h.words for h in hyps])
        return [Candidate(h, a, self.ngram_score(s), n) for h, s, a, n in zip(hyps, sentences, acoustic, neural)]

    def prepare(self, nbest_lists: Sequence[Sequence[Any]]) -> None:
        """Score every sentence of many n-best lists with the Transformer LM in token-budget batches at
        once (the scores are kept, so :meth:`candidates` then finds them)."""
        self.neural.score([" ".join(h.words) for hyps in nbest_lists for h in hyps])

    def ngram_score(self, sentence: str) -> float:
        if self.ngram is None:
            return 0.0
        text = words_to_letters(sentence, upper=False) if self.ngram_letters and sentence else sentence
        return float(self.ngram.score(text, bos=True, eos=True))

    def spell(self, words: Sequence[str]) -> list[int]:
        """``w1 | w2 | .. | wn`` as token ids (a letter outside the tokens is ``<unk>``)."""
        unk = self.index.get("<unk>", 0)
        ids: list[int] = []
        for k, word in enumerate(words):
            if k:
                ids.append(self.index[WORD_BOUNDARY])
            ids.extend(self.index.get(c, unk) for c in word)
        return ids

    def acoustic(self, log_probs: torch.Tensor, hyps: Sequence[Sequence[str]]) -> list[float]:
        """CTC log-likelihood of each word sequence, a boundary allowed at either end (the log-sum over
        those spellings; one batched CTC forward for the whole list)."""
        if not hyps:
            return []
        boundary = self.index[WORD_BOUNDARY]
        owner: list[int] = []
        targets: list[tuple[int, ...]] = []
        for k, words in enumerate(hyps):
            core = tuple(self.spell(words))
            variants = {core, (boundary, *core), (*core, boundary), (boundary, *core, boundary) if core else core}
            for target in sorted(variants):
                owner.append(k)
                targets.append(target)
        frames = log_probs.shape[0]
        lp = log_probs.float().unsqueeze(1).expand(frames, len(targets), log_probs.shape[1])
        with torch.backends.cudnn.flags(enabled=False):
            nll = F.ctc_loss(lp, torch.tensor([i for t in targets for i in t], dtype=torch.long),
                             torch.full((len(targets),), frames, dtype=torch.long),
                             torch.tensor([len(t) for t in targets], dtype=torch.long), blank=0, reduction="none",
                             zero_infinity=False)
        by_hyp: list[list[float]] = [[] for _ in hyps]
        for k, value in zip(owner, (-nll.double()).tolist()):
            by_hyp[k].append(value)
        return [float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) for v in by_hyp]
