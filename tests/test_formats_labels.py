"""fairseq labels: .wrd, .ltr, dict.ltr.txt, transcripts sources."""

from __future__ import annotations

import collections

import pytest

from w2vtools.errors import W2VError
from w2vtools.formats import labels


def _fairseq_ltr(words: str) -> str:
    # examples/wav2vec/libri_labels.py
    return " ".join(list(words.replace(" ", "|"))) + " |"


@pytest.mark.parametrize("text", ["HELLO WORLD", "A", "IT'S TWENTY ONE", "MISTER QUILTER IS THE APOSTLE"])
def test_letters_match_fairseq_recipe_and_invert(text):
    assert labels.words_to_letters(text) == _fairseq_ltr(text)
    assert labels.letters_to_words(labels.words_to_letters(text)) == text


def test_letters_normalise_case_and_space():
    assert labels.words_to_letters("  hello\tworld ") == "H E L L O | W O R L D |"
    assert labels.words_to_letters("hello", upper=False) == "h e l l o |"
    assert labels.words_to_letters("") == "|"
    assert labels.normalize_words(" a  b ") == "A B"


def test_dictionary_counts_order_and_round_trip(tmp_path):
    lines = [labels.words_to_letters(t) for t in ["THE CAT", "A BAT", "TAB"]]
    counts = labels.count_symbols(lines)
    expected = collections.Counter("".join(lines).replace(" ", ""))
    assert counts == expected
    path = tmp_path / "dict.ltr.txt"
    labels.write_dictionary(path, counts)
    text = path.read_text().splitlines()
    pairs = [(line.split()[0], int(line.split()[1])) for line in text]
    # Most frequent first, ties by symbol.
    assert pairs == sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))
    assert labels.read_dictionary(path) == [s for s, _ in pairs]
    assert labels.ctc_vocabulary(labels.read_dictionary(path))[:5] == ["<s>", "<pad>", "</s>", "<unk>", pairs[0][0]]


def test_read_real_fairseq_dictionary(shared_data):
    symbols = labels.read_dictionary(shared_data / "emissions" / "dict.ltr.txt")
    assert symbols[0] == "|" and "E" in symbols and "'" in symbols
    vocab = labels.ctc_vocabulary(symbols)
    assert len(vocab) == 4 + len(symbols) == 32  # the stored logits have 32 classes


def test_read_fairseq_dictionary_with_overwrite_flag(tmp_path):
    d = tmp_path / "dict.ltr.txt"
    d.write_text("| 10\nE 5\n' 2\n<unk> 1 #fairseq:overwrite\n")
    assert labels.ctc_vocabulary(labels.read_dictionary(d)) == ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "'"]


def test_read_dictionary_errors(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("A 3\nA 2\n")
    with pytest.raises(W2VError, match="duplicate symbol"):
        labels.read_dictionary(p)
    p.write_text("A x\n")
    with pytest.raises(W2VError, match="not an integer"):
        labels.read_dictionary(p)
    p.write_text("A 1 #fairseq:overwrite\nB 1\n")
    assert labels.read_dictionary(p) == ["A", "B"]


def test_labels_are_line_aligned(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("/root\na.wav\t10\nb.wav\t20\n")
    labels.write_labels(tmp_path / "train.ltr", ["A |", "B |"])
    assert labels.read_labels(tsv, "ltr") == ["A |", "B |"]
    labels.write_labels(tmp_path / "train.wrd", ["A"])
    with pytest.raises(W2VError, match="1 lines but .* has 2 rows"):
        labels.read_labels(tsv, "wrd")
    with pytest.raises(W2VError, match="line break"):
        labels.write_labels(tmp_path / "x.wrd", ["A\nB"])


def test_transcript_sources(tmp_path, ljspeech):
    text = tmp_path / "text"
    text.write_text("u1 hello world\nu2\n")
    assert labels.read_transcripts(text) == {"u1": "hello world", "u2": ""}
    libri = tmp_path / "LibriSpeech" / "dev" / "103" / "1240"
    libri.mkdir(parents=True)
    (libri / "103-1240.trans.txt").write_text("103-1240-0000 CHAPTER ONE\n103-1240-0001 MISSUS RACHEL\n")
    assert labels.read_transcripts(tmp_path / "LibriSpeech") == {
        "103-1240-0000": "CHAPTER ONE",
        "103-1240-0001": "MISSUS RACHEL",
    }
    lj = labels.read_transcripts(ljspeech / "metadata.csv")
    first = (ljspeech / "metadata.csv").read_text(encoding="utf-8").splitlines()[0].split("|")
    assert lj[first[0]] == first[2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(W2VError, match="no \\*.trans.txt"):
        labels.read_transcripts(tmp_path / "empty")
    with pytest.raises(W2VError, match="no such file"):
        labels.read_transcripts(tmp_path / "missing")


def test_transcript_conflicts_and_encoding(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "a.trans.txt").write_text("u1 A\n")
    (d / "b.trans.txt").write_text("u1 B\n")
    with pytest.raises(W2VError, match="different transcript"):
        labels.read_transcripts(d)
    bad = tmp_path / "text"
    bad.write_bytes(b"u1 caf\xe9\n")
    with pytest.raises(W2VError, match="not UTF-8"):
        labels.read_transcripts(bad)


def test_out_of_dictionary_counts():
    oov = labels.out_of_dictionary(["H , I |", "A , |"], ["H", "I", "A", "|"])
    assert oov == {",": 2}
    assert labels.format_symbol_counts(oov) == "',' x2"
