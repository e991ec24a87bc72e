"""Kaldi data dirs: tables, segments, writing, and validate_data_dir.sh's checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from w2vtools.audio import load_utterance
from w2vtools.errors import W2VError
from w2vtools.formats import kaldi
from w2vtools.formats.utterance import Utterance


def _utts(fsdd, n=4):
    files = sorted(fsdd.glob("*_jackson_1*.wav"))[:n] + sorted(fsdd.glob("*_theo_2*.wav"))[:n]
    out = []
    for f in files:
        spk = f.stem.split("_")[1]
        out.append(Utterance(kaldi.kaldi_uid(f.stem, spk), str(f), speaker=spk, text=f"digit {f.stem[0]}"))
    return out


def test_c_sort_is_byte_order():
    keys = ["b", "B", "a-1", "a_1", "a1", "é", "z"]
    assert kaldi.c_sorted(keys) == ["B", "a-1", "a1", "a_1", "b", "z", "é"]


def test_kaldi_uid_prefixes_only_when_needed():
    assert kaldi.kaldi_uid("0_jackson_5", "jackson") == "jackson-0_jackson_5"
    assert kaldi.kaldi_uid("103-1240-0000", "103") == "103-1240-0000"
    assert kaldi.kaldi_uid("x", None) == "x"


def test_write_read_round_trip_and_validate(tmp_path, fsdd):
    utts = _utts(fsdd)
    durs = {u.uid: sf.info(u.source).duration for u in utts}
    d = tmp_path / "data"
    kaldi.write_data_dir(d, utts, durations=durs)
    assert kaldi.validate_data_dir(d) == []
    back = kaldi.read_data_dir(d)
    assert back == sorted(utts, key=lambda u: u.uid.encode())
    # Files are C-sorted, unique, newline-terminated.
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur"):
        lines = (d / name).read_text().splitlines()
        keys = [line.split()[0] for line in lines]
        assert keys == sorted(set(keys)), name
    assert (d / "spk2utt").read_text().splitlines()[0].split()[0] == "jackson"
    got = kaldi.read_utt2dur(d / "utt2dur")
    assert all(abs(got[k] - v) < 1e-6 for k, v in durs.items())


def test_segments_round_trip(tmp_path):
    rec = tmp_path / "long.wav"
    sig = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    sf.write(rec, sig, 16000, subtype="FLOAT")
    utts = [
        Utterance("spk1-a", str(rec), start=0.0, end=1.0, speaker="spk1", text="A"),
        Utterance("spk1-b", str(rec), start=1.0, end=2.5, speaker="spk1", text="B"),
        Utterance("spk2-c", str(rec), start=2.5, end=None, speaker="spk2", text="C"),
    ]
    d = tmp_path / "data"
    with pytest.raises(W2VError, match="needs the recording's length"):
        kaldi.write_data_dir(d, utts)
    kaldi.write_data_dir(d, utts, recording_seconds={str(rec): sf.info(rec).duration})
    # The open end is written as the recording's length: validate_data_dir.sh wants end > start.
    assert (d / "segments").read_text() == "spk1-a spk1-a 0 1\nspk1-b spk1-a 1 2.5\nspk2-c spk1-a 2.5 3\n"
    assert (d / "wav.scp").read_text() == f"spk1-a {rec}\n"
    assert kaldi.validate_data_dir(d) == []
    back = kaldi.read_data_dir(d)
    assert back[:2] == utts[:2] and back[2].end == 3.0
    np.testing.assert_array_equal(load_utterance(back[2]), load_utterance(utts[2]))
    np.testing.assert_array_equal(load_utterance(back[1]), sig[16000:40000])


def test_write_refuses_bad_ids(tmp_path):
    with pytest.raises(W2VError, match="whitespace"):
        kaldi.write_data_dir(tmp_path / "d", [Utterance("a b", "/x.wav")])
    with pytest.raises(W2VError, match="duplicate"):
        kaldi.write_data_dir(tmp_path / "d", [Utterance("a", "/x.wav"), Utterance("a", "/y.wav")])
    with pytest.raises(W2VError, match="no transcript"):
        kaldi.write_data_dir(tmp_path / "d", [Utterance("a", "/x.wav", text="A"), Utterance("b", "/y.wav")])


def test_frame_shift_and_num_frames(tmp_path):
    kaldi.write_frame_shift(tmp_path / "frame_shift", 0.02)
    assert (tmp_path / "frame_shift").read_text() == "0.02\n"
    assert kaldi.read_frame_shift(tmp_path / "frame_shift") == 0.02
    (tmp_path / "utt2num_frames").write_text("a 49\nb 100\n")
    assert kaldi.read_utt2num_frames(tmp_path / "utt2num_frames") == {"a": 49, "b": 100}
    (tmp_path / "frame_shift").write_text("ten\n")
    with pytest.raises(W2VError, match="one number"):
        kaldi.read_frame_shift(tmp_path / "frame_shift")


@pytest.fixture
def good_dir(tmp_path, fsdd):
    d = tmp_path / "good"
    utts = _utts(fsdd, 3)
    kaldi.write_data_dir(d, utts, durations={u.uid: 0.5 for u in utts})
    (d / "utt2num_frames").write_text("".join(f"{u.uid} 24\n" for u in sorted(utts, key=lambda u: u.uid)))
    (d / "feats.scp").write_text("".join(f"{u.uid} feats.ark:{i * 100}\n" for i, u in enumerate(sorted(utts, key=lambda u: u.uid))))
    kaldi.write_frame_shift(d / "frame_shift", 0.02)
    assert kaldi.validate_data_dir(d, no_feats=False) == []
    return d


def _lines(path):
    return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)


def _mutations():
    def unsorted(d):
        lines = _lines(d / "wav.scp")
        (d / "wav.scp").write_text("".join(lines[::-1]))

    def duplicate(d):
        lines = _lines(d / "text")
        (d / "text").write_text(lines[0] + "".join(lines))

    def spk_mismatch(d):
        lines = _lines(d / "spk2utt")
        (d / "spk2utt").write_text("".join(lines[:-1]))

    def text_extra(d):
        (d / "text").write_text("".join(_lines(d / "text")) + "zzz-extra hello\n")

    def missing_wav(d):
        (d / "wav.scp").write_text("".join(_lines(d / "wav.scp")[1:]))

    def no_prefix(d):
        # Speaker ids that do not prefix utterance ids: sorted by utt, not by speaker.
        lines = _lines(d / "utt2spk")
        swapped = [line.split()[0] + (" zspk\n" if i == 0 else " aspk\n") for i, line in enumerate(lines)]
        (d / "utt2spk").write_text("".join(swapped))
        spk2utt = {}
        for line in swapped:
            u, s = line.split()
            spk2utt.setdefault(s, []).append(u)
        (d / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))

    def empty_line(d):
        lines = _lines(d / "utt2dur")
        (d / "utt2dur").write_text(lines[0] + "\n" + "".join(lines[1:]))

    def no_newline(d):
        (d / "text").write_text((d / "text").read_text().rstrip("\n"))

    def cr(d):
        lines = _lines(d / "text")
        (d / "text").write_text(lines[0].rstrip("\n") + "\r\n" + "".join(lines[1:]))

    def unicode_space(d):
        lines = _lines(d / "text")
        (d / "text").write_text(lines[0].rstrip("\n") + "\u00a0x\n" + "".join(lines[1:]))

    def not_utf8(d):
        (d / "text").write_bytes((d / "text").read_bytes().replace(b"digit", b"d\xe9git", 1))

    def illegal_symbol(d):
        lines = _lines(d / "text")
        (d / "text").write_text(lines[0].rstrip("\n") + " </s>\n" + "".join(lines[1:]))

    def bad_dur(d):
        lines = _lines(d / "utt2dur")
        (d / "utt2dur").write_text(lines[0].split()[0] + " 0\n" + "".join(lines[1:]))

    def bad_frames(d):
        lines = _lines(d / "utt2num_frames")
        (d / "utt2num_frames").write_text(lines[0].split()[0] + " 2.5\n" + "".join(lines[1:]))

    def feats_missing(d):
        (d / "feats.scp").write_text("".join(_lines(d / "feats.scp")[:-1]))

    def segments_bad_rec(d):
        utts = [line.split()[0] for line in _lines(d / "utt2spk")]
        (d / "segments").write_text("".join(f"{u} otherrec 0 1\n" for u in utts))

    def segments_end_before_start(d):
        wav = _lines(d / "wav.scp")
        utts = [line.split()[0] for line in _lines(d / "utt2spk")]
        rec = wav[0].split()[0]
        (d / "wav.scp").write_text(wav[0])
        (d / "segments").write_text("".join(f"{u} {rec} 2 1\n" for u in utts))

    def tilde(d):
        lines = _lines(d / "wav.scp")
        (d / "wav.scp").write_text(lines[0].split()[0] + " ~/a.wav\n" + "".join(lines[1:]))

    def bad_frame_shift(d):
        (d / "frame_shift").write_text("-1\n")

    def no_utt2spk(d):
        (d / "utt2spk").unlink()

    return {
        "unsorted": (unsorted, "not in sorted order"),
        "duplicate": (duplicate, "duplicate key"),
        "spk_mismatch": (spk_mismatch, "spk2utt and utt2spk do not match"),
        "text_extra": (text_extra, "utterance lists differ between utt2spk and text"),
        "missing_wav": (missing_wav, "utterance lists differ between utt2spk and wav.scp"),
        "no_prefix": (no_prefix, "sorted first on speaker-id"),
        "empty_line": (empty_line, "empty line"),
        "no_newline": (no_newline, "no newline"),
        "cr": (cr, "CR"),
        "unicode_space": (unicode_space, "Unicode whitespace"),
        "not_utf8": (not_utf8, "not valid UTF-8"),
        "illegal_symbol": (illegal_symbol, "illegal symbol </s>"),
        "bad_dur": (bad_dur, "utt2dur:1: bad line"),
        "bad_frames": (bad_frames, "utt2num_frames:1: bad line"),
        "feats_missing": (feats_missing, "between utt2spk and feats.scp"),
        "segments_bad_rec": (segments_bad_rec, "recording ids differ between segments and wav.scp"),
        "segments_end_before_start": (segments_end_before_start, "segments:1: bad line"),
        "tilde": (tilde, "tilde"),
        "bad_frame_shift": (bad_frame_shift, "frame_shift"),
        "no_utt2spk": (no_utt2spk, "no such file utt2spk"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_validation_reports_each_problem(good_dir, tmp_path, case):
    mutate, expected = _mutations()[case]
    d = tmp_path / case
    shutil.copytree(good_dir, d)
    mutate(d)
    problems = kaldi.validate_data_dir(d, no_feats=False)
    assert any(expected in p for p in problems), problems


def test_validation_switches(good_dir):
    (good_dir / "text").unlink()
    assert any("no such file text" in p for p in kaldi.validate_data_dir(good_dir))
    assert kaldi.validate_data_dir(good_dir, no_text=True) == []
    (good_dir / "feats.scp").unlink()
    assert any("feats.scp" in p for p in kaldi.validate_data_dir(good_dir, no_feats=False, no_text=True))


def test_read_tables_name_problems(tmp_path):
    (tmp_path / "wav.scp").write_text("a /x.wav\na /y.wav\n")
    with pytest.raises(W2VError, match="duplicate key 'a'"):
        kaldi.read_data_dir(tmp_path)
    (tmp_path / "wav.scp").write_text("r /x.wav\n")
    (tmp_path / "segments").write_text("u1 r 1.0 0.5\n")
    with pytest.raises(W2VError, match="bad segment"):
        kaldi.read_data_dir(tmp_path)
    (tmp_path / "segments").write_text("u1 other 0 1\n")
    with pytest.raises(W2VError, match="not in wav.scp"):
        kaldi.read_data_dir(tmp_path)
    with pytest.raises(W2VError, match="not a Kaldi data dir"):
        kaldi.read_data_dir(tmp_path / "nothing")


def test_warnings_single_speaker_and_unprefixed_ids(tmp_path):
    d = tmp_path / "d"
    kaldi.write_data_dir(d, [Utterance("a1", "/x.wav", speaker="zed"), Utterance("a2", "/y.wav", speaker="zed")])
    # Sorted by speaker and by id alike, so valid, but Kaldi would warn.
    assert kaldi.validate_data_dir(d, no_text=True) == []
    warnings = kaldi.data_dir_warnings(d)
    assert any("only one speaker" in w for w in warnings)
    assert any("2 utterance ids do not start with their speaker" in w for w in warnings)


def test_subset_data_dir_keeps_only_the_chosen_utterances(tmp_path, fsdd):
    from w2vtools.formats.kaldi import read_kaldi_table, read_frame_shift, subset_data_dir, write_kaldi_table

    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    wavs = sorted(fsdd.glob("*_theo_1*.wav"))[:4] + sorted(fsdd.glob("*_george_1*.wav"))[:4]
    uids = {f"{p.stem.split('_')[1]}-{p.stem}": p for p in wavs}
    write_kaldi_table(src / "wav.scp", {u: str(p) for u, p in uids.items()})
    write_kaldi_table(src / "utt2spk", {u: u.split("-")[0] for u in uids})
    write_kaldi_table(src / "text", {u: "DIGIT" for u in uids})
    (src / "frame_shift").write_text("0.02\n")
    keep = [u for u in uids if u.startswith("theo")][:2] + [u for u in uids if u.startswith("george")][:1]
    assert subset_data_dir(src, dest, keep) == 3
    assert sorted(read_kaldi_table(dest / "wav.scp")) == sorted(keep)
    assert sorted(read_kaldi_table(dest / "text")) == sorted(keep)
    spk2utt = read_kaldi_table(dest / "spk2utt")
    assert {s: v.split() for s, v in spk2utt.items()} == {
        "george": [u for u in sorted(keep) if u.startswith("george")],
        "theo": [u for u in sorted(keep) if u.startswith("theo")],
    }
    assert read_frame_shift(dest / "frame_shift") == 0.02
    assert not (dest / "segments").exists()
