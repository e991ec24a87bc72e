"""Word and character error rates, counted exactly as Kaldi's ``compute-wer`` counts them.

Conventions (kaldi ``src/bin/compute-wer.cc`` and ``src/util/edit-distance-inl.h``):

* Errors per utterance = Levenshtein distance (unit costs) between reference and
  hypothesis tokens. The ins/del/sub split is that of Kaldi's
  ``LevenshteinEditDistance``: a forward pass over hypothesis tokens that keeps,
  per cell, the counts of the first best predecessor in the order
  *substitution-or-match* (only if strictly cheaper than both others), then
  *deletion* (if strictly cheaper than insertion), else *insertion*. Other
  tools (sclite, jiwer) break ties differently, so their split may differ while
  the totals are equal.
* ``%WER = 100 * errors / reference words`` (computed in double, stored in a
  C ``float``, printed with 2 decimals), ``%SER`` = utterances whose token
  sequences differ. ``--mode strict`` fails on a missing hypothesis, ``present``
  skips it (and marks the line ``[PARTIAL]``), ``all`` scores it as empty.
  Hypotheses without a reference are ignored, as in Kaldi.
* CER: tokens are the characters of the words joined by single spaces (spaces
  count, as in jiwer's ``cer``).
* Per-utterance alignments (``--details``) use Kaldi's ``LevenshteinAlignment``
  back-trace (prefers match/substitution, then deletion, then insertion), as
  ``align-text`` and ``wer_per_utt_details.pl`` do.

The distance of all utterances is computed at once with numpy: utterances are
sorted by length and grouped, and each group's dynamic programme runs along its
anti-diagonals, so the Python loop is over diagonals, not cells or utterances.

Example:
    >>> result = score_tables({"u1": "A B C".split()}, {"u1": "A X C D".split()})
    >>> print(result.format())
    %WER 66.67 [ 2 / 3, 1 ins, 0 del, 1 sub ]
    %SER 100.00 [ 1 / 1 ]
    Scored 1 sentences, 0 not present in hyp.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.formats.kaldi import read_kaldi_table
from w2vtools.formats.text import read_text_table, write_trn

log = logging.getLogger("w2v.score")

MODES = ("strict", "present", "all")
EPS = "***"  # the empty side of an insertion/deletion in alignments, as in Kaldi's align-text
# Kaldi's non-word tokens: <unk>, <noise>, [laughter], [noise], <sil>, ...
NONWORD = re.compile(r"^(<[^<>\s]*>|\[[^\[\]\s]*\])$")

# Cells per numpy block in the batched dynamic programme: bounds its work and memory (tens of MB).
_BLOCK_CELLS = 2_000_000


@dataclasses.dataclass
class EditCounts:
    """Per-utterance edit counts (arrays of equal length, one entry per scored utterance)."""

    errors: np.ndarray
    ins: np.ndarray
    dels: np.ndarray
    subs: np.ndarray


def _distances(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]], idx: Sequence[int]) -> np.ndarray:
    """Plain Levenshtein distances from rapidfuzz (C++, bit-parallel)."""
    distance = Levenshtein.distance
    return np.fromiter((distance(refs[i], hyps[i]) for i in idx), dtype=np.int64, count=len(idx))


def edit_counts(refs: Sequence[Sequence[int] | str], hyps: Sequence[Sequence[int] | str]) -> EditCounts:
    """Kaldi's ``LevenshteinEditDistance`` (total and ins/del/sub) for many pairs of sequences.

    Pairs are lists of integer token ids, or strings (sequences of characters).

    How: a common prefix is cut off (it leaves Kaldi's programme unchanged after it);
    the distance ``T`` of each pair comes from rapidfuzz; pairs whose distance is
    only their length difference are pure insertions or deletions; the rest run
    Kaldi's programme restricted to the band of cells that can lie on a path of cost
    ``T`` (``|h - r| + |(H - h) - (R - r)| <= T``). Cells outside the band cannot be
    on an optimal path, so treating them as unreachable changes neither the cost
    nor the tie-breaking choices along Kaldi's chosen path.

    Example:
        >>> c = edit_counts([[1, 2, 3]], [[1, 9, 3, 4]])
        >>> int(c.errors[0]), int(c.ins[0]), int(c.dels[0]), int(c.subs[0])
        (2, 1, 0, 1)
    """
    n = len(refs)
    if len(hyps) != n:
        raise ValueError(f"{n} references but {len(hyps)} hypotheses")
    ref_len = np.fromiter((len(r) for r in refs), dtype=np.int64, count=n)
    hyp_len = np.fromiter((len(h) for h in hyps), dtype=np.int64, count=n)
    errors = np.zeros(n, dtype=np.int64)
    subs = np.zeros(n, dtype=np.int64)
    empty = (ref_len == 0) | (hyp_len == 0)
    errors[empty] = np.maximum(ref_len, hyp_len)[empty]
    todo = [i for i in range(n) if ref_len[i] and hyp_len[i] and refs[i] != hyps[i]]
    # A common prefix costs nothing and leaves every later cell of Kaldi's programme
    # unchanged (its first row/column after the prefix are pure deletions/insertions),
    # so it is cut off. (A common suffix is not: ties at the end can change the split.)
    refs, hyps = list(refs), list(hyps)
    rl = ref_len.copy()
    hl = hyp_len.copy()
    for i in todo:
        p = len(os.path.commonprefix([refs[i], hyps[i]]))
        if p:
            refs[i], hyps[i] = refs[i][p:], hyps[i][p:]
            rl[i] -= p
            hl[i] -= p
    dist = _distances(refs, hyps, todo)
    rest = []
    for i, t in zip(todo, dist.tolist()):
        if not rl[i] or not hl[i] or t == abs(int(hl[i]) - int(rl[i])):
            errors[i] = t  # only insertions or only deletions
        else:
            rest.append((i, t))
    if rest:
        idx = np.array([i for i, _ in rest], dtype=np.int64)
        t = np.array([t for _, t in rest], dtype=np.int64)
        d = hl[idx] - rl[idx]
        slack = (t - np.abs(d)) // 2
        lo = np.minimum(0, d) - slack  # band of h - r on optimal paths
        hi = np.maximum(0, d) + slack
        diagonals = hl[idx] + rl[idx]
        width_bucket = np.floor(np.log2(hi - lo + 1) * 3).astype(np.int64)
        order = np.lexsort((diagonals, width_bucket)).tolist()
        hl_r, rl_r, lo_l, hi_l = hl[idx].tolist(), rl[idx].tolist(), lo.tolist(), hi.tolist()
        start = 0
        while start < len(order):
            # Grow the block while its work (pairs x diagonals x band) and memory stay bounded.
            j = order[start]
            mh, mr, mlo, mhi = hl_r[j], rl_r[j], lo_l[j], hi_l[j]
            stop = start + 1
            while stop < len(order):
                j = order[stop]
                h2, r2, lo2, hi2 = max(mh, hl_r[j]), max(mr, rl_r[j]), min(mlo, lo_l[j]), max(mhi, hi_l[j])
                count = stop + 1 - start
                if count * (h2 + r2) * ((hi2 - lo2) // 2 + 1) > _BLOCK_CELLS or count * (h2 + 1) > _BLOCK_CELLS:
                    break
                mh, mr, mlo, mhi = h2, r2, lo2, hi2
                stop += 1
            block = idx[order[start:stop]]
            e, sb = _edit_block([refs[i] for i in block], [hyps[i] for i in block], int(mr), int(mh), int(mlo), int(mhi))
            errors[block] = e
            subs[block] = sb
            start = stop
    # On a path to cell (h, r): ins - del = h - r and ins + del = errors - subs.
    diff = hyp_len - ref_len
    ins = (errors - subs + diff) // 2
    dels = (errors - subs - diff) // 2
    return EditCounts(errors=errors, ins=ins, dels=dels, subs=subs)


_UNREACHABLE = 1 << 28
_UNREACHABLE16 = (1 << 15) - 2  # + 1 on a step still fits in int16


def _edit_block(refs: list, hyps: list, max_r: int, max_h: int, band_lo: int, band_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The programme for one block of pairs, one anti-diagonal (h + r = k) at a time.

    Diagonal ``k`` is stored by hypothesis position ``h`` (cell ``(h, k - h)``), so
    its three predecessors are plain slices of diagonals ``k-1`` and ``k-2``. Only
    cells with ``band_lo <= h - r <= band_hi`` are computed; the two cells just
    outside the band are marked unreachable. Only the total cost and the
    substitution count of each cell's chosen path are kept: insertions and
    deletions follow from them and the cell's position.

    Arrays are position-major, pair-minor (``[h, pair]``): a band of a few dozen
    cells is then one contiguous run of ``band x pairs`` elements for numpy, not
    ``pairs`` short rows, and the dtypes are as narrow as the values allow.
    """
    b = len(refs)
    width = max_h + 1
    ids = np.int32 if all(isinstance(r, str) or not r or max(r) < 2**31 for r in refs + hyps) else np.int64
    counts = np.int16 if max_h + max_r + 2 < _UNREACHABLE16 else np.int32
    unreachable = _UNREACHABLE16 if counts is np.int16 else _UNREACHABLE
    hyp = np.full((max_h, b), -2, dtype=ids)
    # ref[j] sits at ext[j + width]; everything outside 0..max_r-1 is padding, so the
    # reference positions of diagonal k's cells are one reversed slice.
    ext = np.full((max_r + 2 * width, b), -1, dtype=ids)
    rl = np.fromiter((len(r) for r in refs), dtype=np.int64, count=b)
    hl = np.fromiter((len(h) for h in hyps), dtype=np.int64, count=b)
    for i, (r, h) in enumerate(zip(refs, hyps)):
        if isinstance(r, str):  # characters: their code points
            r = np.frombuffer(r.encode("utf-32-le"), dtype=np.uint32)
            h = np.frombuffer(h.encode("utf-32-le"), dtype=np.uint32)
        ext[width : width + len(r), i] = r
        hyp[: len(h), i] = h
    final_k = hl + rl
    rows_by_k = {int(k): np.nonzero(final_k == k)[0] for k in np.unique(final_k)}
    out_cost = np.zeros(b, dtype=np.int64)
    out_sub = np.zeros(b, dtype=np.int64)
    # Three diagonals in rotation: k-2, k-1 and k. Cells a diagonal does not write are
    # never read from it: reads stay within the previous band and its two edges.
    cost2, cost1, cost = (np.zeros((width, b), dtype=counts) for _ in range(3))
    sub2, sub1, sub = (np.zeros((width, b), dtype=counts) for _ in range(3))
    cost1[:] = 1  # diagonal 0: cell (0, 0); diagonal 1: cells (0, 1) and (1, 0)
    for k in range(2, max_h + max_r + 1):
        # interior cells: h >= 1, r = k - h >= 1, and h - r = 2h - k within the band
        lo = max(1, k - max_r, -((-(k + band_lo)) // 2))
        hi = min(max_h, k - 1, (k + band_hi) // 2)
        if lo <= hi:
            sl, pl = slice(lo, hi + 1), slice(lo - 1, hi)
            ref_k = ext[width + k - hi - 1 : width + k - lo][::-1]  # ref[k-h-1] for h = lo..hi
            neq = hyp[pl] != ref_k
            # Kaldi's order of preference on ties: substitution (or match), deletion, insertion
            take_del = cost1[sl] < cost1[pl]
            c_edit = np.minimum(cost1[pl], cost1[sl])
            c_edit += 1
            c_sub = cost2[pl] + neq
            take_sub = c_sub < c_edit
            np.minimum(c_sub, c_edit, out=cost[sl])
            s = sub[sl]
            s[...] = sub1[pl]
            np.copyto(s, sub1[sl], where=take_del)
            np.copyto(s, sub2[pl] + neq, where=take_sub)
        for edge in (lo - 1, hi + 1):
            if 0 <= edge < width:
                cost[edge] = unreachable
                sub[edge] = 0
        if k <= max_r:
            cost[0] = k  # (0, k): deletions only
            sub[0] = 0
        if k <= max_h:
            cost[k] = k  # (k, 0): insertions only
            sub[k] = 0
        rows = rows_by_k.get(k)
        if rows is not None:
            out_cost[rows] = cost[hl[rows], rows]
            out_sub[rows] = sub[hl[rows], rows]
        cost2, sub2, cost1, sub1, cost, sub = cost1, sub1, cost, sub, cost2, sub2
    return out_cost, out_sub


def align(ref: Sequence[str], hyp: Sequence[str], eps: str = EPS) -> list[tuple[str, str]]:
    """Kaldi's ``LevenshteinAlignment``: ``[(ref_word|eps, hyp_word|eps), ...]``.

    Example:
        >>> align(["A", "B"], ["A", "C", "D"])   # ties resolved from the end, as Kaldi does
        [('A', 'A'), ('***', 'C'), ('B', 'D')]
    """
    m_len, n_len = len(ref), len(hyp)
    e = [[0] * (n_len + 1) for _ in range(m_len + 1)]
    e[0] = list(range(n_len + 1))
    for m in range(1, m_len + 1):
        row, prev = e[m], e[m - 1]
        row[0] = prev[0] + 1
        a = ref[m - 1]
        for n in range(1, n_len + 1):
            row[n] = min(prev[n - 1] + (a != hyp[n - 1]), prev[n] + 1, row[n - 1] + 1)
    out = []
    m, n = m_len, n_len
    while m or n:
        if m == 0:
            lm, ln = m, n - 1
        elif n == 0:
            lm, ln = m - 1, n
        else:
            sub_or_ok = e[m - 1][n - 1] + (ref[m - 1] != hyp[n - 1])
            dele = e[m - 1][n] + 1
            ins = e[m][n - 1] + 1
            if sub_or_ok <= min(dele, ins):
                lm, ln = m - 1, n - 1
            elif dele <= ins:
                lm, ln = m - 1, n
            else:
                lm, ln = m, n - 1
        out.append((eps if lm == m else ref[lm], eps if ln == n else hyp[ln]))
        m, n = lm, ln
    out.reverse()
    return out


def _kaldi_percent(num: int, den: int) -> str:
    # Kaldi: BaseFloat pct = 100.0 * float(num) / float(den), printed with std::fixed precision 2.
    if den == 0:
        return "nan" if num == 0 else "inf"
    return f"{float(np.float32(100.0 * num / den)):.2f}"


@dataclasses.dataclass
class ScoreResult:
    """Totals and per-utterance counts of one scoring run."""

    unit: str  # "WER" or "CER"
    uids: list[str]
    ref_tokens: np.ndarray
    counts: EditCounts
    sentence_errors: np.ndarray
    num_absent: int

    @property
    def num_tokens(self) -> int:
        return int(self.ref_tokens.sum())

    @property
    def errors(self) -> int:
        return int(self.counts.errors.sum())

    @property
    def error_rate(self) -> float:
        """Percent, as a Python float (nan/inf when there are no reference tokens)."""
        return float(_kaldi_percent(self.errors, self.num_tokens))

    def format(self) -> str:
        """The three lines of Kaldi's ``compute-wer`` (``%CER`` in place of ``%WER`` for characters)."""
        n_sent = len(self.uids)
        partial = " [PARTIAL]" if self.num_absent else ""
        s_err = int(self.sentence_errors.sum())
        return (
            f"%{self.unit} {_kaldi_percent(self.errors, self.num_tokens)} [ {self.errors} / {self.num_tokens}, "
            f"{int(self.counts.ins.sum())} ins, {int(self.counts.dels.sum())} del, {int(self.counts.subs.sum())} sub ]"
            f"{partial}\n"
            f"%SER {_kaldi_percent(s_err, n_sent)} [ {s_err} / {n_sent} ]\n"
            f"Scored {n_sent} sentences, {self.num_absent} not present in hyp."
        )


def normalize_tokens(words: Sequence[str], *, fold_case: bool = False, remove_nonwords: bool = False) -> list[str]:
    """Optional filters applied to both sides before scoring.

    Example:
        >>> normalize_tokens(["Hello", "<unk>", "[noise]", "World"], fold_case=True, remove_nonwords=True)
        ['HELLO', 'WORLD']
    """
    if not (remove_nonwords or fold_case):
        return words if isinstance(words, list) else list(words)
    if remove_nonwords:
        words = [w for w in words if not NONWORD.match(w)]
    if fold_case:
        words = [w.upper() for w in words]
    return list(words)


def score_tables(
    ref: Mapping[str, Sequence[str]],
    hyp: Mapping[str, Sequence[str]],
    *,
    mode: str = "strict",
    cer: bool = False,
    fold_case: bool = False,
    remove_nonwords: bool = False,
    ref_name: str = "REF",
    hyp_name: str = "HYP",
) -> ScoreResult:
    """Score hypotheses against references (``{uid: words}``), as ``compute-wer --text --mode=MODE``.

    Raises:
        W2VError: ``mode="strict"`` and a reference has no hypothesis; or no hypothesis id is
            a reference id at all (the tables name utterances differently).

    Example:
        >>> r = score_tables({"a": ["X"], "b": ["Y"]}, {"a": ["X"]}, mode="present")
        >>> r.format().splitlines()[0]
        '%WER 0.00 [ 0 / 1, 0 ins, 0 del, 0 sub ] [PARTIAL]'
    """
    if mode not in MODES:
        raise W2VError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if hyp and ref and not any(uid in ref for uid in hyp):
        # ids are the join key: no overlap at all is a naming mismatch, not a 100 % (or empty) WER
        raise W2VError(f"{hyp_name}: none of its {len(hyp)} utterance ids is in {ref_name} "
                       f"(e.g. {next(iter(hyp))!r} vs {next(iter(ref))!r})")
    uids: list[str] = []
    absent = 0
    ref_seqs: list[list[str]] = []
    hyp_seqs: list[list[str]] = []
    for uid, ref_words in ref.items():
        hyp_words = hyp.get(uid)
        if hyp_words is None:
            if mode == "strict":
                raise W2VError(
                    f"{hyp_name}: no hypothesis for utterance {uid!r} of {ref_name} (use --mode present or --mode all)"
                )
            absent += 1
            if mode == "present":
                continue
            hyp_words = []
        uids.append(uid)
        ref_seqs.append(normalize_tokens(ref_words, fold_case=fold_case, remove_nonwords=remove_nonwords))
        hyp_seqs.append(normalize_tokens(hyp_words, fold_case=fold_case, remove_nonwords=remove_nonwords))
    extra = sum(1 for uid in hyp if uid not in ref)
    if extra:
        log.warning("%s: %d hypotheses have no reference in %s and are ignored", hyp_name, extra, ref_name)
    if cer:
        # a string is its own sequence of characters (and compares, indexes and
        # slices as one); edit_counts reads its code points
        ref_seqs = [" ".join(w) for w in ref_seqs]
        hyp_seqs = [" ".join(w) for w in hyp_seqs]
        ref_ids, hyp_ids = ref_seqs, hyp_seqs
    else:
        vocab: dict[str, int] = collections.defaultdict(itertools.count().__next__)
        ref_ids = [[vocab[t] for t in seq] for seq in ref_seqs]
        hyp_ids = [[vocab[t] for t in seq] for seq in hyp_seqs]
    counts = edit_counts(ref_ids, hyp_ids)
    sentence_errors = np.fromiter((r != h for r, h in zip(ref_ids, hyp_ids)), dtype=np.int64, count=len(uids))
    ref_tokens = np.fromiter((len(r) for r in ref_ids), dtype=np.int64, count=len(uids))
    result = ScoreResult("CER" if cer else "WER", uids, ref_tokens, counts, sentence_errors, absent)
    result._ref_seqs = ref_seqs  # type: ignore[attr-defined]  # kept for write_details
    result._hyp_seqs = hyp_seqs  # type: ignore[attr-defined]
    return result


def _columns(cells: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    widths = [max(len(a), len(b), len(c)) for a, b, c in cells]
    ref = "  ".join(a.ljust(w) for (a, _, _), w in zip(cells, widths)).rstrip()
    hyp = "  ".join(b.ljust(w) for (_, b, _), w in zip(cells, widths)).rstrip()
    ops = "  ".join(c.ljust(w) for (_, _, c), w in zip(cells, widths)).rstrip()
    return ref, hyp, ops


def write_details(result: ScoreResult, out_dir: str | os.PathLike, utt2spk: Mapping[str, str] | None = None) -> None:
    """Write ``per_utt``, ``per_spk`` and ``ops`` into ``out_dir`` (Kaldi ``scoring_kaldi/wer_details`` style).

    * ``per_utt``: four lines per utterance: ``uid ref ...``, ``uid hyp ...``,
      ``uid op C S D I ...`` (aligned columns, ``***`` for the empty side) and
      ``uid #csid C S D I`` (counts of that alignment).
    * ``per_spk``: per speaker (``--utt2spk``; the utterance id otherwise is not
      a speaker, so everything goes to one ``ALL`` row plus the total): sentences,
      words, correct/sub/del/ins/errors/sentence-errors as counts and percents.
    * ``ops``: ``substitution REF HYP COUNT``, ``deletion REF *** COUNT``,
      ``insertion *** HYP COUNT`` lines, most frequent first within each kind.

    Example:
        >>> write_details(score_tables(ref, hyp), "exp/scoring/details")   # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ops_count: dict[str, collections.Counter] = {k: collections.Counter() for k in ("substitution", "deletion", "insertion")}
    spk_rows: dict[str, np.ndarray] = collections.defaultdict(lambda: np.zeros(7, dtype=np.int64))
    with atomic_write(out / "per_utt") as f:
        for i, uid in enumerate(result.uids):
            ref_seq, hyp_seq = result._ref_seqs[i], result._hyp_seqs[i]  # type: ignore[attr-defined]
            cells = []
            csid = [0, 0, 0, 0]
            for a, b in align(ref_seq, hyp_seq):
                if a == EPS:
                    op, j = "I", 3
                    ops_count["insertion"][(EPS, b)] += 1
                elif b == EPS:
                    op, j = "D", 2
                    ops_count["deletion"][(a, EPS)] += 1
                elif a != b:
                    op, j = "S", 1
                    ops_count["substitution"][(a, b)] += 1
                else:
                    op, j = "C", 0
                csid[j] += 1
                # characters (--cer): a space is shown as '_' so the columns stay readable
                cells.append((a if a != " " else "_", b if b != " " else "_", op))
            ref_line, hyp_line, op_line = _columns(cells)
            f.write(f"{uid} ref  {ref_line}\n{uid} hyp  {hyp_line}\n{uid} op   {op_line}\n")
            f.write(f"{uid} #csid {csid[0]} {csid[1]} {csid[2]} {csid[3]}\n")
            spk = (utt2spk or {}).get(uid, "ALL")
            # sentences, words, corr, sub, del, ins, sentence errors (alignment counts)
            spk_rows[spk] += np.array([1, len(ref_seq), csid[0], csid[1], csid[2], csid[3], int(ref_seq != hyp_seq)])
    with atomic_write(out / "per_spk") as f:
        head = ("SPEAKER", "#SENT", "#WORD", "Corr", "Sub", "Del", "Ins", "Err", "S.Err")
        width = max([len(s) for s in spk_rows] + [len("SUM"), 7])
        f.write(f"{head[0]:<{width}}  id   " + " ".join(f"{h:>9}" for h in head[1:]) + "\n")
        total = np.zeros(7, dtype=np.int64)
        for spk in sorted(spk_rows):
            total += spk_rows[spk]
        for spk, row in [*sorted(spk_rows.items()), ("SUM", total)]:
            sent, words, corr, sub, dele, ins, serr = (int(x) for x in row)
            raw = (sent, words, corr, sub, dele, ins, sub + dele + ins, serr)
            f.write(f"{spk:<{width}}  raw  " + " ".join(f"{v:>9d}" for v in raw) + "\n")
            # percentages rounded as compute-wer rounds them (through a C float)
            pct = [_kaldi_percent(v, words) for v in (corr, sub, dele, ins, sub + dele + ins)]
            pct.append(_kaldi_percent(serr, sent))
            f.write(f"{spk:<{width}}  sys  {sent:>9d} {words:>9d} " + " ".join(f"{v:>9}" for v in pct) + "\n")
    with atomic_write(out / "ops") as f:
        for kind in ("substitution", "deletion", "insertion"):
            for (a, b), n in sorted(ops_count[kind].items(), key=lambda kv: (-kv[1], kv[0])):
                f.write(f"{kind} {a} {b} {n}\n")


def score_files(
    ref_path: str,
    hyp_path: str,
    *,
    mode: str = "strict",
    cer: bool = False,
    fold_case: bool = False,
    remove_nonwords: bool = False,
    utt2spk: str | None = None,
    details_dir: str | None = None,
    trn_dir: str | None = None,
) -> ScoreResult:
    """Read two Kaldi ``text`` files (one may be ``-``), score them, and write the optional outputs.

    Example:
        >>> print(score_files("data/test/text", "exp/decode/hyp.txt").format())   # doctest: +SKIP
        %WER 9.10 [ 4786 / 52576, 708 ins, 464 del, 3614 sub ]
        %SER 62.90 [ 1648 / 2620 ]
        Scored 2620 sentences, 0 not present in hyp.
    """
    if ref_path == "-" and hyp_path == "-":
        raise W2VError("REF and HYP cannot both be '-' (stdin)")
    ref = read_text_table(ref_path)
    hyp = read_text_table(hyp_path)
    ref_name = "<stdin>" if ref_path == "-" else ref_path
    hyp_name = "<stdin>" if hyp_path == "-" else hyp_path
    if not ref:
        raise W2VError(f"{ref_name}: no utterances")
    result = score_tables(
        ref, hyp, mode=mode, cer=cer, fold_case=fold_case, remove_nonwords=remove_nonwords,
        ref_name=ref_name, hyp_name=hyp_name,
    )
    spk = read_kaldi_table(utt2spk) if utt2spk else None
    if details_dir:
        write_details(result, details_dir, spk)
    if trn_dir:
        seqs_r = dict(zip(result.uids, result._ref_seqs))  # type: ignore[attr-defined]
        seqs_h = dict(zip(result.uids, result._hyp_seqs))  # type: ignore[attr-defined]
        if cer:  # sclite scores trn tokens separated by spaces: one token per character, '_' for a space
            seqs_r = {u: [c if c != " " else "_" for c in s] for u, s in seqs_r.items()}
            seqs_h = {u: [c if c != " " else "_" for c in s] for u, s in seqs_h.items()}
        Path(trn_dir).mkdir(parents=True, exist_ok=True)
        write_trn(Path(trn_dir) / "ref.trn", seqs_r, spk)
        write_trn(Path(trn_dir) / "hyp.trn", seqs_h, spk)
    return result
