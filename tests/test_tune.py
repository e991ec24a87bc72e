"""``w2v decode --tune``: a grid (or random) search of decoder settings on stored emissions."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from w2vtools.errors import W2VError
from w2vtools.tune import grid, parse_space, random_trials

UID = "librispeech-121-121726-0000"


def test_parse_space_and_grid():
    space = parse_space("lm_weight=0:2:0.5, word_score=-1|0, beam=100")
    assert space == {"lm_weight": [0.0, 0.5, 1.0, 1.5, 2.0], "word_score": [-1.0, 0.0], "beam": [100]}
    points = grid(space)
    assert len(points) == 10 and points[1] == {"lm_weight": 0.0, "word_score": 0.0, "beam": 100}
    sample = random_trials(space, 4, seed=1)
    assert len(sample) == 4 and all(p in points for p in sample) and len({tuple(p.values()) for p in sample}) == 4
    with pytest.raises(W2VError, match="not NAME=VALUES"):
        parse_space("lexicon=x")
    with pytest.raises(W2VError, match="start:stop:step"):
        parse_space("lm_weight=2:0:0.5")


@pytest.fixture(scope="module")
def dev_set(tmp_path_factory, shared_data, kenlm_tools):
    """A small dev set: the real emission and four noisier copies (seeded), a 4-gram and lexicon
    made by `w2v lm`, and the references."""
    from conftest import run_w2v

    d = tmp_path_factory.mktemp("tune")
    src = shared_data / "emissions"
    expected = (src / f"{UID}.expected.txt").read_text().strip()
    em = d / "em"
    em.mkdir()
    (em / "dict.ltr.txt").write_bytes((src / "dict.ltr.txt").read_bytes())
    logits = np.load(src / f"{UID}.logits.npy")
    rng = np.random.default_rng(0)
    refs = []
    for k in range(5):
        noisy = logits + rng.normal(0, 2.5 * k, logits.shape).astype(np.float32)
        np.save(em / f"dev{k}.npy", noisy)
        refs.append(f"dev{k} {expected}\n")
    (d / "text").write_text("".join(refs))
    (d / "vocab.txt").write_text(expected + "\n")
    run_w2v("lm", shared_data / "ljspeech" / "lm_text.txt", "--order", "3", "-o", d / "lm.bin",
            "--dict", src / "dict.ltr.txt", "--lexicon", d / "lexicon.txt", "--lexicon-words", d / "vocab.txt")
    return d


def _wer(w2v, dev, hyp) -> float:
    out = w2v("score", dev / "text", hyp).stdout
    return float(re.search(r"%WER ([\d.]+)", out).group(1))


def test_tune_finds_the_grid_minimum_and_beats_the_defaults(dev_set, w2v, tmp_path):
    d = dev_set
    common = ["--emissions", d / "em", "--decoder", "kenlm", "--lexicon", d / "lexicon.txt", "--lm", d / "lm.bin"]
    proc = w2v("decode", *common, "--tune", "lm_weight=0|4,word_score=-3|1", "--ref", d / "text",
               "-o", tmp_path / "best.yaml", "--jobs", "2")
    table = [line.split() for line in proc.stderr.splitlines() if re.match(r"\s*-?[\d.]+\s+-?[\d.]+\s+[\d.]+\s+\d+/\d+", line)]
    assert len(table) == 4
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["decoder"] == "kenlm" and str(best["lm"]) == str(d / "lm.bin")
    # exhaustively, each point decoded and scored by the ordinary commands
    by_point = {}
    for lw in (0, 4):
        for ws in (-3, 1):
            hyp = tmp_path / f"hyp_{lw}_{ws}.txt"
            w2v("decode", *common, "--lm-weight", str(lw), "--word-score", str(ws), "-o", hyp)
            by_point[(lw, ws)] = _wer(w2v, d, hyp)
    assert min(by_point.values()) == pytest.approx(by_point[(best["lm_weight"], best["word_score"])])
    assert float(table[0][2]) == pytest.approx(min(by_point.values()), abs=0.01)
    # the defaults are no better than what --tune chose, and --config reproduces the choice
    w2v("decode", *common, "-o", tmp_path / "default.txt")
    w2v("decode", "--emissions", d / "em", "--config", tmp_path / "best.yaml", "-o", tmp_path / "tuned.txt")
    assert _wer(w2v, d, tmp_path / "tuned.txt") == pytest.approx(min(by_point.values()))
    assert _wer(w2v, d, tmp_path / "tuned.txt") <= _wer(w2v, d, tmp_path / "default.txt")
    # an option on the command line wins over the file
    other = 0 if best["lm_weight"] == 4 else 4
    w2v("decode", "--emissions", d / "em", "--config", tmp_path / "best.yaml", "--lm-weight", str(other),
        "-o", tmp_path / "override.txt")
    expected = (tmp_path / f"hyp_{other}_{best['word_score']:g}.txt").read_text()
    assert (tmp_path / "override.txt").read_text() == expected


def test_tune_needs_stored_emissions_and_references(dev_set, w2v):
    proc = w2v("decode", "--emissions", dev_set / "em", "--tune", "lm_weight=0|1", check=False)
    assert proc.returncode == 2 and "--tune needs --emissions" in proc.stderr
