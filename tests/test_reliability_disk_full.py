"""Issue 15, disk full: ENOSPC (and other write errors) end a run cleanly.

A full disk during ``featurize`` used to end in a segfault (rc 139) after
hundreds of lines of h5py tracebacks, and a full disk at the final merge left a
hidden ``.OUT.tmp`` behind. Now: one line naming the output and the reason, exit
status 1, the finished utterances kept in ``OUT.partial`` so a rerun with space
resumes, and no hidden temporary file left.

Two ways: a real small tmpfs (needs root and ``mount``; skipped otherwise), and a
simulated ENOSPC in-process (fsync failing) that runs everywhere.
"""

from __future__ import annotations

import errno
import os
import subprocess

import h5py
import numpy as np
import pytest
from reliability_helpers import wav_scp

from w2vtools.errors import W2VError


@pytest.fixture
def lj_scp(tmp_path, ljspeech):
    clips = sorted((ljspeech / "wavs").glob("*.flac"))[:6]  # about 1.3 MB of fbank features
    return wav_scp(tmp_path / "wav.scp", {c.stem: c for c in clips})


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) a tmpfs of that size at tmp_path/disk, remount(size) resizes it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = []

    def mount(size):
        opts = f"remount,size={size}" if mounted else f"size={size}"
        args = ["mount", "-o", opts, str(disk)] if mounted else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(disk)]
        if subprocess.run(args, capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(True)
        return disk

    yield mount
    if mounted:
        subprocess.run(["umount", str(disk)], check=False)


def _errors(stderr):
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def _hidden(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def test_full_disk_while_writing_segments(lj_scp, small_disk, w2v):
    disk = small_disk("600k")  # less than the first utterance
    p = w2v("featurize", lj_scp, disk / "f.h5", "--model", "fbank", check=False)
    assert p.returncode == 1, p.stderr
    assert len(_errors(p.stderr)) == 1 and "No space left on device" in p.stderr, p.stderr
    assert "f.h5" in _errors(p.stderr)[0] and "rerun to resume" in p.stderr
    assert not (disk / "f.h5").exists() and _hidden(disk) == []
    assert not (disk / "f.h5.lock").exists()


def test_full_disk_at_the_final_merge_then_resume(tmp_path, lj_scp, small_disk, w2v):
    w2v("featurize", lj_scp, tmp_path / "ref.h5", "--model", "fbank")
    disk = small_disk("1800k")  # the segments fit, the merged copy does not
    p = w2v("featurize", lj_scp, disk / "f.h5", "--model", "fbank", "--flush-every", "0", check=False)
    assert p.returncode == 1, p.stderr
    assert len(_errors(p.stderr)) == 1 and "No space left on device" in p.stderr, p.stderr
    assert _hidden(disk) == [] and not (disk / "f.h5").exists()
    assert len(list((disk / "f.h5.partial").glob("seg-*.h5"))) == 6
    small_disk("4m")
    p = w2v("featurize", lj_scp, disk / "f.h5", "--model", "fbank", "--flush-every", "0")
    assert "6 already done" in p.stderr
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(disk / "f.h5") as b:
        assert list(a) == list(b) and dict(a.attrs) == dict(b.attrs)
        for k in a:
            np.testing.assert_array_equal(a[k][()], b[k][()])
    assert sorted(os.listdir(disk)) == ["f.h5"]


def _fail_fsync(monkeypatch, when):
    """os.fsync raises ENOSPC for file descriptors whose path satisfies ``when``."""
    real = os.fsync

    def fsync(fd):
        if when(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("where", ["flush", "merge"])
def test_simulated_enospc(tmp_path, lj_scp, monkeypatch, where):
    from w2vtools.featurize import featurize

    out = tmp_path / "f.h5"
    when = (lambda p: p.endswith(".tmp") and ".seg-" in p) if where == "flush" else (lambda p: p.endswith(".f.h5.tmp"))
    with monkeypatch.context() as m:
        _fail_fsync(m, when)
        with pytest.raises(W2VError, match=r"f\.h5: write failed: No space left on device; the finished work is kept"):
            featurize(str(lj_scp), str(out), model="fbank", flush_every=0)
    assert _hidden(tmp_path) == [] and not out.exists()
    done = len(list((tmp_path / "f.h5.partial").glob("seg-*.h5")))
    assert done == (0 if where == "flush" else 6)
    summary = featurize(str(lj_scp), str(out), model="fbank", flush_every=0)
    assert summary.skipped == done and summary.utterances == 6 - done
    assert sorted(os.listdir(tmp_path)) == ["f.h5", "wav.scp"]


def test_atomic_write_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from w2vtools.fileio import atomic_write

    _fail_fsync(monkeypatch, lambda p: True)
    with pytest.raises(W2VError, match=r"hyp\.txt: write failed: No space left on device"):
        with atomic_write(tmp_path / "hyp.txt") as f:
            f.write("u1 HELLO\n")
    assert os.listdir(tmp_path) == []
