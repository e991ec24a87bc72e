"""The feature-file interface: HDF5 / Kaldi ark,scp / h5context writers and readers, resume, merge."""

from __future__ import annotations

import os

import h5py
import kaldiio
import numpy as np
import pytest

from w2vtools.errors import W2VError
from w2vtools.formats.features import (
    escape_key,
    merge_features,
    open_feature_writer,
    open_features,
    parse_spec,
    unescape_key,
)

ATTRS = {"frame_shift": 0.02, "sample_rate": 16000, "model": "m.pt", "model_sha256": "ab", "output": "layer", "layer": "6"}


def _feats(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {f"utt{i}": rng.standard_normal((3 + 2 * i, 4)).astype(np.float32) for i in range(n)}


def test_escape_roundtrip_and_rule():
    for uid in ["a", "spk/utt", "50%", "a%2Fb", "x/y/z%"]:
        assert unescape_key(escape_key(uid)) == uid
        assert "/" not in escape_key(uid)
    assert escape_key("spk/utt") == "spk%2Futt"
    assert escape_key("a%2Fb") == "a%252Fb"  # a literal "%2F" in an id survives


def test_parse_spec_forms():
    assert parse_spec("x.h5").kind == "h5"
    s = parse_spec("ark,scp:a.ark,b.scp")
    assert (s.kind, s.path, s.scp) == ("ark", "a.ark", "b.scp")
    assert parse_spec("ark:-").path == "-"
    assert parse_spec("scp:f.scp").kind == "scp"
    assert parse_spec("ark:f.ark").kind == "ark"
    with pytest.raises(W2VError, match="unknown features output"):
        parse_spec("feats.txt")
    with pytest.raises(W2VError, match="text archives"):
        parse_spec("ark,t:f.ark")


def test_hdf5_roundtrip_readable_like_espnet_and_lhotse(tmp_path):
    feats = _feats()
    feats["spk/odd%id"] = np.ones((2, 4), np.float32)
    out = tmp_path / "f.h5"
    with open_feature_writer(str(out), ATTRS) as w:
        for uid, x in feats.items():
            w.write(uid, x)
    assert not (tmp_path / "f.h5.partial").exists()
    # ESPnet's hdf5 loader and lhotse's numpy_hdf5 storage: h5py.File(path)[key][()]
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {escape_key(k) for k in feats}
        for uid, x in feats.items():
            np.testing.assert_array_equal(f[escape_key(uid)][()], x)
            assert f[escape_key(uid)].dtype == np.float32
        assert f.attrs["frame_shift"] == pytest.approx(0.02)
        assert f.attrs["layer"] == "6" and f.attrs["sample_rate"] == 16000
    with open_features(str(out)) as r:
        assert sorted(r.keys()) == sorted(feats)
        np.testing.assert_array_equal(r["spk/odd%id"], feats["spk/odd%id"])


def test_hdf5_float16(tmp_path):
    x = _feats(1)["utt0"]
    with open_feature_writer(str(tmp_path / "h.h5"), ATTRS, dtype="float16") as w:
        w.write("utt0", x)
    with h5py.File(tmp_path / "h.h5") as f:
        assert f["utt0"].dtype == np.float16
        np.testing.assert_allclose(f["utt0"][()], x, atol=2e-3)


def test_hdf5_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    feats = _feats(6)
    ref = tmp_path / "ref.h5"
    with open_feature_writer(str(ref), ATTRS) as w:
        for uid, x in feats.items():
            w.write(uid, x)
    out = tmp_path / "out.h5"
    uids = list(feats)
    with pytest.raises(RuntimeError):
        with open_feature_writer(str(out), ATTRS, flush_every=0) as w:
            for uid in uids[:3]:
                w.write(uid, feats[uid])
            raise RuntimeError("crash")
    assert not out.exists(), "an interrupted run must not leave a complete-looking file"
    # a torn segment (crash while writing it) is ignored
    (tmp_path / "out.h5.partial" / ".seg-00099.tmp").write_bytes(b"\x89HDF garbage")
    w = open_feature_writer(str(out), ATTRS)
    assert w.done == set(uids[:3])
    with w:
        for uid in uids:
            if uid not in w.done:
                w.write(uid, feats[uid])
    _assert_same_h5(ref, out)


def _assert_same_h5(a, b):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert list(fa.keys()) == list(fb.keys())
        assert dict(fa.attrs) == dict(fb.attrs)
        for k in fa:
            np.testing.assert_array_equal(fa[k][()], fb[k][()])


def test_hdf5_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "o.h5"
    with pytest.raises(RuntimeError):
        with open_feature_writer(str(out), ATTRS, flush_every=0) as w:
            w.write("a", np.zeros((1, 2), np.float32))
            raise RuntimeError
    with pytest.raises(W2VError, match="different settings.*layer"):
        open_feature_writer(str(out), {**ATTRS, "layer": "3"})
    fresh = open_feature_writer(str(out), {**ATTRS, "layer": "3"}, resume=False)
    assert fresh.done == set()


def test_kaldi_ark_scp_readable_by_kaldiio(tmp_path):
    feats = _feats()
    ark, scp = tmp_path / "f.ark", tmp_path / "f.scp"
    with open_feature_writer(f"ark,scp:{ark},{scp}", ATTRS) as w:
        for uid in reversed(list(feats)):
            w.write(uid, feats[uid])
    table = kaldiio.load_scp(str(scp))
    assert list(table.keys()) == sorted(feats)  # scp C-sorted
    for uid, x in feats.items():
        np.testing.assert_array_equal(table[uid], x)
    assert dict(kaldiio.load_ark(str(ark))).keys() == feats.keys()
    assert not list(tmp_path.glob("*.partial*"))


def test_kaldi_ark_resume_truncates_torn_tail(tmp_path):
    feats = _feats(5)
    uids = list(feats)
    ref_ark, ref_scp = tmp_path / "r.ark", tmp_path / "r.scp"
    with open_feature_writer(f"ark,scp:{ref_ark},{ref_scp}", ATTRS) as w:
        for uid in uids:
            w.write(uid, feats[uid])
    ark, scp = tmp_path / "f.ark", tmp_path / "f.scp"
    with pytest.raises(RuntimeError):
        with open_feature_writer(f"ark,scp:{ark},{scp}", ATTRS, flush_every=0) as w:
            for uid in uids[:2]:
                w.write(uid, feats[uid])
            raise RuntimeError
    assert not ark.exists() and not scp.exists()
    with open(str(ark) + ".partial", "ab") as f:
        f.write(b"utt9 \0BFM half a matrix")  # written but never indexed: a crash mid-write
    w = open_feature_writer(f"ark,scp:{ark},{scp}", ATTRS)
    assert w.done == set(uids[:2])
    with w:
        for uid in uids[2:]:
            w.write(uid, feats[uid])
    assert ark.read_bytes() == ref_ark.read_bytes()
    assert scp.read_text() == ref_scp.read_text().replace(str(ref_ark), str(ark))


def test_h5context_is_fairseq_wav2letter_layout(tmp_path):
    feats = _feats(2)
    with open_feature_writer(str(tmp_path / "ctx"), {"frame_shift": 0.01}, format="h5context") as w:
        for uid, x in feats.items():
            w.write(uid, x)
    path = tmp_path / "ctx" / "utt1.h5context"
    with h5py.File(path) as f:
        # fairseq wav2vec_featurize.py: features = data.T.flatten() of (C, T), info = [100, T, C]
        info = f["info"][()]
        assert list(info) == [100, 5, 4]
        np.testing.assert_array_equal(f["features"][()].reshape(int(info[1]), int(info[2])), feats["utt1"])
    r = open_features(str(tmp_path / "ctx"))
    np.testing.assert_array_equal(r["utt0"], feats["utt0"])


def test_merge_hdf5_shards_and_duplicates(tmp_path):
    feats = _feats(6)
    uids = list(feats)
    for k, part in enumerate([uids[:3], uids[3:]], 1):
        with open_feature_writer(str(tmp_path / f"s.{k}.h5"), ATTRS) as w:
            for uid in part:
                w.write(uid, feats[uid])
    with open_feature_writer(str(tmp_path / "all.h5"), ATTRS) as w:
        for uid in uids:
            w.write(uid, feats[uid])
    assert merge_features([str(tmp_path / "s.1.h5"), str(tmp_path / "s.2.h5")], str(tmp_path / "m.h5")) == 6
    _assert_same_h5(tmp_path / "all.h5", tmp_path / "m.h5")
    with pytest.raises(W2VError, match="also in"):
        merge_features([str(tmp_path / "s.1.h5"), str(tmp_path / "s.1.h5")], str(tmp_path / "d.h5"))


def test_merge_scp_shards(tmp_path):
    feats = _feats(4)
    uids = list(feats)
    for k, part in enumerate([uids[:2], uids[2:]], 1):
        with open_feature_writer(f"ark,scp:{tmp_path}/f.{k}.ark,{tmp_path}/f.{k}.scp", ATTRS) as w:
            for uid in part:
                w.write(uid, feats[uid])
    merge_features([f"{tmp_path}/f.1.scp", f"{tmp_path}/f.2.scp"], f"{tmp_path}/all.scp")
    table = kaldiio.load_scp(f"{tmp_path}/all.scp")
    assert sorted(table) == sorted(uids)
    np.testing.assert_array_equal(table["utt3"], feats["utt3"])
    # any readable spec into any writable one: scp -> HDF5
    merge_features([f"{tmp_path}/all.scp"], str(tmp_path / "x.h5"))
    with h5py.File(tmp_path / "x.h5") as f:
        np.testing.assert_array_equal(f["utt2"][()], feats["utt2"])


def test_writer_rejects_bad_input(tmp_path):
    w = open_feature_writer(f"ark,scp:{tmp_path}/a.ark,{tmp_path}/a.scp", ATTRS)
    with pytest.raises(W2VError, match="whitespace"):
        w.write("a b", np.zeros((1, 1), np.float32))
    with pytest.raises(W2VError, match="frames, dim"):
        w.write("a", np.zeros(3, np.float32))
    with pytest.raises(W2VError, match="float16 needs an HDF5"):
        open_feature_writer("ark:-", ATTRS, dtype="float16")


def test_reader_on_unfinished_output_says_so(tmp_path):
    out = tmp_path / "o.h5"
    with pytest.raises(RuntimeError):
        with open_feature_writer(str(out), ATTRS) as w:
            w.write("a", np.zeros((1, 2), np.float32))
            raise RuntimeError
    with pytest.raises(W2VError, match="has not finished"):
        open_features(str(out))
    assert os.path.isdir(str(out) + ".partial")
