"""``w2v align`` on the real wav2vec 2.0 emission of LibriSpeech test-clean 121-121726-0000."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.functional as taf

from w2vtools.align import (
    AlignError,
    align_utterance,
    checkpointed_viterbi,
    forced_align_path,
    frames_needed,
    transcript_targets,
)
from w2vtools.formats.labels import ctc_vocabulary, read_dictionary

UID = "librispeech-121-121726-0000"


@pytest.fixture(scope="module")
def real(shared_data):
    d = shared_data / "emissions"
    tokens = ctc_vocabulary(read_dictionary(d / "dict.ltr.txt"))
    logits = torch.from_numpy(np.load(d / f"{UID}.logits.npy"))
    words = (d / f"{UID}.expected.txt").read_text().split()
    return d, tokens, torch.log_softmax(logits, -1), words


def _collapse(path: list[int]) -> list[int]:
    """The token sequence a CTC path spells: merge repeats, drop blanks."""
    out, prev = [], 0
    for tok in path:
        if tok != 0 and tok != prev:
            out.append(tok)
        prev = tok
    return out


def test_path_equals_torchaudio_forced_align(real):
    _, tokens, lp, words = real
    alignment = align_utterance(UID, lp, words, tokens, 0.02)
    # the reference: torchaudio's forced_align on the transcript as torchaudio's tutorial spells it
    targets = [tokens.index(c) for c in "|".join(words)]
    ref_path, _ = taf.forced_align(lp[None], torch.tensor([targets], dtype=torch.int32), blank=0)
    assert alignment.path == ref_path[0].tolist()
    assert _collapse(alignment.path) == targets


def test_checkpointed_viterbi_gives_torchaudios_path_in_bounded_memory(real):
    # long recordings: the same path and scores with back-pointers kept for 37 frames at a time,
    # on the real emission and on it three times over (transcript three times)
    _, tokens, lp, words = real
    for times in (1, 3):
        long_lp = torch.cat([lp] * times)
        targets = [tokens.index(c) for c in "|".join(words * times)]
        ref_path, ref_scores = taf.forced_align(long_lp[None], torch.tensor([targets], dtype=torch.int32), blank=0)
        path, scores = checkpointed_viterbi(long_lp, targets, block=37)
        assert path.tolist() == ref_path[0].tolist()
        assert torch.equal(scores, ref_scores[0])
        # the dispatcher picks it when the trellis exceeds the budget
        assert forced_align_path(long_lp, targets, max_bytes=1000)[0].tolist() == ref_path[0].tolist()


def test_segments_cover_the_transcript_in_order(real):
    _, tokens, lp, words = real
    alignment = align_utterance(UID, lp, words, tokens, 0.02)
    assert [w.label for w in alignment.words] == words
    assert [s.label for s in alignment.letters] == list("|".join(words))
    for a, b in zip(alignment.words, alignment.words[1:]):
        assert a.start < a.end <= b.start
    assert 0 <= alignment.words[0].start and alignment.words[-1].end <= alignment.duration == pytest.approx(422 * 0.02)
    # a clean read of a 960h model: confident everywhere
    assert all(0.5 < w.confidence <= 1.0 for w in alignment.words)


def test_a_wrong_transcript_gets_low_confidence(real):
    _, tokens, lp, words = real
    right = align_utterance(UID, lp, words, tokens, 0.02)
    wrong = align_utterance(UID, lp, ["ZEBRA" if w == "POPULAR" else w for w in words], tokens, 0.02)
    i = words.index("POPULAR")
    assert wrong.words[i].confidence < 0.2 < right.words[i].confidence


def test_targets_and_the_frames_they_need():
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B", "<star>"]
    assert transcript_targets(["AB", "BA"], tokens) == ([5, 6, 4, 6, 5], [0, 0, -1, 1, 1])
    assert frames_needed([5, 5, 6]) == 4  # a blank must separate the two A's
    with pytest.raises(AlignError, match=r"word 'AXB' has letters outside the model's alphabet: 'X'"):
        transcript_targets(["AXB"], tokens)
    assert transcript_targets(["AXB", "A"], tokens, star=True) == ([7, 4, 5], [0, -1, 1])


def test_cli_ctm_letters_textgrid_and_data_dir(real, tmp_path, w2v):
    d, _, _, words = real
    text = tmp_path / "text"
    text.write_text(f"{UID} {' '.join(words).lower()}\n")  # transcripts are upper-cased like .wrd
    proc = w2v("align", "--emissions", d / f"{UID}.logits.npy", text, "--letter-ctm", tmp_path / "letters.ctm",
               "--textgrid", tmp_path / "tg", "--data-dir", tmp_path / "words")
    ctm = [line.split() for line in proc.stdout.splitlines()]
    assert [row[4] for row in ctm] == words and {row[0] for row in ctm} == {UID}
    assert all(len(row) == 6 and 0 <= float(row[5]) <= 1 for row in ctm)
    letters = [line.split()[4] for line in (tmp_path / "letters.ctm").read_text().splitlines()]
    assert "".join(letters) == "|".join(words)
    segments = (tmp_path / "words" / "segments").read_text().splitlines()
    assert len(segments) == len(words) and segments[0].split()[:2] == [f"{UID}-0000", UID]
    assert (tmp_path / "words" / "text").read_text().splitlines()[1] == f"{UID}-0001 {words[1]}"

    from praatio import textgrid

    tg = textgrid.openTextgrid(str(tmp_path / "tg" / f"{UID}.TextGrid"), includeEmptyIntervals=False)
    assert tg.tierNames == ("words", "letters")
    entries = tg.getTier("words").entries
    assert [e.label for e in entries] == words
    assert entries[0].start == pytest.approx(float(ctm[0][2]), abs=0.006)


def test_cli_names_and_skips_what_cannot_be_aligned(real, tmp_path, w2v):
    d, _, lp, words = real
    em = tmp_path / "em"
    em.mkdir()
    (em / "dict.ltr.txt").write_bytes((d / "dict.ltr.txt").read_bytes())
    np.save(em / "good.npy", np.load(d / f"{UID}.logits.npy"))
    np.save(em / "short.npy", np.load(d / f"{UID}.logits.npy")[:40])  # 0.8 s for the whole sentence
    np.save(em / "foreign.npy", np.load(d / f"{UID}.logits.npy"))
    text = tmp_path / "text"
    sentence = " ".join(words)
    text.write_text(f"good {sentence}\nshort {sentence}\nforeign {sentence} NAÏVE\nmissing A B\n")
    proc = w2v("align", "--emissions", em, text, check=False)
    assert proc.returncode == 3, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["good"] * len(words)
    assert "short: skipped: transcript needs at least" in proc.stderr
    assert "foreign: skipped: word 'NAÏVE' has letters outside the model's alphabet: 'Ï'" in proc.stderr
    assert "missing: skipped: no emission" in proc.stderr
    assert "3 of 4 utterances failed" in proc.stderr
    # --star aligns the foreign word to the wildcard
    proc = w2v("align", "--emissions", em, text, "--star", check=False)
    assert proc.returncode == 3
    assert [line.split()[4] for line in proc.stdout.splitlines() if line.startswith("foreign")][-1] == "NAÏVE"
    # nothing alignable: exit 1, nothing written
    text.write_text(f"short {sentence}\n")
    proc = w2v("align", "--emissions", em / "short.npy", "--dict", em / "dict.ltr.txt", text, "-o", tmp_path / "o.ctm",
               check=False)
    assert proc.returncode == 1 and "all 1 utterances failed" in proc.stderr and "nothing written" in proc.stderr
    assert not (tmp_path / "o.ctm").exists() and not list(tmp_path.glob("o.ctm*"))


def _long_emission(real, tmp_path, times: int):
    """The real emission ``times`` over as one recording ``long`` (.npy + dict), its transcript as often."""
    d, _, _, words = real
    folder = tmp_path / "em"
    folder.mkdir()
    np.save(folder / "long.npy", np.concatenate([np.load(d / f"{UID}.logits.npy")] * times))
    (folder / "dict.ltr.txt").write_text((d / "dict.ltr.txt").read_text())
    (tmp_path / "text").write_text("long " + " ".join(words * times) + "\n")
    return folder / "long.npy", tmp_path / "text"


def _table(path):
    return [line.split(maxsplit=1) for line in path.read_text().splitlines()]


def test_segment_cuts_a_long_recording_at_its_longest_pauses(real, tmp_path, w2v):
    _, _, _, words = real
    em, text = _long_emission(real, tmp_path, 3)
    # three readings of the sentence: at most 10 s each, the cuts fall between the readings
    w2v("align", "--emissions", em, text, "-o", tmp_path / "w.ctm", "--segment", tmp_path / "s10",
        "--max-segment-seconds", "10")
    assert [t for _, t in _table(tmp_path / "s10" / "text")] == [" ".join(words)] * 3
    # at most 4 s: each reading is cut at its two phrase pauses, never inside a word
    w2v("align", "--emissions", em, text, "-o", tmp_path / "w.ctm", "--segment", tmp_path / "s4",
        "--max-segment-seconds", "4")
    texts = [t for _, t in _table(tmp_path / "s4" / "text")]
    assert " ".join(texts).split() == words * 3
    assert texts[:3] == ["ALSO A POPULAR CONTRIVANCE", "WHEREBY LOVE MAKING MAY BE SUSPENDED",
                         "BUT NOT STOPPED DURING THE PICNIC SEASON"]
    ctm = [line.split() for line in (tmp_path / "w.ctm").read_text().splitlines()]
    word_times = [(float(c[2]), float(c[2]) + float(c[3])) for c in ctm]
    segments = [line.split() for line in (tmp_path / "s4" / "segments").read_text().splitlines()]
    first = 0
    for (sid, rec, start, end), t in zip(segments, texts):
        n = len(t.split())
        mine = word_times[first : first + n]
        assert rec == "long" and sid.startswith("long-")
        assert float(start) <= mine[0][0] and mine[-1][1] <= float(end)  # the words lie inside
        assert mine[-1][1] - mine[0][0] <= 4.0
        if first:  # a cut is at a real pause: at least 0.3 s between the words on either side
            assert mine[0][0] - word_times[first - 1][1] >= 0.3
        first += n
    starts = [float(s[2]) for s in segments]
    assert starts == sorted(starts) and all(float(a[3]) <= float(b[2]) for a, b in zip(segments, segments[1:]))
    assert _table(tmp_path / "s4" / "utt2spk")[0] == [segments[0][0], "long"]
