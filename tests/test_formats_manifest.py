"""fairseq TSV manifests: exact bytes, round trip, the utterance-id rule."""

from __future__ import annotations

import io

import pytest
import soundfile as sf

from w2vtools.audio import load_utterance
from w2vtools.errors import W2VError
from w2vtools.formats.manifest import (
    Manifest,
    ManifestItem,
    format_manifest,
    looks_like_manifest,
    parse_manifest,
    read_manifest,
    uids_for,
    write_manifest,
)


def _fairseq_bytes(root: str, rows: list[tuple[str, int]]) -> str:
    # What examples/wav2vec/wav2vec_manifest.py prints: print(dir_path), then
    # print("{}\t{}".format(relpath, frames)) per file.
    out = io.StringIO()
    print(root, file=out)
    for rel, n in rows:
        print("{}\t{}".format(rel, n), file=out)
    return out.getvalue()


def test_bytes_match_fairseq_and_round_trip(tmp_path, fsdd):
    files = sorted(fsdd.glob("*_theo_1*.wav"))[:12]
    rows = [(f.name, sf.info(f).frames) for f in files]
    man = Manifest(str(fsdd), [ManifestItem(r, n) for r, n in rows])
    path = tmp_path / "train.tsv"
    write_manifest(path, man)
    assert path.read_text() == _fairseq_bytes(str(fsdd), rows)
    back = read_manifest(path)
    assert back == man
    assert [u.source for u in back.utterances()] == [str(f) for f in files]
    assert [u.num_samples for u in back.utterances()] == [n for _, n in rows]


def test_uid_rule_stems_then_relpaths():
    assert uids_for(["a/103-1240-0000.flac", "b/x.wav"]) == ["103-1240-0000", "x"]
    # Colliding stems fall back to the relative path without extension, only for those rows.
    assert uids_for(["spk1/0001.wav", "spk2/0001.wav", "other.wav"]) == ["spk1/0001", "spk2/0001", "other"]
    # Same name, different extension: both lose the extension and collide: an error, not a silent merge.
    with pytest.raises(W2VError, match="same file twice"):
        uids_for(["a/x.wav", "a/x.flac"])
    # Stable: the id of a row depends only on the rows, not their order.
    rows = ["d/1.wav", "c/2.wav", "e/1.wav"]
    assert dict(zip(rows, uids_for(rows))) == dict(zip(rows[::-1], uids_for(rows[::-1])))


def test_bad_manifests_are_named(tmp_path):
    with pytest.raises(W2VError, match="empty manifest"):
        parse_manifest(io.StringIO(""), "x.tsv")
    with pytest.raises(W2VError, match=r"x.tsv:1: line 1 must be the root"):
        parse_manifest(io.StringIO("a.wav\t12\n"), "x.tsv")
    with pytest.raises(W2VError, match=r"x.tsv:3: num_samples is not an integer"):
        parse_manifest(io.StringIO("/r\na.wav\t12\nb.wav\tabc\n"), "x.tsv")
    with pytest.raises(W2VError, match="no such file"):
        read_manifest(tmp_path / "missing.tsv")
    with pytest.raises(W2VError, match="tab or line break"):
        format_manifest(Manifest("/r", [ManifestItem("a\tb.wav", 3)]))


def test_looks_like_manifest():
    assert looks_like_manifest("/data/root", "a.wav\t16000")
    assert looks_like_manifest("/data/root", None)
    assert not looks_like_manifest("utt1 /data/a.wav", "utt2 /data/b.wav")
    assert not looks_like_manifest("a.wav\t100", "b.wav\t200")
    # a one-line wav.scp is a wav.scp, not a manifest without rows
    assert not looks_like_manifest("utt1 /data/a.wav", None)
    assert not looks_like_manifest("utt1 sox /data/a.flac -t wav - |", None)


def test_read_corpus_one_line_wav_scp(tmp_path, fsdd):
    from w2vtools.formats.corpus import read_corpus

    wav = fsdd / "3_theo_7.wav"
    scp = tmp_path / "wav.scp"
    scp.write_text(f"theo-3_theo_7 {wav}\n")
    utts = read_corpus(scp)
    assert [(u.uid, u.source) for u in utts] == [("theo-3_theo_7", str(wav))]
    assert load_utterance(utts[0]).shape[0] > 0
