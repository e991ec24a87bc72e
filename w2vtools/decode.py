"""CTC decoding: greedy (viterbi), lexicon + KenLM beam search, lexicon-free beam search.

Inputs are CTC log-probabilities per utterance, from one of the sources of
:mod:`w2vtools.emissions`:

* live: a CTC checkpoint run over a corpus (TSV, Kaldi data dir, wav.scp), or a
  downstream model over stored features (``--features``), optionally storing what
  it computed with ``dump_emissions`` so that LM-weight sweeps do not rerun the network;
* stored: ``--emissions``: a features file written by ``--dump-emissions``, or
  NumPy ``.npy`` files of one ``(T, V)`` matrix each.

Outputs (Kaldi ``text``, n-best, ``trn``, ``ctm``) all come from one
:class:`HypothesisWriter`.

Failures follow the one rule of the running commands (:class:`w2vtools.batching.SkipLog`):
an unreadable or too short recording, or scores holding NaN, is named on one line and
skipped; the exit status is 3 when some were left out, 1 with no output file when all
were. Every output is locked (:func:`w2vtools.fileio.exclusive_output`) before the
model loads.

Scores are always passed through ``log_softmax``: logits become log-probabilities
and stored log-probabilities are left unchanged (log_softmax is idempotent on them).

Decoders:

* ``viterbi``: best class per frame, repeats merged, blanks dropped (pure torch).
* ``kenlm``: torchaudio's flashlight ``ctc_decoder`` constrained by a lexicon
  (``WORD t1 t2 ... |`` lines) with a word-level KenLM (ARPA or binary).
* ``beam``: the same beam search without a lexicon (open vocabulary); with ``--lm``
  the KenLM must be over the model's tokens (``H E L L O |``: ``w2v lm --units
  letter``), without one it is a plain CTC prefix beam search. A word-level KenLM
  needs ``kenlm`` (flashlight's lexicon-free decoder would query it with letters).

Token conventions are fairseq's: ``<s>`` (index 0) is the blank, ``|`` the word
boundary, ``<unk>`` the unknown word.

Example:
    >>> tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "H", "I"]
    >>> lp = torch.full((5, 7), -10.0); lp[[0, 1, 2, 3, 4], [5, 5, 0, 6, 4]] = 0
    >>> viterbi(lp, tokens).words
    ['HI']
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchaudio
from torchaudio.models.decoder import ctc_decoder
from tqdm import tqdm

from w2vtools.batching import SkipLog, parse_shard
from w2vtools.emissions import (
    DEFAULT_FRAME_SHIFT,
    EmissionSource,
    downstream_emissions,
    model_emissions,
    stored_emissions,
)
from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, exclusive_output, open_input
from w2vtools.formats.features import open_feature_writer, output_paths
from w2vtools.formats.kaldi import read_kaldi_table
from w2vtools.formats.labels import SPECIAL_SYMBOLS, WORD_BOUNDARY, ctc_vocabulary, read_dictionary
from w2vtools.formats.text import ctm_line, nbest_key, text_line, trn_line
from w2vtools.lm import call_quietly, warn_lexicon_lm_mismatch
from w2vtools.rescore import Rescorer, Weights, rerank

log = logging.getLogger("w2v.decode")

DECODERS = ("viterbi", "kenlm", "beam")
UNK_WORD = SPECIAL_SYMBOLS[3]
# fairseq's <s>, <pad>, </s>: never part of a word (<s> is the blank, the others are never emitted)
NOT_WORD_TOKENS = SPECIAL_SYMBOLS[:3]


@dataclasses.dataclass
class Hypothesis:
    """One decoding result.

    Attributes:
        words: the word sequence.
        score: decoder score (viterbi: sum of the chosen frames' log-probabilities).
        word_frames: ``(first_frame, last_frame)`` per word, from the CTC alignment.
        word_confidences: per word, the mean posterior of the frames the decoder put its
            letters on (viterbi: the best path's frames on the word's letters; beam search:
            the frame at which it emits each letter); when those frames are unknown (a beam
            search word the lexicon cannot spell), the hypothesis's n-best ``posterior``.
        posterior: beam search: the softmax of the hypothesis's total score among the
            decoder's n best (:data:`POSTERIOR_NBEST` at least); viterbi: 1 (one path).
    """

    words: list[str]
    score: float
    word_frames: list[tuple[int, int]]
    word_confidences: list[float] = dataclasses.field(default_factory=list)
    posterior: float = 1.0


@dataclasses.dataclass
class DecoderOptions:
    """Settings of the beam-search decoders (torchaudio ``ctc_decoder`` names)."""

    decoder: str = "viterbi"
    lexicon: str | None = None
    lm: str | None = None
    lm_weight: float = 2.0
    word_score: float = -1.0
    sil_score: float = 0.0
    unk_score: float = -math.inf
    beam: int = 50
    beam_threshold: float = 12.0
    beam_size_token: int | None = None
    nbest: int = 1
    log_add: bool = False
    blank_skip: float = 0.999
    rescore: str | None = None  # a Transformer LM (w2v lm --neural) that reorders the n-best (w2vtools.rescore)
    rescore_weight: float = 1.0


# ---------------------------------------------------------------------------------------------
# Viterbi


def _words_from_tokens(pieces: Sequence[tuple[str, int, int]]) -> tuple[list[str], list[tuple[int, int]]]:
    """(token, first_frame, last_frame) runs -> words and their frame spans; ``|`` separates words."""
    words: list[str] = []
    frames: list[tuple[int, int]] = []
    current, start, end = "", -1, -1
    for tok, s, e in pieces:
        if tok == WORD_BOUNDARY:
            if current:
                words.append(current)
                frames.append((start, end))
            current = ""
            continue
        if tok in NOT_WORD_TOKENS:
            continue
        if not current:
            start = s
        current += tok
        end = e
    if current:
        words.append(current)
        frames.append((start, end))
    return words, frames


def viterbi(log_probs: torch.Tensor, tokens: Sequence[str]) -> Hypothesis:
    """Greedy CTC decoding of one ``(T, V)`` matrix: argmax, merge repeats, drop blanks.

    Example:
        >>> all_blank = torch.log_softmax(torch.tensor([[5.0, 0, 0, 0, 0]] * 3), -1)
        >>> viterbi(all_blank, ["<s>", "<pad>", "</s>", "<unk>", "|"]).words
        []
    """
    if log_probs.shape[0] == 0:
        return Hypothesis([], 0.0, [])
    best, ids = log_probs.max(dim=-1)
    uniq, counts = torch.unique_consecutive(ids, return_counts=True)
    ends = torch.cumsum(counts, 0) - 1
    starts = ends - counts + 1
    keep = uniq != 0
    pieces = [
        (tokens[t], int(s), int(e))
        for t, s, e in zip(uniq[keep].tolist(), starts[keep].tolist(), ends[keep].tolist())
    ]
    words, frames = _words_from_tokens(pieces)
    # per word, the mean of the best path's posterior over its non-blank frames (cumulative
    # sums: one pass, not two tensor slices per word)
    letter = (ids != 0).numpy()
    prob_sum = np.concatenate(([0.0], np.cumsum(np.where(letter, best.double().exp().numpy(), 0.0))))
    letter_sum = np.concatenate(([0], np.cumsum(letter)))
    spans = np.array(frames, dtype=np.int64).reshape(-1, 2)
    first, after = spans[:, 0], spans[:, 1] + 1
    confs = (prob_sum[after] - prob_sum[first]) / np.maximum(letter_sum[after] - letter_sum[first], 1)
    return Hypothesis(words, float(best.sum()), frames, confs.tolist())


# ---------------------------------------------------------------------------------------------
# Lexicon and beam search


def read_lexicon(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """``WORD t1 t2 ... |`` lines -> {word: [spellings]} (a word may have several).

    Example:
        >>> read_lexicon("lexicon.txt")["HELLO"]   # doctest: +SKIP
        [['H', 'E', 'L', 'L', 'O', '|']]
    """
    lex: dict[str, list[list[str]]] = {}
    with open_input(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise W2VError(f"{path}:{lineno}: expected 'WORD t1 t2 ...', got {line.strip()!r}")
            lex.setdefault(fields[0], []).append(fields[1:])
    if not lex:
        raise W2VError(f"{path}: empty lexicon")
    return lex


def check_lexicon(path: str | os.PathLike, tokens: Sequence[str]) -> int:
    """Every token of every spelling must be a model token; returns the number of words.

    Raises:
        W2VError: listing (up to 10 of) the words that cannot be spelled and the unknown tokens.

    Example:
        >>> check_lexicon("lexicon.txt", ["<s>", "<pad>", "</s>", "<unk>", "|", "A"])   # doctest: +SKIP
        1
    """
    known = set(tokens)
    lex = read_lexicon(path)
    bad: dict[str, set[str]] = {}
    for word, spellings in lex.items():
        for spelling in spellings:
            missing = {t for t in spelling if t not in known}
            if missing:
                bad.setdefault(word, set()).update(missing)
    if bad:
        words = sorted(bad)
        unknown = sorted(set().union(*bad.values()))
        shown = ", ".join(words[:10]) + (f" (and {len(words) - 10} more)" if len(words) > 10 else "")
        raise W2VError(
            f"{path}: {len(words)} words cannot be spelled with the model's tokens "
            f"(unknown tokens {' '.join(repr(t) for t in unknown)}): {shown}"
        )
    return len(lex)


def skip_blank_runs(log_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the frames the beam search needs: all but the 2nd, 3rd ... of every run of
    frames whose blank probability exceeds ``threshold`` (the first of a run stays, so
    repeated letters on both sides remain separated).

    wav2vec 2.0 emits blank with near certainty on most frames; searching one frame of
    such a run instead of all of them changes path scores by less than the blank's
    missing probability mass and saves most of the search. ``threshold`` >= 1 keeps all.

    Example:
        >>> lp = torch.log(torch.tensor([[0.9999, 1e-4], [0.9999, 1e-4], [0.1, 0.9], [0.9999, 1e-4]]))
        >>> skip_blank_runs(lp, 0.999).tolist()
        [0, 2, 3]
    """
    n = log_probs.shape[0]
    if threshold >= 1.0 or n == 0:
        return torch.arange(n)
    blank = log_probs[:, 0] > math.log(threshold)
    repeat = torch.zeros_like(blank)
    repeat[1:] = blank[1:] & blank[:-1]
    return torch.nonzero(~repeat).squeeze(1)


#: Hypotheses the beam search returns at least, whatever ``--nbest`` writes: the n-best
#: posterior of the 1-best is its softmax among these (with one, it would always be 1)
POSTERIOR_NBEST = 10

#: Token kinds for word confidences (:func:`_letter_confidences`); special tokens are 0.
LETTER, BOUNDARY = 1, 2


class BeamSearch:
    """torchaudio's flashlight CTC beam search, lexicon-constrained or lexicon-free.

    Example:
        >>> bs = BeamSearch(tokens, DecoderOptions("kenlm", lexicon="lexicon.txt", lm="lm.bin"))  # doctest: +SKIP
        >>> bs(log_probs)[0].words   # doctest: +SKIP
        ['ALSO', 'A', 'POPULAR', ...]
    """

    def __init__(self, tokens: Sequence[str], opts: DecoderOptions):
        self.tokens = list(tokens)
        if WORD_BOUNDARY not in self.tokens:
            raise W2VError(f"the model's tokens have no word boundary {WORD_BOUNDARY!r}; beam search needs one")
        if len(set(self.tokens)) != len(self.tokens):
            raise W2VError("the model's tokens are not unique")
        # the CTC contract: token 0 is the blank (fairseq's <s>; a converted model's pad token)
        self.blank = self.tokens[0]
        if opts.decoder == "kenlm":
            if not opts.lexicon or not opts.lm:
                raise W2VError("--decoder kenlm needs --lexicon and --lm (build both with `w2v lm`)")
            check_lexicon(opts.lexicon, self.tokens)
        if opts.lm and not Path(opts.lm).is_file():
            raise W2VError(f"{opts.lm}: no such file")
        lexicon = opts.lexicon if opts.decoder == "kenlm" else None
        warn_lexicon_lm_mismatch(lexicon, opts.lm)  # nothing to compare unless both are given
        if opts.decoder == "beam" and opts.lexicon:
            raise W2VError("--decoder beam is lexicon-free: drop --lexicon, or use --decoder kenlm")
        self.opts = opts
        try:
            self.decoder = call_quietly(  # KenLM's loading notes and progress bar: only with -v
                ctc_decoder,
                lexicon=lexicon,
                tokens=self.tokens,
                lm=opts.lm,
                beam_size=opts.beam,
                beam_size_token=opts.beam_size_token,
                beam_threshold=opts.beam_threshold,
                lm_weight=opts.lm_weight if opts.lm else 0.0,
                word_score=opts.word_score,
                unk_score=opts.unk_score,
                sil_score=opts.sil_score,
                log_add=opts.log_add,
                blank_token=self.blank,
                sil_token=WORD_BOUNDARY,
                unk_word=UNK_WORD,
            )
        except (RuntimeError, ValueError) as e:
            raise W2VError(f"cannot build the beam-search decoder ({opts.lm or 'no LM'}): {e}") from None
        self.blank_id = self.tokens.index(self.blank)
        self.num_results = max(opts.nbest, min(POSTERIOR_NBEST, opts.beam))  # _search takes these from flashlight
        self.word_dict = getattr(self.decoder, "word_dict", None) if lexicon else None
        self.token_kind = np.array([BOUNDARY if t == WORD_BOUNDARY else 0 if t in NOT_WORD_TOKENS else LETTER
                                    for t in self.tokens])
        self._flashlight = getattr(self.decoder, "decoder", None)
        if not hasattr(self._flashlight, "decode"):
            raise W2VError(f"torchaudio {torchaudio.__version__}'s ctc_decoder holds no flashlight decoder "
                           "(.decoder.decode) for w2v to call: install the torchaudio of requirements.lock")

    def __call__(self, log_probs: torch.Tensor) -> list[Hypothesis]:
        if log_probs.shape[0] == 0:
            return [Hypothesis([], 0.0, [])]
        frames = skip_blank_runs(log_probs, self.opts.blank_skip)
        emissions = log_probs[frames].to(torch.float32).contiguous()
        results = self._search(emissions)
        posteriors = torch.softmax(torch.tensor([float(r.score) for r in results], dtype=torch.float64), 0).tolist()
        frame_of = frames.numpy()
        out = []
        for result, posterior in zip(results[: self.opts.nbest], posteriors):
            ids, steps = _emitted_tokens(result.tokens, self.blank_id)
            # flashlight pads the token sequence with a boundary at both ends, so its timesteps
            # count that pad: timestep t is frame t - 1, the first frame of the token's run
            times = frame_of[np.clip(steps - 1, 0, len(frame_of) - 1)]
            pieces = [(self.tokens[i], t, t) for i, t in zip(ids.tolist(), times.tolist())]
            words, word_frames = _words_from_tokens(pieces)
            confs = _letter_confidences(log_probs, ids, times, self.token_kind, len(words))
            # the LM's words: only a lexicon decoder (kenlm) has a word dictionary
            lm_words = [self.word_dict.get_entry(w) for w in result.words if w >= 0] if self.word_dict else []
            if lm_words:
                if len(lm_words) == len(words):
                    words = lm_words
                else:  # an <unk> word has no spelling: keep the LM's words, frames unknown
                    words, word_frames, confs = lm_words, [], []
            confs = confs or [posterior] * len(words)
            out.append(Hypothesis(words, float(result.score), word_frames, confs, posterior))
        return out

    def _search(self, emissions: torch.Tensor) -> list:
        """flashlight's sorted results for one utterance's (frames, tokens) float32 emissions.

        torchaudio's public call turns every n-best entry into a ``CTCHypothesis`` in Python
        (a loop over all frames for each), but only the 1-best needs that; the other entries
        need only their scores, for the posterior. So the search is asked directly, through the
        flashlight decoder that torchaudio's ``CTCDecoder`` holds (checked in ``__init__``).
        """
        found = self._flashlight.decode(emissions.data_ptr(), emissions.shape[0], emissions.shape[1])
        return found[: self.num_results]


def _emitted_tokens(frame_tokens: Sequence[int], blank: int) -> tuple[np.ndarray, np.ndarray]:
    """The tokens a CTC path emits and the step each starts at (a repeat run counts once; blanks none).

    Example:
        >>> ids, steps = _emitted_tokens([0, 5, 5, 0, 5, 7, 7], blank=0)
        >>> ids.tolist(), steps.tolist()
        ([5, 5, 7], [1, 4, 5])
    """
    seq = np.asarray(frame_tokens, dtype=np.int64)
    starts = np.ones(len(seq), dtype=bool)
    starts[1:] = seq[1:] != seq[:-1]
    keep = starts & (seq != blank)
    return seq[keep], np.flatnonzero(keep)


def _letter_confidences(log_probs: torch.Tensor, ids: np.ndarray, times: np.ndarray, kind: np.ndarray,
                        num_words: int) -> list[float]:
    """Per word, the mean posterior of its letters at the frames the beam search emits them.

    ``ids`` are emitted at ``times``, in order; ``kind[id]`` is :data:`LETTER`, :data:`BOUNDARY`
    (``|``, which separates words) or 0 (special tokens, passed over). Returns [] when the
    words found are not ``num_words``.

    Example:
        >>> lp = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.0, 0.8], [0.0, 1.0, 0.0]]))
        >>> kind = np.array([0, BOUNDARY, LETTER])  # <pad>, |, A
        >>> _letter_confidences(lp, np.array([2, 1, 2]), np.array([1, 2, 0]), kind, 2)
        [0.800000011920929, 0.0]
    """
    kinds = kind[ids]
    ids, times, kinds = ids[kinds > 0], times[kinds > 0], kinds[kinds > 0]
    is_letter = kinds == LETTER
    # a word starts at a letter that follows a boundary or nothing
    starts = is_letter & ~np.concatenate(([False], is_letter[:-1]))
    word = np.cumsum(starts)[is_letter] - 1
    if word.size == 0 or word[-1] + 1 != num_words:
        return []
    letters = torch.from_numpy(times[is_letter]), torch.from_numpy(ids[is_letter])
    probs = log_probs[letters].exp().double().numpy()
    sums = np.bincount(word, weights=probs, minlength=num_words)
    return (sums / np.bincount(word, minlength=num_words)).tolist()


# ---------------------------------------------------------------------------------------------
# The command


@dataclasses.dataclass
class DecodeSummary:
    utterances: int = 0
    frames: int = 0
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        """Decoding time / audio time (search only; the network's time is in ``total_seconds``)."""
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else math.nan

    def line(self) -> str:
        ups = self.utterances / self.decode_seconds if self.decode_seconds else math.inf
        return (
            f"decoded {self.utterances} utterances ({self.audio_seconds:.1f} s of audio) in "
            f"{self.total_seconds:.1f} s; search {self.decode_seconds:.2f} s = {ups:.1f} utt/s, "
            f"real-time factor {self.rtf:.4f}"
        )



class HypothesisWriter:
    """The one writer of decoding results: Kaldi ``text``, and optionally n-best lists
    (with a ``.scores`` file beside: ``uid-RANK score posterior``, the posterior being the
    softmax of the total scores among the decoder's n best), sclite ``trn`` and ``ctm``
    (``uid 1 start duration WORD confidence``: :attr:`Hypothesis.word_confidences`); it owns
    their line formats and their order.

    Lines are written as results come, or, when ``order`` is given (the model ran
    length-sorted batches), held and written in that order by :meth:`finish`.
    Files are opened on ``stack``, so they appear only when the decoding succeeds.

    Example:
        >>> with contextlib.ExitStack() as stack:   # doctest: +SKIP
        ...     out = HypothesisWriter(stack, "hyp.txt", ctm="hyp.ctm", frame_shift=0.02)
        ...     out.add("u1", [Hypothesis(["HI"], -1.0, [(3, 7)])])
        ...     out.finish()
    """

    def __init__(self, stack: contextlib.ExitStack, output: str, *, nbest: str | None = None, trn: str | None = None,
                 ctm: str | None = None, frame_shift: float = DEFAULT_FRAME_SHIFT,
                 utt2spk: dict[str, str] | None = None, order: list[str] | None = None):
        paths = {"text": output, "nbest": nbest, "scores": nbest + ".scores" if nbest else None, "trn": trn, "ctm": ctm}
        self.files = {kind: stack.enter_context(atomic_write(path)) for kind, path in paths.items() if path}
        self.frame_shift = frame_shift
        self.utt2spk = utt2spk or {}
        self.order = order
        self.pending: dict[str, dict[str, list[str]]] = {}

    def lines(self, uid: str, hyps: Sequence[Hypothesis]) -> dict[str, list[str]]:
        """The lines of one utterance for every open output; ``hyps`` best first."""
        best = hyps[0] if hyps else Hypothesis([], -math.inf, [])
        lines: dict[str, list[str]] = {"text": [text_line(uid, best.words)]}
        if "nbest" in self.files:
            lines["nbest"] = [text_line(nbest_key(uid, r), h.words) for r, h in enumerate(hyps, 1)]
            lines["scores"] = [f"{nbest_key(uid, r)} {h.score:.4f} {h.posterior:.4f}" for r, h in enumerate(hyps, 1)]
        if "trn" in self.files:
            lines["trn"] = [trn_line(best.words, uid, self.utt2spk.get(uid))]
        if "ctm" in self.files:
            shift = self.frame_shift
            confs = best.word_confidences or [best.posterior] * len(best.words)
            lines["ctm"] = [
                ctm_line(uid, first * shift, (last + 1 - first) * shift, word, conf)
                for word, (first, last), conf in zip(best.words, best.word_frames, confs)
            ]
        return lines

    def add(self, uid: str, hyps: Sequence[Hypothesis]) -> None:
        lines = self.lines(uid, hyps)
        if self.order is None:
            self._write(lines)
        else:
            self.pending[uid] = lines

    def finish(self) -> None:
        """Write what is held back, in ``order``."""
        for uid in self.order or []:
            if uid in self.pending:
                self._write(self.pending.pop(uid))

    def _write(self, lines: dict[str, list[str]]) -> None:
        for kind, kind_lines in lines.items():
            for line in kind_lines:
                self.files[kind].write(line + "\n")


def _check_options(opts: DecoderOptions) -> None:
    """Reject decoder settings that cannot work, before anything is loaded."""
    if opts.decoder not in DECODERS:
        raise W2VError(f"--decoder must be one of {', '.join(DECODERS)}, got {opts.decoder!r}")
    if not opts.blank_skip > 0:
        raise W2VError(f"--blank-skip must be a probability above 0 (1 = off), got {opts.blank_skip}")
    if opts.nbest < 1:
        raise W2VError(f"--nbest must be at least 1, got {opts.nbest}")
    if opts.nbest > 1 and opts.decoder == "viterbi":
        raise W2VError("--nbest needs a beam-search decoder (--decoder kenlm or beam); viterbi has one path")
    if opts.nbest > 1 and opts.nbest > opts.beam:
        raise W2VError(f"--nbest {opts.nbest} is larger than --beam {opts.beam}")
    if opts.decoder == "viterbi" and (opts.lm or opts.lexicon):
        raise W2VError("--lm/--lexicon need --decoder kenlm (or beam for a token-level LM)")
    if opts.rescore and (opts.decoder == "viterbi" or opts.nbest < 2):
        raise W2VError("--rescore reorders an n-best list: give --decoder kenlm (or beam) and --nbest N (N >= 2)")
    if opts.rescore and not Path(opts.rescore).is_file():
        raise W2VError(f"--rescore {opts.rescore}: no such file")


class RescoringSearch:
    """A beam search whose n-best list a Transformer LM reorders (:mod:`w2vtools.rescore`).

    Example:
        >>> search = RescoringSearch(tokens, DecoderOptions("kenlm", lexicon="lex.txt", lm="lm.bin", nbest=20,
        ...                                                 rescore="exp/nlm/checkpoint_best.pt"))  # doctest: +SKIP
        >>> search(log_probs)[0].words                                                            # doctest: +SKIP
    """

    def __init__(self, tokens: Sequence[str], opts: DecoderOptions, *, device: str = "cpu") -> None:
        self.search = BeamSearch(tokens, opts)
        self.rescorer = Rescorer(tokens, rescore=opts.rescore, lm=opts.lm, letter_ngram=opts.decoder == "beam",
                                 device=device)
        self.weights = Weights.of(opts)

    def __call__(self, log_probs: torch.Tensor) -> list[Hypothesis]:
        return rerank(self.rescorer.candidates(log_probs, self.search(log_probs)), self.weights)


def make_search(tokens: Sequence[str], opts: DecoderOptions, *, device: str = "cpu"):
    """The search ``opts`` describe: None (viterbi), a :class:`BeamSearch`, or a :class:`RescoringSearch`."""
    if opts.decoder == "viterbi":
        return None
    return RescoringSearch(tokens, opts, device=device) if opts.rescore else BeamSearch(tokens, opts)


def _check_inputs(*, corpus, model, emissions, features, dump_emissions) -> None:
    """Exactly one source: a model with a corpus or features, or stored emissions."""
    if (emissions is None) == (model is None):
        raise W2VError("give either --model (with a corpus) or --emissions")
    if features is not None and (model is None or corpus is not None):
        raise W2VError("--features feeds a downstream --model (w2v finetune --features); drop the corpus")
    if model is not None and corpus is None and features is None:
        raise W2VError("--model needs a corpus (TSV manifest, Kaldi data dir or wav.scp)")
    if emissions is not None and corpus is not None:
        raise W2VError("--emissions already holds the utterances: drop the corpus argument")
    if dump_emissions is not None and model is None:
        raise W2VError("--dump-emissions stores what --model computes; it needs --model")


def emission_source(*, corpus: str | None, model: str | None, emissions: str | None, features: str | None,
                    dict_path: str | None, frame_shift: float | None, shard: tuple[int, int] | None,
                    device: str, batch_seconds: float | None, skips: SkipLog | None = None,
                    chunk_seconds: float = 60.0, chunk_overlap: float = 2.0, int8: bool = False) -> EmissionSource:
    """Choose the source: a downstream model over ``features``, a CTC model over ``corpus``,
    or stored ``emissions`` (see :mod:`w2vtools.emissions`); bad utterances of a corpus go to ``skips``."""
    if features is not None:
        return downstream_emissions(features, model, device=device, shard=shard)
    if model is not None:
        source = model_emissions(corpus, model, device=device, batch_seconds=batch_seconds, shard=shard, skips=skips,
                                 chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap, int8=int8)
        if dict_path is not None and ctc_vocabulary(read_dictionary(dict_path)) != source.tokens:
            raise W2VError(f"{dict_path}: differs from the dictionary stored in {model}")
        return source
    return stored_emissions(emissions, dict_path=dict_path, frame_shift=frame_shift, shard=shard)


def decode(
    *,
    corpus: str | None = None,
    model: str | None = None,
    emissions: str | None = None,
    dict_path: str | None = None,
    output: str = "-",
    options: DecoderOptions | None = None,
    nbest_output: str | None = None,
    trn: str | None = None,
    ctm: str | None = None,
    dump_emissions: str | None = None,
    shard: str | None = None,
    frame_shift: float | None = None,
    utt2spk: str | None = None,
    device: str = "cpu",
    batch_seconds: float | None = None,
    progress: bool | None = None,
    features: str | None = None,
    chunk_seconds: float = 60.0,
    chunk_overlap: float = 2.0,
    int8: bool = False,
) -> DecodeSummary:
    """Decode a corpus with a CTC model, or stored emissions, into Kaldi ``text`` (and nbest/trn/ctm).

    With ``model`` and ``corpus`` the model runs through the corpus runner
    (:mod:`w2vtools.runner`): ``batch_seconds`` of padded audio per batch (None: 5 on a
    CPU, 200 on a GPU), recordings longer than ``chunk_seconds`` in windows with
    ``chunk_overlap`` seconds of context each side, so a long recording's memory is
    bounded by the window. ``int8``: the CTC model runs dynamically quantized on the CPU
    (:func:`w2vtools.runner.prepare_model`; its effect on WER: BENCHMARKS.md).

    Example:
        >>> decode(emissions="em.h5", output="hyp.txt",
        ...        options=DecoderOptions("kenlm", lexicon="lexicon.txt", lm="lm.bin"))   # doctest: +SKIP
    """
    opts = options or DecoderOptions()
    _check_options(opts)
    if opts.nbest > 1 and nbest_output is None and not opts.rescore:  # --rescore: N is the list it reorders
        if output == "-":
            raise W2VError("--nbest with output on stdout: name the n-best file with --nbest-out")
        nbest_output = output + ".nbest"
    _check_inputs(corpus=corpus, model=model, emissions=emissions, features=features, dump_emissions=dump_emissions)
    if int8 and (corpus is None or model is None):
        raise W2VError("--int8 quantizes a CTC model run over audio: it needs CORPUS and --model "
                       "(not --emissions, nor --features)")
    name = emissions or corpus or features
    skips = SkipLog(log)
    summary = DecodeSummary()
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # one writer per output, before the model loads: a second decode into the same files fails at once
        dumped = output_paths(dump_emissions) if dump_emissions else []
        stack.enter_context(exclusive_output(output, nbest_output, trn, ctm, *dumped))
        source = emission_source(corpus=corpus, model=model, emissions=emissions, features=features,
                                 dict_path=dict_path, frame_shift=frame_shift, shard=parse_shard(shard), device=device,
                                 batch_seconds=batch_seconds, skips=skips, chunk_seconds=chunk_seconds,
                                 chunk_overlap=chunk_overlap, int8=int8)
        search = make_search(source.tokens, opts, device=device)
        spk = read_kaldi_table(utt2spk) if utt2spk else {}
        out = HypothesisWriter(stack, output, nbest=nbest_output, trn=trn, ctm=ctm, frame_shift=source.frame_shift,
                               utt2spk=spk, order=source.order)
        dump = None
        if dump_emissions is not None:
            # log-probabilities, not logits: the attribute says so for any reader
            attrs = {"log_probs": True, "tokens": list(source.tokens), "frame_shift": source.frame_shift,
                     "model": str(model)}
            dump = stack.enter_context(open_feature_writer(dump_emissions, attrs=attrs, resume=False))
        bar = stack.enter_context(tqdm(total=source.total, unit="utt", desc="decode", leave=False,
                                       disable=not progress if progress is not None else None))
        _decode_all(source, search, out, dump, summary, skips, bar, name)
        out.finish()
        # raised inside the block: no empty outputs are left behind
        skips.check_some_written(summary.utterances, output)
        if summary.utterances == 0:
            raise W2VError(f"{name}: no utterances to decode")
    summary.total_seconds = time.perf_counter() - t_start
    log.info("%s", summary.line())
    skips.raise_if_any(summary.utterances + len(skips), output)
    return summary


def _decode_all(source: EmissionSource, search, out: HypothesisWriter, dump, summary: DecodeSummary,
                skips: SkipLog, bar, name: str) -> None:
    """Decode every utterance of ``source`` into ``out`` (and ``dump``); scores with NaN or Inf are skipped."""
    tokens = source.tokens
    seen: set[str] = set()
    for uid, emission in source.items:
        log_probs = _log_probs(uid, emission, tokens, seen, name)
        if torch.isnan(log_probs).any():  # -inf is a fine log-probability; NaN is a broken model
            skips.add(uid, NON_FINITE)
            continue
        if dump is not None:
            dump.write(uid, log_probs.numpy())
        t0 = time.perf_counter()
        hyps = [viterbi(log_probs, tokens)] if search is None else search(log_probs)
        summary.decode_seconds += time.perf_counter() - t0
        summary.utterances += 1
        summary.frames += log_probs.shape[0]
        summary.audio_seconds += log_probs.shape[0] * source.frame_shift
        out.add(uid, hyps)
        bar.update(1)


#: Why an utterance whose scores hold NaN is left out (NaN weights give NaN everywhere)
NON_FINITE = "the model's scores hold NaN (are the checkpoint's weights finite?)"


def _log_probs(uid: str, emission: torch.Tensor, tokens: Sequence[str], seen: set[str], name: str) -> torch.Tensor:
    """Check one utterance's scores (unique id, one column per token) and log-softmax them.

    Logits become log-probabilities; stored log-probabilities are unchanged (log_softmax is idempotent).
    """
    if uid in seen:
        raise W2VError(f"{name}: duplicate utterance id {uid!r}")
    seen.add(uid)
    if emission.ndim != 2 or emission.shape[-1] != len(tokens):
        raise W2VError(f"{uid}: emissions of shape {tuple(emission.shape)} do not match the {len(tokens)} tokens")
    return torch.log_softmax(emission.float(), dim=-1)
