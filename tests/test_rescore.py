"""``w2v decode --rescore``: n-best lists reordered with a Transformer LM (``w2v lm --neural``).

* the acoustic part is the CTC likelihood (checked against every alignment, enumerated);
* a constructed case where the n-gram cannot see which word ends the sentence and the
  Transformer can: the n-gram's 1-best is wrong, the rescored one right;
* the real wav2vec 2.0 emission of LibriSpeech 121-121726-0000 (and noisier copies of it):
  rescoring does not hurt WER; ``--tune`` sweeps ``rescore_weight`` with one beam search
  per first-pass setting and its YAML decodes the same with ``--config``.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vtools.formats.labels import ctc_vocabulary, read_dictionary
from w2vtools.formats.text import read_text_table
from w2vtools.rescore import Candidate, Rescorer, Weights, rerank, total
from w2vtools.tune import first_pass_groups

UID = "librispeech-121-121726-0000"
LETTERS = ["|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C", "F", "G", "Y", "P", "B",
           "V", "K", "'", "X", "J", "Q", "Z"]


def _tiny_lm(path: Path, sentences: list[str]) -> Path:
    """An untrained causal TokenTransformer over the sentences' words, saved as w2v lm --neural saves it."""
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.token_transformer import TokenTransformer, token_transformer_preset
    from w2vtools.train.text_data import build_vocabulary

    vocab = build_vocabulary([s.split() for s in sentences])
    torch.manual_seed(0)
    model = TokenTransformer(token_transformer_preset("tiny", len(vocab), causal=True))
    save_model(path, LoadedModel("transformer_lm", "lm", model, model.cfg, dictionary=vocab, extra={"unit": "word"}))
    return path


def test_acoustic_score_sums_every_ctc_alignment(tmp_path):
    tokens = ctc_vocabulary(["|", "A", "B"])
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(5, len(tokens)), -1)
    rescorer = Rescorer(tokens, rescore=str(_tiny_lm(tmp_path / "lm.pt", ["A B"])))

    def brute_force(words: list[str]) -> float:
        core = "|".join(words)
        # a boundary may open and close the words; no words: nothing, or one boundary
        allowed = {core, "|" + core, core + "|", "|" + core + "|"} if words else {"", "|"}
        total_p = 0.0
        for path in itertools.product(range(len(tokens)), repeat=log_probs.shape[0]):
            collapsed = [t for t, _ in itertools.groupby(path) if t != 0]
            if "".join(tokens[t] for t in collapsed) in allowed:
                total_p += math.exp(sum(float(log_probs[i, t]) for i, t in enumerate(path)))
        return math.log(total_p)

    for words in (["AB"], ["A", "B"], ["B"], []):
        assert rescorer.acoustic(log_probs, [words])[0] == pytest.approx(brute_force(words), abs=1e-5)
    # one batched call equals the calls one by one
    batched = rescorer.acoustic(log_probs, [["AB"], ["A", "B"], []])
    assert batched == pytest.approx([rescorer.acoustic(log_probs, [w])[0] for w in (["AB"], ["A", "B"], [])])


def test_total_and_rerank():
    from w2vtools.decode import Hypothesis

    a = Candidate(Hypothesis(["A"], -1.0, []), acoustic=-5.0, ngram=-1.0, neural=-3.0)
    b = Candidate(Hypothesis(["B", "C"], -2.0, []), acoustic=-6.0, ngram=-2.0, neural=-1.0)
    assert total(b, Weights(1.0, 1.0, 0.5)) == pytest.approx(-6.0 - 2.0 - 1.0 + 1.0)
    assert [h.words for h in rerank([a, b], Weights(lm_weight=0.0, rescore_weight=0.0))] == [["A"], ["B", "C"]]
    ranked = rerank([a, b], Weights(lm_weight=0.0, rescore_weight=2.0))
    assert [h.words for h in ranked] == [["B", "C"], ["A"]]
    assert ranked[0].score == pytest.approx(-8.0) and ranked[1].score == pytest.approx(-11.0)
    assert sum(h.posterior for h in ranked) == pytest.approx(1.0)
    assert ranked[0].posterior == pytest.approx(1 / (1 + math.exp(-3.0)))


def test_first_pass_groups_share_one_beam_search():
    trials = [{"lm_weight": w, "rescore_weight": r} for w in (0.5, 1.0) for r in (0.0, 0.5, 1.0)]
    assert first_pass_groups(trials) == [[0, 1, 2], [3, 4, 5]]


def _emissions(text: str, tokens: list[str], ambiguous: dict[int, tuple[str, str]]) -> np.ndarray:
    """Log-probabilities spelling ``text``: each letter on one frame (0.9) then a blank frame; at the
    letter positions of ``ambiguous`` two letters share the frame equally."""
    index = {t: i for i, t in enumerate(tokens)}
    frames = []
    for k, c in enumerate(text.replace(" ", "|") + "|"):
        p = np.full(len(tokens), 0.02 / (len(tokens) - 2))
        if k in ambiguous:
            first, second = ambiguous[k]
            p[index[first]] = p[index[second]] = 0.49
        else:
            p[index[c]] = 0.98
        frames.append(p / p.sum())
        blank = np.full(len(tokens), 0.01 / (len(tokens) - 1))
        blank[0] = 0.99
        frames.append(blank)
    return np.log(np.stack(frames)).astype(np.float32)


@pytest.fixture(scope="module")
def long_range(tmp_path_factory, kenlm_tools):
    """Text where the first word decides the last (RED ... BAT, BLUE ... CAT), more RED than BLUE;
    a 3-gram from it, a Transformer LM trained on it, and emissions of a BLUE sentence whose last
    word's first letter is B or C with equal probability."""
    from conftest import run_w2v

    d = tmp_path_factory.mktemp("long_range")
    lines = ["RED AND THE DOG SAW A BAT"] * 60 + ["BLUE AND THE DOG SAW A CAT"] * 40
    lines = [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]
    (d / "text.txt").write_text("\n".join(lines) + "\n")
    (d / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    run_w2v("lm", d / "text.txt", "--order", "3", "-o", d / "lm.arpa", "--dict", d / "dict.ltr.txt",
            "--lexicon", d / "lexicon.txt", "--discount-fallback")
    run_w2v("lm", d / "text.txt", "--neural", "--unit", "word", "-o", d / "nlm", "--min-count", "1",
            "--max-update", "150", "--valid-interval", "50", "--valid-percent", "10", "--threads", "1",
            "--device", "cpu")
    tokens = ctc_vocabulary(LETTERS)
    sentence = "BLUE AND THE DOG SAW A CAT"
    em = _emissions(sentence, tokens, {sentence.index("CAT"): ("B", "C")})
    np.save(d / "utt.npy", em)
    return d


def test_rescoring_picks_the_right_hypothesis_where_the_ngram_does_not(long_range, w2v):
    d = long_range
    first = ["decode", "--emissions", d / "utt.npy", "--dict", d / "dict.ltr.txt", "--decoder", "kenlm",
             "--lexicon", d / "lexicon.txt", "--lm", d / "lm.arpa", "--lm-weight", "2", "--word-score", "0"]
    # the n-gram sees "SAW A" before the last word: BAT, its more frequent continuation, wins
    assert w2v(*first, "-o", "-").stdout.split()[1:] == "BLUE AND THE DOG SAW A BAT".split()
    out = w2v(*first, "--nbest", "5", "--rescore", d / "nlm" / "checkpoint_best.pt", "--rescore-weight", "1",
              "-o", "-", "--nbest-out", d / "rescored.nbest").stdout
    assert out.split()[1:] == "BLUE AND THE DOG SAW A CAT".split()
    nbest = read_text_table(d / "rescored.nbest")
    assert " ".join(nbest["utt-1"]) == "BLUE AND THE DOG SAW A CAT"
    assert "BLUE AND THE DOG SAW A BAT" in {" ".join(v) for v in nbest.values()}
    # without the Transformer's weight the rescored order is the n-gram's again
    zero = w2v(*first, "--nbest", "5", "--rescore", d / "nlm" / "checkpoint_best.pt", "--rescore-weight", "0",
               "-o", "-").stdout
    assert zero.split()[-1] == "BAT"


def test_rescore_needs_an_nbest_list(long_range, w2v):
    d = long_range
    proc = w2v("decode", "--emissions", d / "utt.npy", "--dict", d / "dict.ltr.txt", "--decoder", "kenlm",
               "--lexicon", d / "lexicon.txt", "--lm", d / "lm.arpa", "--rescore", d / "nlm" / "checkpoint_best.pt",
               check=False)
    assert proc.returncode == 1
    assert "--rescore reorders an n-best list" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = w2v("decode", "--emissions", d / "utt.npy", "--dict", d / "dict.ltr.txt", "--decoder", "kenlm",
               "--lexicon", d / "lexicon.txt", "--lm", d / "lm.arpa", "--nbest", "3", "--rescore", d / "lm.arpa",
               check=False)
    assert proc.returncode == 1 and "not a Transformer LM" in proc.stderr or "lm.arpa" in proc.stderr


@pytest.fixture(scope="module")
def librispeech(shared_data, ljspeech_word_lm, tmp_path_factory, kenlm_tools):
    """The real emission and noisier copies of it (so the first pass makes errors) in one HDF5, their
    references, and the 4-gram + lexicon of test_decode.py (the test sentence's words in the lexicon)."""
    from conftest import run_w2v
    from w2vtools.formats.features import open_feature_writer

    d = tmp_path_factory.mktemp("librispeech_rescore")
    em_dir = shared_data / "emissions"
    expected = (em_dir / f"{UID}.expected.txt").read_text().strip()
    logits = np.load(em_dir / f"{UID}.logits.npy")
    tokens = ctc_vocabulary(read_dictionary(em_dir / "dict.ltr.txt"))
    rng = np.random.default_rng(0)
    # noise of 5 on logits whose best class leads the mean by 21: the 4-gram's first pass gets 15% WER
    uids = [UID] + [f"{UID}-noisy{i}" for i in range(1, 24)]
    with open_feature_writer(str(d / "em.h5"), attrs={"log_probs": True, "tokens": tokens, "frame_shift": 0.02}) as w:
        for i, uid in enumerate(uids):
            noisy = logits + rng.normal(0, 5.0, logits.shape) * (i > 0)
            w.write(uid, torch.log_softmax(torch.from_numpy(noisy.astype(np.float32)), -1).numpy())
    (d / "ref.txt").write_text("".join(f"{u} {expected}\n" for u in uids))
    (d / "vocab.txt").write_text(expected + "\n")
    run_w2v("lm", shared_data / "ljspeech" / "lm_text.txt", "--order", "4", "-o", d / "lm.bin", "--dict",
            em_dir / "dict.ltr.txt", "--lexicon", d / "lexicon.txt", "--lexicon-words", d / "vocab.txt")
    return d


def _wer(w2v, ref, hyp_text: str) -> float:
    return float(w2v("score", ref, "-", input=hyp_text).stdout.split()[1])


@pytest.mark.slow  # the session's LJ Speech Transformer LM (conftest.ljspeech_word_lm)
def test_rescoring_the_real_librispeech_nbest_does_not_hurt_wer(librispeech, ljspeech_word_lm, w2v):
    d = librispeech
    first = ["decode", "--emissions", d / "em.h5", "--decoder", "kenlm", "--lexicon", d / "lexicon.txt",
             "--lm", d / "lm.bin", "-o", "-"]
    lm = ljspeech_word_lm / "checkpoint_best.pt"
    baseline = w2v(*first).stdout
    wer_first = _wer(w2v, d / "ref.txt", baseline)
    assert 0 < wer_first < 60  # the noisy copies have errors to fix
    rescored = w2v(*first, "--nbest", "20", "--rescore", lm, "--rescore-weight", "0.5").stdout
    wer_rescored = _wer(w2v, d / "ref.txt", rescored)
    assert wer_rescored <= wer_first, (wer_first, wer_rescored)
    # (measured: 14.71 -> 12.99; BENCHMARKS.md "Transformer LM" has the sweep)
    # the clean emission stays right
    assert read_text_table(d / "ref.txt")[UID] == dict(l.split(None, 1) for l in rescored.splitlines())[UID].split()


@pytest.mark.slow
def test_tune_sweeps_the_rescore_weight_and_its_yaml_decodes_the_same(librispeech, ljspeech_word_lm, w2v, tmp_path):
    d = librispeech
    lm = ljspeech_word_lm / "checkpoint_best.pt"
    proc = w2v("decode", "--emissions", d / "em.h5", "--decoder", "kenlm", "--lexicon", d / "lexicon.txt",
               "--lm", d / "lm.bin", "--nbest", "20", "--rescore", lm, "--tune",
               "lm_weight=1|2,rescore_weight=0:1:0.5", "--ref", d / "ref.txt", "-o", tmp_path / "best.yaml",
               "--jobs", "2")
    row = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+/\d+\s*$")  # lm_weight rescore_weight WER errors
    table = [line.split() for line in proc.stderr.splitlines() if row.match(line)]
    assert len(table) == 6
    first = _wer(w2v, d / "ref.txt", w2v("decode", "--emissions", d / "em.h5", "--decoder", "kenlm", "--lexicon",
                                          d / "lexicon.txt", "--lm", d / "lm.bin", "-o", "-").stdout)
    assert float(table[0][2]) <= first
    import yaml

    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["rescore"] == str(lm) and best["nbest"] == 20 and best["rescore_weight"] in (0.0, 0.5, 1.0)
    best_wer = float(table[0][2])
    assert [float(row[2]) for row in table] == sorted(float(row[2]) for row in table)  # best first
    out = w2v("decode", "--emissions", d / "em.h5", "--config", tmp_path / "best.yaml", "-o", "-").stdout
    assert _wer(w2v, d / "ref.txt", out) == pytest.approx(best_wer, abs=0.01)
