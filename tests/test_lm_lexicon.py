"""Where an LM and a lexicon meet: mismatches warn once with counts; KenLM's loading noise only with -v."""

from __future__ import annotations

import logging

import pytest

from w2vtools import lm as lmlib

UID = "librispeech-121-121726-0000"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, shared_data, kenlm_tools):
    """A 2-gram ARPA and a KenLM binary over the test sentence and some LJ Speech text, by `w2v lm`."""
    from conftest import run_w2v

    d = tmp_path_factory.mktemp("tiny_lm")
    expected = (shared_data / "emissions" / f"{UID}.expected.txt").read_text()
    lj = (shared_data / "ljspeech" / "lm_text.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:200]
    (d / "text.txt").write_text(expected + "".join(lj), encoding="utf-8")
    dict_path = shared_data / "emissions" / "dict.ltr.txt"
    for out in ("lm.arpa", "lm.bin"):
        run_w2v("lm", d / "text.txt", "--order", "2", "-o", d / out, "--dict", dict_path, "--lexicon",
                d / "lexicon.txt", "--discount-fallback")
    return d


def test_matching_lexicon_and_lm_do_not_warn(tiny_lm, shared_data, w2v):
    proc = w2v("decode", "--emissions", shared_data / "emissions" / f"{UID}.logits.npy", "--decoder", "kenlm",
               "--lexicon", tiny_lm / "lexicon.txt", "--lm", tiny_lm / "lm.arpa")
    assert "words are not in" not in proc.stderr
    # KenLM's loader notes and progress bar are silenced without -v ...
    assert "Loading the LM will be faster" not in proc.stderr and "****" not in proc.stderr
    assert proc.stdout.split(None, 1)[0] == UID
    # ... and shown with -v
    proc = w2v("-v", "decode", "--emissions", shared_data / "emissions" / f"{UID}.logits.npy", "--decoder", "kenlm",
               "--lexicon", tiny_lm / "lexicon.txt", "--lm", tiny_lm / "lm.arpa")
    assert "Loading the LM will be faster" in proc.stderr


def test_decode_warns_once_about_a_lexicon_lm_mismatch(tiny_lm, shared_data, tmp_path, w2v):
    lines = (tiny_lm / "lexicon.txt").read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(("PICNIC ", "SEASON "))]
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("".join(kept) + "ZYZZYVA Z Y Z Z Y V A |\n")
    proc = w2v("decode", "--emissions", shared_data / "emissions" / f"{UID}.logits.npy", "--decoder", "kenlm",
               "--lexicon", lexicon, "--lm", tiny_lm / "lm.arpa")
    err = proc.stderr
    assert err.count("words are not in") == 2, err
    assert f"1 of {len(kept) + 1} {lexicon} words are not in {tiny_lm / 'lm.arpa'} (they get its <unk> score), " \
           "e.g. ZYZZYVA" in err
    assert f"2 of {len(lines)} {tiny_lm / 'lm.arpa'} words are not in {lexicon} (the decoder can never output " \
           "them), e.g. PICNIC, SEASON" in err
    assert "PICNIC" not in proc.stdout  # what the warning is about: the word can no longer be decoded


def test_binary_lm_checks_lexicon_words_one_by_one(tiny_lm, tmp_path, caplog):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text((tiny_lm / "lexicon.txt").read_text() + "ZYZZYVA Z Y Z Z Y V A |\n")
    assert lmlib.lm_vocabulary(tiny_lm / "lm.arpa") >= {"PICNIC", "SEASON"}
    with caplog.at_level(logging.DEBUG, logger="w2v.lm"):
        warnings = lmlib.warn_lexicon_lm_mismatch(lexicon, tiny_lm / "lm.bin")
        assert lmlib.warn_lexicon_lm_mismatch(lexicon, tiny_lm / "lm.bin") == []  # once
    assert len(warnings) == 1 and warnings[0].startswith("1 of ") and "ZYZZYVA" in warnings[0]
    assert "cannot list its vocabulary" in caplog.text
    assert lmlib.warn_lexicon_lm_mismatch(tiny_lm / "lexicon.txt", tiny_lm / "lm.arpa") == []


def test_w2v_lm_warns_about_words_it_could_not_put_in_the_lexicon(tiny_lm, shared_data, tmp_path, w2v):
    (tmp_path / "text.txt").write_text("THE CAT SAT IN 1817\nTHE DOG SAT\n")
    (tmp_path / "extra.txt").write_text("ZYZZYVA\n")
    proc = w2v("lm", tmp_path / "text.txt", "--order", "2", "-o", tmp_path / "lm.arpa", "--discount-fallback",
               "--dict", shared_data / "emissions" / "dict.ltr.txt", "--lexicon", tmp_path / "lexicon.txt",
               "--lexicon-words", tmp_path / "extra.txt")
    # the LM has THE CAT SAT IN 1817 DOG; the lexicon the five spellable ones and ZYZZYVA
    assert "1 of 6 " in proc.stderr and "(they get its <unk> score), e.g. ZYZZYVA" in proc.stderr
    assert "(the decoder can never output them), e.g. 1817" in proc.stderr
