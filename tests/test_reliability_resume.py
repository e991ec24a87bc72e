"""Issue 15, resume with changed inputs: resume checks its inputs, not just the ids.

An interrupted featurize run records, per utterance, the identity of its input
(path, size and mtime_ns of the file, or the ``cmd |`` line, with the segment
bounds) and the full settings. A rerun recomputes the utterances whose input
changed, and refuses to resume partial state made with other settings. Before,
the same ids pointed at different audio kept their stale features and the run
exited 0.
"""

from __future__ import annotations

import shutil

import h5py
import kaldiio
import numpy as np
import pytest
from reliability_helpers import wav_scp

from w2vtools.errors import W2VError
from w2vtools.featurize import featurize
from w2vtools.formats import features as features_module


def _interrupted(monkeypatch, scp, spec, **kw):
    """A featurize run killed just before its commit: every utterance is in the partial state."""

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(features_module.HDF5Writer, "commit", killed)
        m.setattr(features_module.KaldiWriter, "commit", killed)
        with pytest.raises(KeyboardInterrupt):
            featurize(str(scp), spec, model="fbank", flush_every=0, **kw)


def _read(spec):
    if spec.endswith(".h5"):
        with h5py.File(spec) as f:
            return {k: f[k][()] for k in f}
    return {k: np.asarray(v) for k, v in kaldiio.load_scp(spec.split(",")[-1]).items()}


@pytest.mark.parametrize("kind", ["h5", "ark"])
def test_same_ids_pointed_at_other_audio_are_recomputed(tmp_path, fsdd, monkeypatch, kind):
    files = sorted(fsdd.glob("7_lucas_*.wav"))[:4]
    others = sorted(fsdd.glob("2_george_*.wav"))[:2]
    audio = tmp_path / "audio"
    audio.mkdir()
    for f in files:
        shutil.copy(f, audio / f.name)
    entries = {f"u{i}": audio / f.name for i, f in enumerate(files)}
    scp = wav_scp(tmp_path / "wav.scp", entries)
    spec = str(tmp_path / "f.h5") if kind == "h5" else f"ark,scp:{tmp_path}/f.ark,{tmp_path}/f.scp"
    _interrupted(monkeypatch, scp, spec)

    shutil.copy(others[0], entries["u1"])  # the same file name, other audio
    entries["u2"] = others[1]  # the same id, another file
    wav_scp(scp, entries)
    summary = featurize(str(scp), spec, model="fbank", flush_every=0)
    # h5 drops just the changed ones; an ark is cut before the first changed entry (in written order)
    assert summary.utterances + summary.skipped == 4
    assert summary.utterances == 2 if kind == "h5" else summary.utterances >= 2

    fresh_spec = str(tmp_path / "fresh.h5")
    featurize(str(scp), fresh_spec, model="fbank")
    got, fresh = _read(spec), _read(fresh_spec)
    assert sorted(got) == sorted(fresh) == ["u0", "u1", "u2", "u3"]
    for uid in fresh:
        np.testing.assert_array_equal(got[uid], fresh[uid])


def test_changed_settings_refuse_to_resume(tmp_path, fsdd, monkeypatch):
    files = sorted(fsdd.glob("7_lucas_*.wav"))[:2]
    scp = wav_scp(tmp_path / "wav.scp", {f.stem: f for f in files})
    _interrupted(monkeypatch, scp, str(tmp_path / "f.h5"), chunk_seconds=60.0)
    with pytest.raises(W2VError, match=r"f\.h5\.partial: left by an interrupted run with different settings "
                                       r"\(chunk_seconds: 60\.0 -> 0\.5\)"):
        featurize(str(scp), str(tmp_path / "f.h5"), model="fbank", chunk_seconds=0.5)
    # the same settings resume
    assert featurize(str(scp), str(tmp_path / "f.h5"), model="fbank", chunk_seconds=60.0).skipped == 2


def test_identity_is_not_stored_in_the_output(tmp_path, fsdd, monkeypatch):
    f = sorted(fsdd.glob("7_lucas_*.wav"))[0]
    scp = wav_scp(tmp_path / "wav.scp", {"u": f})
    _interrupted(monkeypatch, scp, str(tmp_path / "f.h5"))
    with h5py.File(next((tmp_path / "f.h5.partial").glob("seg-*.h5"))) as seg:
        assert seg["u"].attrs["w2v_input"]
    featurize(str(scp), str(tmp_path / "f.h5"), model="fbank")
    with h5py.File(tmp_path / "f.h5") as out:
        assert dict(out["u"].attrs) == {}
