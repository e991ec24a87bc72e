"""``w2v align``: CTC forced alignment of known transcripts to a model's emissions.

The path is the Viterbi path through the CTC trellis of the transcript's letters (blanks
between letters optional, a blank required between two equal letters), computed by
``torchaudio.functional.forced_align``, or for a long recording, whose back-pointers (frames x
letters) would not fit :data:`TRELLIS_BYTES`, by :func:`checkpointed_viterbi` (the same
recursion and tie rules, back-pointers kept one block of frames at a time). Between words the transcript has the word boundary
token ``|`` as fairseq's letter dictionaries do; it is aligned like a letter, optional
silence around it going to blank frames. From the path come:

* letter segments: the frames where the path is on that letter (repeats merged);
* word segments: from the first frame of a word's first letter to the end of its last;
* confidences: the mean posterior ``exp(log p)`` of the path's frames within the segment.

Outputs: Kaldi CTM with a confidence column (words, ``--letter-ctm`` letters), a Kaldi data dir
of word segments (``segments`` + ``text`` + ``utt2spk``), and Praat TextGrids.

Example:
    >>> alignment = align_utterance("u1", log_probs, ["HELLO", "WORLD"], tokens, 0.02)   # doctest: +SKIP
    >>> [(w.label, w.start, w.end) for w in alignment.words]                          # doctest: +SKIP
    [('HELLO', 0.32, 0.6), ('WORLD', 0.66, 1.02)]
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torchaudio.functional as taf

from w2vtools.batching import SkipLog
from w2vtools.emissions import EmissionSource
from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, exclusive_output
from w2vtools.formats.labels import WORD_BOUNDARY
from w2vtools.formats.text import ctm_line
from w2vtools.formats.textgrid import write_textgrid

log = logging.getLogger("w2v.align")

#: The wildcard token for letters outside the model's alphabet (``--star``), as in MMS: it
#: matches any frame with log-probability 0, so a word it stands for absorbs whatever is said.
STAR = "<star>"


@dataclasses.dataclass(frozen=True)
class Segment:
    """One aligned unit: a letter or a word, with its times in seconds and its confidence."""

    label: str
    start: float
    end: float
    confidence: float


@dataclasses.dataclass
class Alignment:
    """One utterance's alignment.

    Attributes:
        uid: the utterance id.
        path: the token id of each frame (0 = blank): the Viterbi path.
        letters, words: the segments, in transcript order.
        duration: frames x frame shift, the length of the emission in seconds.
    """

    uid: str
    path: list[int]
    letters: list[Segment]
    words: list[Segment]
    duration: float


class AlignError(W2VError):
    """An utterance that cannot be aligned (named and skipped; the run exits 3)."""


def transcript_targets(words: Sequence[str], tokens: Sequence[str], *, star: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of a transcript with ``|`` between words, and the word index of each.

    Letters outside ``tokens`` are an :class:`AlignError` naming the word, or with ``star``
    each such word becomes one :data:`STAR` token (which must then be the last token).

    Example:
        >>> transcript_targets(["AB", "A"], ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"])
        ([5, 6, 4, 5], [0, 0, -1, 1])
    """
    index = {t: i for i, t in enumerate(tokens)}
    targets: list[int] = []
    owner: list[int] = []
    for w, word in enumerate(words):
        if w and WORD_BOUNDARY in index:
            targets.append(index[WORD_BOUNDARY])
            owner.append(-1)
        missing = [c for c in word if c not in index]
        if missing and not star:
            raise AlignError(f"word {word!r} has letters outside the model's alphabet: "
                             f"{''.join(sorted(set(missing)))!r} (--star aligns such words to a wildcard)")
        ids = [index[STAR]] if missing else [index[c] for c in word]
        targets += ids
        owner += [w] * len(ids)
    return targets, owner


def frames_needed(targets: Sequence[int]) -> int:
    """The fewest frames a CTC path through ``targets`` takes: one per token, plus a blank
    between each pair of equal neighbours."""
    return len(targets) + sum(1 for a, b in zip(targets, targets[1:]) if a == b)


def _spans(path: torch.Tensor, num_targets: int) -> list[tuple[int, int]]:
    """``(first frame, end frame)`` of each target along the path (a new span starts where the
    path leaves blank or changes token; ``forced_align`` never skips a target)."""
    spans: list[tuple[int, int]] = []
    prev = 0
    for t, tok in enumerate(path.tolist()):
        if tok != 0 and (tok != prev or not spans or spans[-1][1] != t):
            spans.append((t, t + 1))
        elif tok != 0:
            spans[-1] = (spans[-1][0], t + 1)
        prev = tok
    if len(spans) != num_targets:
        raise AssertionError(f"path has {len(spans)} token spans for {num_targets} targets")
    return spans


#: Back-pointer memory up to which ``torchaudio.functional.forced_align`` runs: it keeps two
#: bits per trellis cell (frames x (2 x tokens + 1)), 630 MB for 20 minutes with their text;
#: beyond this a long recording is aligned by :func:`checkpointed_viterbi` (the same path,
#: its back-pointers within half of this many bytes).
TRELLIS_BYTES = 64 << 20


def forced_align_path(log_probs: torch.Tensor, targets: Sequence[int], *,
                      max_bytes: int = TRELLIS_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """The CTC Viterbi path through ``targets`` (blank 0): ``(token per frame, its log-probability)``.

    ``torchaudio.functional.forced_align`` when its trellis fits ``max_bytes``, else
    :func:`checkpointed_viterbi` (the same recursion and tie rules, so the same path).

    Example:
        >>> lp = torch.log_softmax(torch.randn(50, 6), -1)
        >>> a, b = forced_align_path(lp, [3, 4, 4]), forced_align_path(lp, [3, 4, 4], max_bytes=1)
        >>> torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
        True
    """
    num_states = 2 * len(targets) + 1
    if log_probs.shape[0] * num_states // 4 <= max_bytes:
        path, scores = taf.forced_align(log_probs[None], torch.tensor([list(targets)], dtype=torch.int32), blank=0)
        return path[0], scores[0]
    return checkpointed_viterbi(log_probs, targets, block=max(1, max_bytes // (2 * num_states)))


def _viterbi_step(alpha: torch.Tensor, emission: torch.Tensor, skip: torch.Tensor):
    """One frame of the CTC Viterbi recursion over the states (blank, t1, blank, t2, ..., blank):
    stay, advance one, or skip a blank between different tokens; ties prefer staying, then one
    step (``forced_align``'s rule). Returns (new scores, back-pointers 0/1/2 as int8)."""
    neg = torch.tensor(-math.inf, dtype=alpha.dtype)
    x1 = torch.cat([neg[None], alpha[:-1]])
    x2 = torch.where(skip, torch.cat([neg[None], neg[None], alpha[:-2]]), neg)
    take2 = (x2 > x1) & (x2 > alpha)
    take1 = ~take2 & (x1 > alpha) & (x1 > x2)
    best = torch.where(take2, x2, torch.where(take1, x1, alpha))
    return best + emission, take1.to(torch.int8) + 2 * take2.to(torch.int8)


def checkpointed_viterbi(log_probs: torch.Tensor, targets: Sequence[int], *,
                         block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC forced alignment in memory bounded by ``block`` frames of back-pointers.

    The forward pass keeps the state scores only every ``block`` frames; the backward
    trace recomputes one block at a time from its checkpoint (twice the forward work).
    Memory: ``(T / block + block) x (2 L + 1)`` cells instead of ``T x (2 L + 1)``, so a
    20-minute recording with its whole transcript aligns in tens of MB.

    Example:
        >>> lp = torch.log_softmax(torch.randn(30, 5), -1)
        >>> checkpointed_viterbi(lp, [1, 2, 2], block=4)[0].shape
        torch.Size([30])
    """
    lp = log_probs.float()
    num_frames, states = lp.shape[0], 2 * len(targets) + 1
    tg = torch.tensor(list(targets), dtype=torch.long)
    ext = torch.zeros(states, dtype=torch.long)
    ext[1::2] = tg
    skip = torch.zeros(states, dtype=torch.bool)
    skip[3::2] = tg[1:] != tg[:-1]
    alpha = torch.full((states,), -math.inf)
    alpha[:2] = lp[0, ext[:2]]
    checkpoints = {0: alpha.clone()}
    for t in range(1, num_frames):
        alpha, _ = _viterbi_step(alpha, lp[t, ext], skip)
        if t % block == 0:
            checkpoints[t] = alpha.clone()
    state = states - 1 if alpha[states - 1] > alpha[states - 2] else states - 2
    path = torch.empty(num_frames, dtype=torch.long)
    for start in sorted(checkpoints, reverse=True):
        last = min(start + block, num_frames - 1)
        a, pointers = checkpoints.pop(start), []
        for t in range(start + 1, last + 1):
            a, bp = _viterbi_step(a, lp[t, ext], skip)
            pointers.append(bp)
        for t in range(last, start, -1):
            path[t] = ext[state]
            state -= int(pointers[t - start - 1][state])
    path[0] = ext[state]
    return path, lp.gather(1, path[:, None])[:, 0]


def align_utterance(uid: str, log_probs: torch.Tensor, words: Sequence[str], tokens: Sequence[str],
                    frame_shift: float, *, star: bool = False) -> Alignment:
    """Force-align one transcript to one ``(T, V)`` matrix of CTC log-probabilities.

    Raises:
        AlignError: letters outside the alphabet, an empty transcript, or a transcript that
            needs more frames than the emission has.
    """
    if not words:
        raise AlignError("empty transcript")
    token_names = list(tokens) + ([STAR] if star else [])
    targets, owner = transcript_targets(words, token_names, star=star)
    num_frames = log_probs.shape[0]
    if frames_needed(targets) > num_frames:
        raise AlignError(f"transcript needs at least {frames_needed(targets)} frames, the emission has {num_frames} "
                         f"({num_frames * frame_shift:.2f} s): wrong transcript, or audio cut short?")
    lp = log_probs.float()
    if star:
        lp = torch.cat([lp, torch.zeros(num_frames, 1)], dim=1)  # STAR's column: log 1 on every frame
    path, scores = forced_align_path(lp, targets)
    probs = scores.exp()
    spans = _spans(path, len(targets))
    letters = [Segment(token_names[tok], a * frame_shift, b * frame_shift, float(probs[a:b].mean()))
               for tok, (a, b) in zip(targets, spans)]
    word_segments = []
    for w, word in enumerate(words):
        mine = [s for s, o in zip(spans, owner) if o == w]
        first, last = mine[0][0], mine[-1][1]
        frames = torch.cat([probs[a:b] for a, b in mine])
        word_segments.append(Segment(word, first * frame_shift, last * frame_shift, float(frames.mean())))
    return Alignment(uid, path.tolist(), letters, word_segments, num_frames * frame_shift)


# ---------------------------------------------------------------------------------------------
# Outputs


@dataclasses.dataclass
class AlignOutputs:
    """Where ``w2v align`` writes: any of them may be None (not written)."""

    ctm: str | None = "-"
    letter_ctm: str | None = None
    data_dir: str | None = None
    textgrid_dir: str | None = None
    recording_of: dict[str, str] = dataclasses.field(default_factory=dict)  # uid -> wav.scp entry, for data_dir
    segment_dir: str | None = None  # --segment: utterances cut from long recordings
    max_segment_seconds: float = 20.0
    min_confidence: float = 0.0  # --segment: utterances with a lower mean word confidence are left out


def _ctm_lines(alignment: Alignment, segments: Iterable[Segment]) -> Iterable[str]:
    for s in segments:
        yield ctm_line(alignment.uid, s.start, s.end - s.start, s.label, s.confidence) + "\n"


def word_segment_id(uid: str, index: int) -> str:
    """``uid-0003``: the id of an utterance's 4th word in the word-segments data dir."""
    return f"{uid}-{index:04d}"


def write_outputs(alignments: Sequence[Alignment], out: AlignOutputs) -> list[str]:
    """Write every requested output (each atomically); returns what was written."""
    written = []
    if out.ctm:
        with atomic_write(out.ctm) as f:
            f.writelines(line for a in alignments for line in _ctm_lines(a, a.words))
        written.append(out.ctm)
    if out.letter_ctm:
        with atomic_write(out.letter_ctm) as f:
            f.writelines(line for a in alignments for line in _ctm_lines(a, a.letters))
        written.append(out.letter_ctm)
    if out.data_dir:
        written.append(_write_word_data_dir(alignments, Path(out.data_dir), out.recording_of))
    if out.segment_dir:
        cuts = [c for a in alignments for c in segment_alignment(a, max_seconds=out.max_segment_seconds)]
        kept = [c for c in cuts if c.confidence >= out.min_confidence]
        for c in cuts:
            if c.confidence < out.min_confidence:
                log.warning("%s: mean word confidence %.3f < %.3f: left out of %s", c.uid, c.confidence,
                            out.min_confidence, out.segment_dir)
        if not kept:
            raise W2VError(f"{out.segment_dir}: every segment is below --min-confidence {out.min_confidence}")
        written.append(write_segments_data_dir(kept, Path(out.segment_dir), out.recording_of))
    if out.textgrid_dir:
        folder = Path(out.textgrid_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for a in alignments:
            tiers = {"words": [(s.start, s.end, s.label) for s in a.words],
                     "letters": [(s.start, s.end, s.label) for s in a.letters]}
            write_textgrid(folder / f"{a.uid.replace('/', '%2F')}.TextGrid", a.duration, tiers)
        written.append(str(folder))
    return written


def _write_word_data_dir(alignments: Sequence[Alignment], folder: Path, recording_of: dict[str, str]) -> str:
    """A Kaldi data dir of word segments: ``segments`` (word id, utterance id, start, end),
    ``text``, ``utt2spk`` (the utterance is the speaker, so per-utterance CMVN stays valid), and
    ``wav.scp`` when the recordings are known."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(word_segment_id(a.uid, i), a.uid, s) for a in alignments for i, s in enumerate(a.words)]
    with atomic_write(folder / "segments") as f:
        f.writelines(f"{sid} {uid} {s.start:.2f} {s.end:.2f}\n" for sid, uid, s in rows)
    with atomic_write(folder / "text") as f:
        f.writelines(f"{sid} {s.label}\n" for sid, _, s in rows)
    with atomic_write(folder / "utt2spk") as f:
        f.writelines(f"{sid} {uid}\n" for sid, uid, _ in rows)
    if recording_of:
        with atomic_write(folder / "wav.scp") as f:
            f.writelines(f"{a.uid} {recording_of[a.uid]}\n" for a in alignments if a.uid in recording_of)
    return str(folder)


# ---------------------------------------------------------------------------------------------
# --segment: a long recording and its long transcript -> utterances


@dataclasses.dataclass(frozen=True)
class Cut:
    """One utterance cut from a long recording: Kaldi ``segments`` and ``text`` of it."""

    recording: str
    start: float
    end: float
    words: tuple[str, ...]
    confidence: float  # the mean word confidence

    @property
    def uid(self) -> str:
        """``REC-SSSSSSS-EEEEEEE`` (start and end in centiseconds): Kaldi's segment ids, sorted by time."""
        return f"{self.recording}-{round(self.start * 100):07d}-{round(self.end * 100):07d}"


#: --segment: seconds of the pause kept on each side of an utterance (at most half the pause)
SEGMENT_PAD = 0.2
#: --segment: a cut leaves at least this many seconds of words on each side when it can
MIN_SEGMENT_SECONDS = 1.0


def _longest_pause(words: Sequence[Segment], lo: int, hi: int) -> int:
    """The index ``g`` in ``(lo, hi)`` with the longest pause before ``words[g]``, preferring cuts
    that leave :data:`MIN_SEGMENT_SECONDS` of words on both sides; ties go to the earliest."""
    def key(g: int):
        balanced = (words[g - 1].end - words[lo].start >= MIN_SEGMENT_SECONDS
                    and words[hi - 1].end - words[g].start >= MIN_SEGMENT_SECONDS)
        return (balanced, words[g].start - words[g - 1].end, -g)
    return max(range(lo + 1, hi), key=key)


def segment_alignment(alignment: Alignment, *, max_seconds: float = 20.0, pad: float = SEGMENT_PAD) -> list[Cut]:
    """Cut an aligned long recording into utterances of at most ``max_seconds`` of words.

    A span of words longer than that is cut at its longest pause between aligned words,
    and each half again until every span fits (a single word longer than ``max_seconds``
    stays whole). Each utterance keeps up to ``pad`` seconds of the pauses around it
    (never more than half of a pause, so neighbours do not overlap).

    Example:
        >>> words = [Segment(w, s, e, 0.9) for w, s, e in [("A", 0.5, 1.5), ("B", 1.6, 2.5), ("C", 4.0, 5.0)]]
        >>> [(c.start, c.end, c.words) for c in segment_alignment(Alignment("r", [], [], words, 6.0), max_seconds=3)]
        [(0.3, 2.7, ('A', 'B')), (3.8, 5.2, ('C',))]
    """
    words = alignment.words
    spans, todo = [], [(0, len(words))]
    while todo:
        lo, hi = todo.pop()
        if hi - lo == 1 or words[hi - 1].end - words[lo].start <= max_seconds:
            spans.append((lo, hi))
            continue
        g = _longest_pause(words, lo, hi)
        todo += [(g, hi), (lo, g)]
    cuts = []
    for lo, hi in sorted(spans):
        before = (words[lo].start + words[lo - 1].end) / 2 if lo else 0.0
        after = (words[hi - 1].end + words[hi].start) / 2 if hi < len(words) else alignment.duration
        start = round(max(before, words[lo].start - pad), 2)
        end = round(min(after, words[hi - 1].end + pad), 2)
        conf = sum(w.confidence for w in words[lo:hi]) / (hi - lo)
        cuts.append(Cut(alignment.uid, start, end, tuple(w.label for w in words[lo:hi]), conf))
    return cuts


def write_segments_data_dir(cuts: Sequence[Cut], folder: Path, recording_of: dict[str, str]) -> str:
    """A Kaldi data dir of the cut utterances: ``segments``, ``text``, ``utt2spk`` and ``spk2utt``
    (the recording is the speaker: nothing better is known), and ``wav.scp`` when the
    recordings are known; ``w2v manifest --from-kaldi`` reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    cuts = sorted(cuts, key=lambda c: (c.recording.encode("utf-8"), c.start))
    with atomic_write(folder / "segments") as f:
        f.writelines(f"{c.uid} {c.recording} {c.start:.2f} {c.end:.2f}\n" for c in cuts)
    with atomic_write(folder / "text") as f:
        f.writelines(f"{c.uid} {' '.join(c.words)}\n" for c in cuts)
    with atomic_write(folder / "utt2spk") as f:
        f.writelines(f"{c.uid} {c.recording}\n" for c in cuts)
    recordings = sorted({c.recording for c in cuts}, key=lambda r: r.encode("utf-8"))
    with atomic_write(folder / "spk2utt") as f:
        f.writelines(f"{r} {' '.join(c.uid for c in cuts if c.recording == r)}\n" for r in recordings)
    if recording_of:
        with atomic_write(folder / "wav.scp") as f:
            f.writelines(f"{r} {recording_of[r]}\n" for r in recordings if r in recording_of)
    else:
        log.warning("%s: no wav.scp (the recordings are unknown with --emissions; give the corpus too)", folder)
    return str(folder)


# ---------------------------------------------------------------------------------------------
# The command


@dataclasses.dataclass
class AlignSummary:
    """What a run did: aligned and left-out utterances, and what was written."""

    aligned: int = 0
    skipped: int = 0
    written: list[str] = dataclasses.field(default_factory=list)
    mean_confidence: float = math.nan

    def line(self) -> str:
        return (f"aligned {self.aligned} utterances (mean word confidence {self.mean_confidence:.3f}), "
                f"{self.skipped} left out; wrote {', '.join(self.written)}")


def align(source: EmissionSource, transcripts: dict[str, list[str]], outputs: AlignOutputs, *,
          star: bool = False, model_skips: SkipLog | None = None) -> AlignSummary:
    """Align every utterance that has both an emission and a transcript; write the outputs.

    Utterances that cannot be aligned are named and skipped by the shared rule
    (:class:`~w2vtools.batching.SkipLog`): exit 3 after the outputs are written, or exit 1 with
    nothing written when none could be aligned.
    ``model_skips``: the skip log the corpus runner named unreadable recordings in
    (:func:`w2vtools.emissions.model_emissions`); they count as left out.
    """
    if star and STAR in source.tokens:
        raise W2VError(f"the model's vocabulary already has a {STAR!r} token")
    out_paths = [outputs.ctm, outputs.letter_ctm, outputs.data_dir, outputs.textgrid_dir]
    skips = SkipLog(log)
    done: dict[str, Alignment] = {}
    with exclusive_output(*out_paths):
        for uid, scores in source.items:
            if uid not in transcripts:
                skips.add(uid, "no transcript")
                continue
            try:
                log_probs = torch.log_softmax(scores.float(), dim=-1)
                done[uid] = align_utterance(uid, log_probs, transcripts[uid], source.tokens, source.frame_shift,
                                            star=star)
            except AlignError as e:
                skips.add(uid, e)
        for uid in (model_skips.uids if model_skips is not None else []):
            if uid not in skips.uids:
                skips.uids.append(uid)  # already named by the runner
        for uid in transcripts:
            if uid not in done and uid not in skips.uids:
                skips.add(uid, "no emission (not in the corpus or emissions)")
        described = ", ".join(str(p) for p in out_paths if p)
        skips.check_some_written(len(done), described)
        order = [u for u in (source.order or list(done)) if u in done]
        alignments = [done[u] for u in order]
        words = [w for a in alignments for w in a.words]
        summary = AlignSummary(len(alignments), len(skips), mean_confidence=float(
            sum(w.confidence for w in words) / max(1, len(words))))
        summary.written = write_outputs(alignments, outputs)
    skips.raise_if_any(len(done) + len(skips), ", ".join(summary.written))
    return summary
