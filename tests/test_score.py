"""``w2v score``: Kaldi compute-wer's counts and lines, checked against an independent
transcription of Kaldi's algorithm, against jiwer, and against sclite (Debian ``sctk``).

What is compared with the peers: total errors, reference tokens, WER, SER (and CER
with jiwer). The ins/del/sub split is compared only with Kaldi's own algorithm:
jiwer (rapidfuzz) and sclite (weighted alignment) break ties differently.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from w2vtools.errors import W2VError
from w2vtools.formats.text import read_text_table, write_text_table
from w2vtools.score import align, edit_counts, score_tables


def kaldi_edit_distance(ref, hyp):
    """A line-by-line transcription of Kaldi's LevenshteinEditDistance(ref, hyp, &ins, &del, &sub)."""
    e = [{"ins": 0, "del": i, "sub": 0, "cost": i} for i in range(len(ref) + 1)]
    for hi in range(1, len(hyp) + 1):
        cur = [None] * (len(ref) + 1)
        cur[0] = dict(e[0], ins=e[0]["ins"] + 1, cost=e[0]["cost"] + 1)
        for ri in range(1, len(ref) + 1):
            ins_err = e[ri]["cost"] + 1
            del_err = cur[ri - 1]["cost"] + 1
            sub_err = e[ri - 1]["cost"] + (hyp[hi - 1] != ref[ri - 1])
            if sub_err < ins_err and sub_err < del_err:
                cur[ri] = dict(e[ri - 1], cost=sub_err, sub=e[ri - 1]["sub"] + (hyp[hi - 1] != ref[ri - 1]))
            elif del_err < ins_err:
                cur[ri] = dict(cur[ri - 1], cost=del_err, **{"del": cur[ri - 1]["del"] + 1})
            else:
                cur[ri] = dict(e[ri], cost=ins_err, ins=e[ri]["ins"] + 1)
        e = cur
    return e[-1]["cost"], e[-1]["ins"], e[-1]["del"], e[-1]["sub"]


@pytest.mark.parametrize("dtypes", ["narrow", "wide"])
def test_edit_counts_match_kaldi_algorithm_including_ties(dtypes, monkeypatch):
    # A 3-symbol alphabet makes ties between alignments frequent.
    rng = random.Random(7)
    first = 0
    if dtypes == "wide":  # ids past int32, and int32 costs (as for sequences of 2**15 and more)
        first = 2**40
        monkeypatch.setattr("w2vtools.score._UNREACHABLE16", 8)
    refs = [[first + rng.randrange(3) for _ in range(rng.randrange(0, 14))] for _ in range(2500)]
    hyps = [[first + rng.randrange(3) for _ in range(rng.randrange(0, 14))] for _ in range(2500)]
    counts = edit_counts(refs, hyps)
    got = list(zip(counts.errors.tolist(), counts.ins.tolist(), counts.dels.tolist(), counts.subs.tolist()))
    want = [kaldi_edit_distance(r, h) for r, h in zip(refs, hyps)]
    assert got == want


def test_alignment_is_consistent_with_the_distance():
    rng = random.Random(3)
    for _ in range(300):
        ref = [rng.choice("abc") for _ in range(rng.randrange(0, 9))]
        hyp = [rng.choice("abc") for _ in range(rng.randrange(0, 9))]
        pairs = align(ref, hyp)
        assert [a for a, _ in pairs if a != "***"] == ref
        assert [b for _, b in pairs if b != "***"] == hyp
        errors = sum(a != b for a, b in pairs)
        assert errors == kaldi_edit_distance(ref, hyp)[0]


def test_compute_wer_lines_and_modes(tmp_path, w2v):
    ref = tmp_path / "ref.txt"
    hyp = tmp_path / "hyp.txt"
    ref.write_text("u1 A B C\nu2 HELLO WORLD\nu3 X\n")
    hyp.write_text("u1 A X C D\nu2 HELLO WORLD\n")
    out = w2v("score", ref, hyp, "--mode", "present").stdout
    assert out.splitlines() == [
        "%WER 40.00 [ 2 / 5, 1 ins, 0 del, 1 sub ] [PARTIAL]",
        "%SER 50.00 [ 1 / 2 ]",
        "Scored 2 sentences, 1 not present in hyp.",
    ]
    out = w2v("score", ref, "-", "--mode", "all", input=hyp.read_text()).stdout
    assert out.splitlines()[0] == "%WER 50.00 [ 3 / 6, 1 ins, 1 del, 1 sub ] [PARTIAL]"
    assert out.splitlines()[2] == "Scored 3 sentences, 1 not present in hyp."
    strict = w2v("score", ref, hyp, check=False)
    assert strict.returncode == 1 and "u3" in strict.stderr and strict.stderr.count("\n") == 1
    both = w2v("score", "-", "-", check=False, input="")
    assert both.returncode == 1 and "both" in both.stderr
    # Kaldi dirs name utterances <speaker>-<file>; a TSV manifest decodes to bare file stems
    stems = tmp_path / "stems.txt"
    stems.write_text("".join(f"{u.split('-', 1)[1]} ZERO\n" for u in ("george-0_george_5", "jackson-0_jackson_1")))
    kaldi = tmp_path / "text"
    kaldi.write_text("george-0_george_5 ZERO\njackson-0_jackson_1 ZERO\n")
    for mode in ("present", "all", "strict"):
        p = w2v("score", kaldi, stems, "--mode", mode, check=False)
        assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
        assert "none of its 2 utterance ids" in p.stderr and "'0_george_5' vs 'george-0_george_5'" in p.stderr


def test_kaldi_percent_rounding_and_filters():
    # 1/3 -> 33.33, 2/3 -> 66.67 (float, 2 decimals, as compute-wer prints)
    r = score_tables({"a": ["x", "y", "z"]}, {"a": ["x", "q", "r"]})
    assert r.format().splitlines()[0] == "%WER 66.67 [ 2 / 3, 0 ins, 0 del, 2 sub ]"
    r = score_tables({"a": ["Hello", "<unk>", "world"]}, {"a": ["HELLO", "[noise]", "WORLD"]},
                     fold_case=True, remove_nonwords=True)
    assert r.errors == 0 and r.num_tokens == 2


def test_details_and_trn(tmp_path, w2v):
    ref = tmp_path / "ref.txt"
    hyp = tmp_path / "hyp.txt"
    spk = tmp_path / "utt2spk"
    ref.write_text("u1 A B C\nu2 HELLO WORLD\n")
    hyp.write_text("u1 A X C D\nu2 WORLD\n")
    spk.write_text("u1 s1\nu2 s2\n")
    w2v("score", ref, hyp, "--details", tmp_path / "det", "--trn", tmp_path / "trn", "--utt2spk", spk)
    per_utt = (tmp_path / "det" / "per_utt").read_text().splitlines()
    assert per_utt[:4] == ["u1 ref  A  B  C  ***", "u1 hyp  A  X  C  D", "u1 op   C  S  C  I", "u1 #csid 2 1 0 1"]
    assert per_utt[7] == "u2 #csid 1 0 1 0"
    ops = (tmp_path / "det" / "ops").read_text().splitlines()
    assert ops == ["substitution B X 1", "deletion HELLO *** 1", "insertion *** D 1"]
    per_spk = (tmp_path / "det" / "per_spk").read_text().splitlines()
    assert per_spk[1].split() == ["s1", "raw", "1", "3", "2", "1", "0", "1", "2", "1"]
    assert (tmp_path / "trn" / "hyp.trn").read_text() == "A X C D (s1-u1)\nWORLD (s2-u2)\n"


def make_pairs(lm_text: Path, n: int = 20000, seed: int = 0):
    """References from the LM text (normalized to upper-case words); hypotheses with random edits, 5% empty."""
    rng = random.Random(seed)
    sentences = []
    for line in lm_text.read_text(encoding="utf-8").splitlines():
        words = re.sub(r"[^A-Z' ]", " ", line.upper()).split()
        if words:
            sentences.append(words)
    vocab = sorted({w for s in sentences for w in s})
    ref, hyp = {}, {}
    for i in range(n):
        r = sentences[i % len(sentences)]
        h = list(r)
        if rng.random() < 0.05:
            h = []
        else:
            for _ in range(rng.randrange(0, 5)):
                op, pos = rng.randrange(3), rng.randrange(len(h) + 1)
                if op == 0:
                    h.insert(pos, rng.choice(vocab))
                elif h and op == 1:
                    del h[min(pos, len(h) - 1)]
                elif h:
                    h[min(pos, len(h) - 1)] = rng.choice(vocab)
        uid = f"utt{i:05d}"
        ref[uid], hyp[uid] = r, h
    return ref, hyp


def find_sclite() -> str | None:
    for cand in (shutil.which("sclite"), "/usr/lib/sctk/bin/sclite"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="module")
def pairs(ljspeech):
    return make_pairs(ljspeech / "lm_text.txt")


def test_20000_pairs_equal_jiwer(pairs):
    jiwer = pytest.importorskip("jiwer")
    ref, hyp = pairs
    refs = [" ".join(ref[u]) for u in ref]
    hyps = [" ".join(hyp[u]) for u in ref]
    ours = score_tables(ref, hyp)
    theirs = jiwer.process_words(refs, hyps)
    assert ours.errors == theirs.substitutions + theirs.deletions + theirs.insertions
    assert ours.num_tokens == theirs.hits + theirs.substitutions + theirs.deletions
    assert abs(ours.error_rate - round(100 * theirs.wer, 2)) < 0.006
    sentence_errors = sum(r != h for r, h in zip(refs, hyps))
    assert int(ours.sentence_errors.sum()) == sentence_errors
    # printed as Kaldi does: the percentage goes through a C float before %.2f
    ser = ours.format().splitlines()[1].split()[1]
    assert ser == f"{float(np.float32(100.0 * sentence_errors / len(refs))):.2f}"
    ours_cer = score_tables(ref, hyp, cer=True)
    theirs_cer = jiwer.process_characters(refs, hyps)
    assert ours_cer.errors == theirs_cer.substitutions + theirs_cer.deletions + theirs_cer.insertions
    assert ours_cer.num_tokens == sum(len(r) for r in refs)
    assert abs(ours_cer.error_rate - 100 * theirs_cer.cer) < 0.006


def test_20000_pairs_equal_sclite(pairs, tmp_path, w2v):
    sclite = find_sclite()
    if sclite is None:
        if os.environ.get("W2V_REQUIRE_SCTK") == "1":
            pytest.fail("sclite not found (apt-get install sctk) but W2V_REQUIRE_SCTK=1")
        pytest.skip("sclite not found (apt-get install sctk)")
    ref, hyp = pairs
    write_text_table(tmp_path / "ref.txt", ref)
    write_text_table(tmp_path / "hyp.txt", hyp)
    out = w2v("score", tmp_path / "ref.txt", tmp_path / "hyp.txt", "--trn", tmp_path / "trn").stdout
    m = re.match(r"%WER (\S+) \[ (\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub \]\n%SER (\S+) \[ (\d+) / (\d+) \]", out)
    assert m, out
    wer, errs, words, ser, serrs, sents = m.group(1), int(m.group(2)), int(m.group(3)), m.group(7), int(m.group(8)), int(m.group(9))
    # --trn wrote what sclite reads; sclite's own alignment, summed over all utterances
    proc = subprocess.run(
        [sclite, "-r", str(tmp_path / "trn" / "ref.trn"), "trn", "-h", str(tmp_path / "trn" / "hyp.trn"), "trn",
         "-i", "rm", "-s", "-o", "rsum", "stdout"],
        capture_output=True, text=True, check=True,
    )
    row = next(line for line in proc.stdout.splitlines() if re.match(r"\s*\|\s*Sum\s*\|", line))
    nums = [int(x) for x in re.findall(r"\d+", row)]
    snt, wrd, corr, sub, dele, ins, err, serr = nums
    assert (snt, wrd, err, serr) == (sents, words, errs, serrs)
    assert wer == f"{float(np.float32(100.0 * err / wrd)):.2f}"
    assert ser == f"{float(np.float32(100.0 * serr / snt)):.2f}"
    # and the read-back of what we wrote is what we scored
    assert read_text_table(tmp_path / "hyp.txt") == hyp


def test_bad_input_is_one_line(tmp_path, w2v):
    ref = tmp_path / "ref.txt"
    ref.write_text("u1 A\nu1 B\n")
    proc = w2v("score", ref, ref, check=False)
    assert proc.returncode == 1 and "duplicate utterance id" in proc.stderr
    with pytest.raises(W2VError):
        score_tables({"a": ["x"]}, {}, mode="bogus")
    proc = w2v("score", tmp_path / "missing.txt", ref, check=False)
    assert proc.returncode == 1 and "no such file" in proc.stderr
    np.testing.assert_equal(edit_counts([], []).errors, np.zeros(0))


def test_strings_score_as_character_sequences():
    rng = random.Random(11)
    refs = ["".join(rng.choice("ab ") for _ in range(rng.randrange(1, 30))) for _ in range(500)]
    hyps = ["".join(rng.choice("ab ") for _ in range(rng.randrange(0, 30))) for _ in range(500)]
    as_text = edit_counts(refs, hyps)
    as_ids = edit_counts([list(map(ord, r)) for r in refs], [list(map(ord, h)) for h in hyps])
    for field in ("errors", "ins", "dels", "subs"):
        np.testing.assert_array_equal(getattr(as_text, field), getattr(as_ids, field))
    want = [kaldi_edit_distance(r, h) for r, h in zip(refs, hyps)]
    assert list(zip(as_text.errors.tolist(), as_text.ins.tolist(), as_text.dels.tolist(), as_text.subs.tolist())) == want
