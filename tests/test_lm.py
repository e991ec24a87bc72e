"""``w2v lm``: normalization to a dictionary's alphabet, lmplz/build_binary, lexicon, evaluation."""

from __future__ import annotations

import math
import re
import subprocess

import pytest

from w2vtools.errors import W2VError
from w2vtools.lm import NormalizeReport, alphabet_of, evaluate_lm, find_kenlm_tool, normalize_line

LETTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


def test_normalization_to_the_alphabet_and_its_report():
    report = NormalizeReport()
    line = normalize_line('"Mrs. Fry\'s self-imposed task," in 1817 -- at the Café.', LETTERS, report)
    assert line == "MRS FRY'S SELF IMPOSED TASK IN 1817 AT THE CAFÉ"
    assert report.dropped_chars == {'"': 2, ".": 2, ",": 1}
    assert report.number_words == {"1817": 1}
    assert report.unspellable_words == {"CAFÉ": 1}
    assert normalize_line("'quoted words' and prisoners' cells", LETTERS) == "QUOTED WORDS' AND PRISONERS' CELLS"
    # a lower-case dictionary folds to lower case
    assert normalize_line("Hello World", set("abcdefghijklmnopqrstuvwxyz")) == "hello world"
    assert alphabet_of(["<s>", "<pad>", "</s>", "<unk>", "|", "E", "'"]) == {"E", "'"}


def test_missing_lmplz_says_to_run_the_installer(tmp_path, monkeypatch):
    import w2vtools.lm as lm

    monkeypatch.setattr(lm, "REPO", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KENLM_BIN", raising=False)
    with pytest.raises(W2VError, match="run tools/install_kenlm.sh"):
        lm.find_kenlm_tool("lmplz")


def _arpa_counts(path) -> dict[int, int]:
    counts = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"ngram (\d+)=(\d+)", line)
        if m:
            counts[int(m.group(1))] = int(m.group(2))
        elif line.startswith("\\1-grams"):
            break
    return counts


def test_build_arpa_binary_lexicon_and_eval(tmp_path, ljspeech, shared_data, kenlm_tools, w2v):
    text = ljspeech / "lm_text.txt"
    dict_path = shared_data / "emissions" / "dict.ltr.txt"
    small = tmp_path / "small.txt"
    small.write_text("".join(text.read_text(encoding="utf-8").splitlines(keepends=True)[:3000]), encoding="utf-8")
    proc = w2v("lm", small, "--order", "3", "-o", tmp_path / "lm.arpa", "--dict", dict_path,
               "--lexicon", tmp_path / "lexicon.txt", "--normalized-text", tmp_path / "norm.txt")
    assert "dropped punctuation" in proc.stderr
    counts = _arpa_counts(tmp_path / "lm.arpa")
    assert sorted(counts) == [1, 2, 3]
    norm = (tmp_path / "norm.txt").read_text(encoding="utf-8").split()
    vocab = set(norm)
    assert counts[1] == len(vocab) + 3  # + <s>, </s>, <unk>
    assert all(re.fullmatch(r"[A-Z'0-9\u00c0-\u017f]+", w) for w in vocab)
    lexicon = [line.split() for line in (tmp_path / "lexicon.txt").read_text(encoding="utf-8").splitlines()]
    assert all(list(fields[0]) + ["|"] == fields[1:] for fields in lexicon)
    spellable = {w for w in vocab if set(w) <= LETTERS}
    assert {fields[0] for fields in lexicon} == spellable

    # pruned binary: fewer 3-grams than the unpruned ARPA, and loadable
    w2v("lm", small, "--order", "3", "--prune", "0 0 1", "-o", tmp_path / "lm.bin", "--dict", dict_path)
    import kenlm

    assert kenlm.Model(str(tmp_path / "lm.bin")).order == 3
    w2v("lm", small, "--order", "3", "--prune", "0 0 1", "-o", tmp_path / "pruned.arpa", "--dict", dict_path)
    assert _arpa_counts(tmp_path / "pruned.arpa")[3] < counts[3]

    # evaluation: held-out LJ sentences, perplexity as KenLM's own module computes it
    held = tmp_path / "held.txt"
    held.write_text("".join(line.split("|")[2] + "\n" for line in (ljspeech / "metadata.csv").read_text().splitlines()))
    out = w2v("lm", "--eval", held, "--lm", tmp_path / "lm.arpa", "--dict", dict_path).stdout
    m = re.match(r"perplexity (\S+) \(without OOVs (\S+)\), OOV rate (\S+)% \[ (\d+) / (\d+) words \], (\d+) sentences", out)
    assert m, out
    result = evaluate_lm(str(held), str(tmp_path / "lm.arpa"), dict_path=str(dict_path))
    model = kenlm.Model(str(tmp_path / "lm.arpa"))
    sentences = [normalize_line(line, LETTERS) for line in held.read_text().splitlines()]
    log10 = sum(model.score(s, bos=True, eos=True) for s in sentences)
    words = sum(len(s.split()) for s in sentences)
    assert result.words == words == int(m.group(5)) and result.sentences == len(sentences) == int(m.group(6))
    assert math.isclose(result.perplexity, 10 ** (-log10 / (words + len(sentences))), rel_tol=1e-6)
    oovs = sum(1 for s in sentences for w in s.split() if w not in model)
    assert result.oovs == oovs == int(m.group(4))
    assert float(m.group(1)) == pytest.approx(result.perplexity, abs=0.006)

    # KenLM's query binary agrees on the perplexity including OOVs
    query = find_kenlm_tool("query")
    q = subprocess.run([query, "-v", "summary", str(tmp_path / "lm.arpa")], input="\n".join(sentences) + "\n",
                       capture_output=True, text=True, check=True)
    ppl = float(re.search(r"Perplexity including OOVs:\s*(\S+)", q.stdout).group(1))
    assert ppl == pytest.approx(result.perplexity, rel=1e-4)


def test_lm_usage_errors(tmp_path, w2v):
    (tmp_path / "t.txt").write_text("a b c\n")
    proc = w2v("lm", tmp_path / "t.txt", check=False)
    assert proc.returncode == 1 and "-o" in proc.stderr
    proc = w2v("lm", tmp_path / "t.txt", "-o", tmp_path / "x.arpa", "--lexicon", tmp_path / "l.txt", check=False)
    assert proc.returncode == 1 and "--lexicon needs --dict" in proc.stderr
    proc = w2v("lm", "--eval", tmp_path / "t.txt", check=False)
    assert proc.returncode == 1 and "--eval needs --lm" in proc.stderr
