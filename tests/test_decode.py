"""``w2v decode``: viterbi and lexicon + KenLM beam search on real wav2vec 2.0 output,
n-best/trn/ctm outputs, shards, the lexicon check, and the live-model route
(``--dump-emissions``, then decoding the stored log-probabilities gives the same text).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vtools.decode import DecoderOptions, decode, viterbi
from w2vtools.formats.labels import ctc_vocabulary, read_dictionary
from w2vtools.formats.text import read_text_table

UID = "librispeech-121-121726-0000"


@pytest.fixture(scope="session")
def emissions_dir(shared_data) -> Path:
    return shared_data / "emissions"


@pytest.fixture(scope="session")
def expected(emissions_dir) -> str:
    return (emissions_dir / f"{UID}.expected.txt").read_text().strip()


def test_viterbi_prints_the_expected_transcript(emissions_dir, expected, w2v):
    out = w2v("decode", "--emissions", emissions_dir / f"{UID}.logits.npy").stdout
    assert out == f"{UID} {expected}\n"
    # the folder form finds dict.ltr.txt beside the .npy files
    assert w2v("decode", "--emissions", emissions_dir).stdout == out


def test_viterbi_is_argmax_collapse():
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]
    # frames: A A <s> A | B B | -> "AA B"
    ids = [5, 5, 0, 5, 4, 6, 6, 4]
    lp = torch.full((len(ids), len(tokens)), -5.0)
    lp[torch.arange(len(ids)), torch.tensor(ids)] = -0.1
    hyp = viterbi(lp, tokens)
    assert hyp.words == ["AA", "B"]
    assert hyp.word_frames == [(0, 3), (5, 6)]
    assert hyp.score == pytest.approx(-0.1 * len(ids))


@pytest.fixture(scope="session")
def lm_and_lexicon(tmp_path_factory, shared_data, emissions_dir, expected, kenlm_tools):
    """A 4-gram from the LJ Speech LM text and its lexicon, both made by `w2v lm`.

    The lexicon also holds the words of the test sentence (``--lexicon-words``), as a
    closed-vocabulary lexicon such as LibriSpeech's does: PICNIC is not in the LM text,
    so it gets the LM's <unk> probability but can still be spelled.
    """
    from conftest import run_w2v

    d = tmp_path_factory.mktemp("lm")
    (d / "vocab.txt").write_text(expected + "\n")
    run_w2v(
        "lm", shared_data / "ljspeech" / "lm_text.txt", "--order", "4", "-o", d / "lm.bin",
        "--dict", emissions_dir / "dict.ltr.txt", "--lexicon", d / "lexicon.txt", "--lexicon-words", d / "vocab.txt",
    )
    return d / "lm.bin", d / "lexicon.txt"


def test_kenlm_prints_the_expected_transcript(emissions_dir, expected, lm_and_lexicon, tmp_path, w2v):
    lm, lexicon = lm_and_lexicon
    proc = w2v(
        "decode", "--emissions", emissions_dir / f"{UID}.logits.npy", "--decoder", "kenlm", "--lexicon", lexicon,
        "--lm", lm, "-o", tmp_path / "hyp.txt", "--nbest", "3", "--trn", tmp_path / "hyp.trn",
        "--ctm", tmp_path / "hyp.ctm",
    )
    assert (tmp_path / "hyp.txt").read_text() == f"{UID} {expected}\n"
    assert "real-time factor" in proc.stderr
    nbest = read_text_table(tmp_path / "hyp.txt.nbest")
    assert list(nbest) == [f"{UID}-1", f"{UID}-2", f"{UID}-3"]
    assert " ".join(nbest[f"{UID}-1"]) == expected
    assert len({" ".join(v) for v in nbest.values()}) == 3  # distinct alternatives
    rows = [line.split() for line in (tmp_path / "hyp.txt.nbest.scores").read_text().splitlines()]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # the n-best posterior: softmax of the total scores among the decoder's n best (10 here),
    # so the three written sum to at most 1, in the scores' order, the 1-best a clear winner
    posteriors = [float(r[2]) for r in rows]
    assert posteriors == sorted(posteriors, reverse=True) and sum(posteriors) <= 1 + 1e-3
    assert posteriors[0] > 0.5
    assert posteriors[1] == pytest.approx(posteriors[0] * np.exp(scores[1] - scores[0]), abs=2e-4)
    assert (tmp_path / "hyp.trn").read_text() == f"{expected} ({UID})\n"
    ctm = [line.split() for line in (tmp_path / "hyp.ctm").read_text().splitlines()]
    assert [c[4] for c in ctm] == expected.split()
    starts = [float(c[2]) for c in ctm]
    assert starts == sorted(starts) and all(float(c[3]) > 0 for c in ctm)
    frames = np.load(emissions_dir / f"{UID}.logits.npy").shape[0]
    assert starts[-1] + float(ctm[-1][3]) <= frames * 0.02 + 1e-6
    # word confidence: the mean posterior of its letters at the frames the decoder emits them;
    # a clean read of a 960h model: high everywhere
    assert all(0.5 < float(c[5]) <= 1.0 for c in ctm)
    # the beam search's word starts are the Viterbi path's (flashlight's timesteps count a pad)
    w2v("decode", "--emissions", emissions_dir / f"{UID}.logits.npy", "-o", tmp_path / "v.txt", "--ctm", tmp_path / "v.ctm")
    assert starts == [float(line.split()[2]) for line in (tmp_path / "v.ctm").read_text().splitlines()]


def test_ctm_times_follow_the_viterbi_alignment(emissions_dir, tmp_path, w2v):
    w2v("decode", "--emissions", emissions_dir / f"{UID}.logits.npy", "-o", "-", "--ctm", tmp_path / "v.ctm")
    logits = torch.from_numpy(np.load(emissions_dir / f"{UID}.logits.npy"))
    tokens = ctc_vocabulary(read_dictionary(emissions_dir / "dict.ltr.txt"))
    ids = logits.argmax(-1).tolist()
    ctm = [line.split() for line in (tmp_path / "v.ctm").read_text().splitlines()]
    best = torch.log_softmax(logits, -1).max(-1).values.exp()
    for uid, ch, start, dur, word, conf in ctm:
        first = round(float(start) / 0.02)
        last = first + round(float(dur) / 0.02) - 1
        assert tokens[ids[first]] == word[0] and tokens[ids[last]] == word[-1]
        assert tokens[ids[first - 1]] != word[0] or first == 0
        # confidence: the mean posterior of the best path on the word's letter frames
        letters = [t for t in range(first, last + 1) if ids[t] != 0]
        assert float(conf) == pytest.approx(float(best[letters].mean()), abs=1e-3)


def test_lexicon_is_checked_against_the_dictionary(emissions_dir, tmp_path, w2v):
    lm = tmp_path / "lm.bin"  # never opened: the lexicon is checked first
    lex = tmp_path / "lexicon.txt"
    lex.write_text("HELLO H E L L O |\nMÜLLER M Ü L L E R |\nNAÏVE N A Ï V E |\n")
    proc = w2v("decode", "--emissions", emissions_dir, "--decoder", "kenlm", "--lexicon", lex, "--lm", lm, check=False)
    assert proc.returncode == 1
    assert "2 words cannot be spelled" in proc.stderr and "MÜLLER" in proc.stderr and "NAÏVE" in proc.stderr
    assert "HELLO," not in proc.stderr


def test_lexicon_free_beam_without_lm_matches_viterbi_here(emissions_dir, expected, w2v):
    out = w2v("decode", "--emissions", emissions_dir, "--decoder", "beam", "--beam", "20").stdout
    assert out == f"{UID} {expected}\n"


def test_lexicon_free_beam_with_a_letter_lm(emissions_dir, expected, shared_data, tmp_path, kenlm_tools, w2v):
    # open vocabulary: PICNIC is not in the LM text, and no lexicon is needed to spell it
    w2v("lm", shared_data / "ljspeech" / "lm_text.txt", "--units", "letter", "--order", "6", "-o", tmp_path / "l6.bin",
        "--dict", emissions_dir / "dict.ltr.txt")
    out = w2v("decode", "--emissions", emissions_dir, "--decoder", "beam", "--lm", tmp_path / "l6.bin",
              "--lm-weight", "1", "--word-score", "0").stdout
    assert out == f"{UID} {expected}\n"
    ppl = w2v("lm", "--eval", emissions_dir / f"{UID}.expected.txt", "--lm", tmp_path / "l6.bin", "--units", "letter",
              "--dict", emissions_dir / "dict.ltr.txt").stdout
    assert float(ppl.split()[1]) < 10  # letters given 5 letters of context are predictable


def _perturbed(logits: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (logits + rng.normal(0, 0.5, logits.shape)).astype(np.float32)


def test_hdf5_emissions_shards_and_scoring(emissions_dir, expected, tmp_path, w2v):
    from w2vtools.formats.features import open_feature_writer

    logits = np.load(emissions_dir / f"{UID}.logits.npy")
    tokens = ctc_vocabulary(read_dictionary(emissions_dir / "dict.ltr.txt"))
    uids = [f"utt{i}" for i in range(5)]
    attrs = {"log_probs": True, "tokens": tokens, "frame_shift": 0.02}
    with open_feature_writer(str(tmp_path / "em.h5"), attrs=attrs) as w:
        for i, uid in enumerate(uids):
            lp = torch.log_softmax(torch.from_numpy(_perturbed(logits, i)), -1).numpy()
            w.write(uid, lp)
    full = w2v("decode", "--emissions", tmp_path / "em.h5").stdout
    parts = [w2v("decode", "--emissions", tmp_path / "em.h5", "--shard", f"{k}/2").stdout for k in (1, 2)]
    assert parts[0] + parts[1] == full and parts[0] and parts[1]
    assert len(full.splitlines()) == 5
    (tmp_path / "ref.txt").write_text("".join(f"{u} {expected}\n" for u in uids))
    score = w2v("score", tmp_path / "ref.txt", "-", input=full).stdout
    # the perturbation costs at most a few words against the real transcript
    wer = float(score.split()[1])
    assert 0 <= wer < 30, score


def test_live_model_route_and_dump_emissions(tmp_path, fsdd, w2v):
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.ctc import CTCModel
    from w2vtools.models.presets import get_preset
    from w2vtools.models.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(0)
    vocab = ctc_vocabulary(["|", "E", "O", "N", "T", "W", "H", "R", "I", "F", "V", "S", "X", "Z", "G"])
    encoder = Wav2Vec2Model(get_preset("wav2vec2", "tiny"))
    ctc = CTCModel(encoder, len(vocab)).eval()
    with torch.no_grad():  # a readable output: bias the projection towards a few letters
        ctc.proj.bias[5:10] += 3.0
    save_model(tmp_path / "ctc.pt", LoadedModel("wav2vec2", "ctc", ctc, ctc.config, dictionary=vocab))
    wavs = sorted(fsdd.glob("*_jackson_0.wav"))[:4]
    (tmp_path / "wav.scp").write_text("".join(f"{p.stem} {p}\n" for p in wavs))
    proc = w2v("decode", tmp_path / "wav.scp", "--model", tmp_path / "ctc.pt", "--dump-emissions", tmp_path / "em.h5",
               "-o", tmp_path / "live.txt", "--ctm", tmp_path / "live.ctm")
    assert "decoded 4 utterances" in proc.stderr
    live = read_text_table(tmp_path / "live.txt")
    from w2vtools.formats.corpus import read_corpus

    # the model runs length-sorted batches, but outputs keep the corpus order
    assert list(live) == [u.uid for u in read_corpus(str(tmp_path / "wav.scp"))]
    assert sorted(live) == sorted(p.stem for p in wavs)
    import h5py

    with h5py.File(tmp_path / "em.h5") as f:
        assert bool(f.attrs["log_probs"]) is True
        assert json.loads(f.attrs["tokens"]) == vocab
        assert f.attrs["frame_shift"] == pytest.approx(0.02)
        for key in f:
            x = f[key][()]
            assert x.shape[1] == len(vocab)
            np.testing.assert_allclose(np.exp(x).sum(-1), 1.0, atol=1e-4)  # log-probabilities, not logits
    w2v("decode", "--emissions", tmp_path / "em.h5", "-o", tmp_path / "stored.txt", "--ctm", tmp_path / "stored.ctm")
    assert read_text_table(tmp_path / "stored.txt") == live
    assert (tmp_path / "stored.ctm").read_text() == (tmp_path / "live.ctm").read_text()


def test_usage_errors(emissions_dir, tmp_path, w2v):
    from w2vtools.errors import W2VError

    cases = [
        (dict(), "either --model"),
        (dict(emissions=str(emissions_dir), options=DecoderOptions(nbest=2)), "beam-search"),
        (dict(emissions=str(emissions_dir), options=DecoderOptions("kenlm")), "--lexicon and --lm"),
        (dict(emissions=str(emissions_dir), shard="3/2"), "--shard"),
        (dict(emissions=str(tmp_path / "none.h5")), "no such file"),
        (dict(emissions=str(emissions_dir), options=DecoderOptions("viterbi", lm="x.bin")), "--decoder kenlm"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(W2VError, match=needle.replace("-", "\\-")):
            decode(output=str(tmp_path / "h.txt"), **kwargs)
    assert not (tmp_path / "h.txt").exists()
    # through the CLI: one line on stderr, status 1
    proc = w2v("decode", "--emissions", emissions_dir, "--decoder", "kenlm", check=False)
    assert proc.returncode == 1 and "--lexicon and --lm" in proc.stderr and proc.stderr.count("\n") == 1


def test_library_decode_returns_a_summary(emissions_dir, tmp_path):
    s = decode(emissions=str(emissions_dir), output=str(tmp_path / "h.txt"), options=DecoderOptions())
    assert s.utterances == 1 and s.frames == 422 and s.audio_seconds == pytest.approx(8.44)
    assert s.rtf > 0


def test_blank_run_skipping_keeps_letters_apart():
    from w2vtools.decode import skip_blank_runs

    tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "L"]
    sure_blank = [0.99999, 0, 0, 0, 0, 0.00001]
    letter = [0.00001, 0, 0, 0, 0, 0.99999]
    probs = torch.tensor([sure_blank, letter, sure_blank, sure_blank, sure_blank, letter, sure_blank]) + 1e-9
    lp = torch.log(probs / probs.sum(-1, keepdim=True))
    kept = skip_blank_runs(lp, 0.999)
    assert kept.tolist() == [0, 1, 2, 5, 6]
    # the blank between the two L frames survives, so "LL" is not merged
    assert viterbi(lp[kept], tokens).words == viterbi(lp, tokens).words == ["LL"]
    assert skip_blank_runs(lp, 1.0).tolist() == list(range(7))


def test_a_torchaudio_without_the_flashlight_decoder_inside_is_one_line(monkeypatch):
    """BeamSearch asks flashlight for its n best directly (``CTCDecoder.decoder``); a torchaudio
    that moved it gives one line naming the version and the fix, not an AttributeError mid-decode."""
    import w2vtools.decode as decode_module
    from w2vtools.errors import W2VError

    monkeypatch.setattr(decode_module, "ctc_decoder", lambda **kw: object())
    tokens = ctc_vocabulary(list("AB|"))
    with pytest.raises(W2VError, match=r"torchaudio .*'s ctc_decoder holds no flashlight decoder .*requirements.lock"):
        decode_module.BeamSearch(tokens, DecoderOptions("beam"))
