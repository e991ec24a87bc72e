"""read_corpus: one entry point for TSV, Kaldi data dir, wav.scp and stdin."""

from __future__ import annotations

import io
import sys

import pytest
import soundfile as sf

from w2vtools.audio import load_utterance
from w2vtools.errors import W2VError
from w2vtools.formats import kaldi
from w2vtools.formats.corpus import read_corpus
from w2vtools.formats.manifest import Manifest, ManifestItem, format_manifest, write_manifest
from w2vtools.formats.utterance import Utterance


@pytest.fixture
def files(fsdd):
    return sorted(fsdd.glob("7_nicolas_1*.wav"))[:5]


def test_tsv_with_sibling_labels(tmp_path, fsdd, files):
    man = Manifest(str(fsdd), [ManifestItem(f.name, sf.info(f).frames) for f in files])
    write_manifest(tmp_path / "train.tsv", man)
    utts = read_corpus(tmp_path / "train.tsv")
    assert [u.uid for u in utts] == [f.stem for f in files]
    assert [u.num_samples for u in utts] == [sf.info(f).frames for f in files]
    assert all(u.text is None and u.speaker is None for u in utts)
    (tmp_path / "train.wrd").write_text("SEVEN\n" * len(files))
    (tmp_path / "train.spk").write_text("nicolas\n" * len(files))
    utts = read_corpus(tmp_path / "train.tsv")
    assert {u.text for u in utts} == {"SEVEN"} and {u.speaker for u in utts} == {"nicolas"}
    # A stale sibling with the wrong number of lines is not used.
    (tmp_path / "train.wrd").write_text("SEVEN\n")
    assert all(u.text is None for u in read_corpus(tmp_path / "train.tsv"))
    assert len(load_utterance(utts[0])) == utts[0].num_samples


def test_kaldi_dir_and_wav_scp(tmp_path, files):
    utts = [Utterance(f"nicolas-{f.stem}", str(f), speaker="nicolas", text="SEVEN") for f in files]
    kaldi.write_data_dir(tmp_path / "d", utts)
    assert read_corpus(tmp_path / "d") == utts
    bare = read_corpus(tmp_path / "d" / "wav.scp")
    assert [(u.uid, u.source) for u in bare] == [(u.uid, u.source) for u in utts]


def test_stdin_tsv_or_wav_scp(monkeypatch, fsdd, files):
    tsv = format_manifest(Manifest(str(fsdd), [ManifestItem(f.name, 1) for f in files]))
    monkeypatch.setattr(sys, "stdin", io.StringIO(tsv))
    assert [u.uid for u in read_corpus("-")] == [f.stem for f in files]
    scp = "".join(f"u{i} {f}\n" for i, f in enumerate(files))
    monkeypatch.setattr(sys, "stdin", io.StringIO(scp))
    assert [u.source for u in read_corpus("-")] == [str(f) for f in files]
    monkeypatch.setattr(sys, "stdin", io.StringIO("u1 a.wav\nu1 b.wav\n"))
    with pytest.raises(W2VError, match="duplicate key"):
        read_corpus("-")


def test_missing_and_empty(tmp_path):
    with pytest.raises(W2VError, match="no such file"):
        read_corpus(tmp_path / "nope.tsv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(W2VError, match="empty input"):
        read_corpus(tmp_path / "empty.tsv")
