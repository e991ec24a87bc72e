"""Issue 15, concurrency: one output, one writer.

Two ``featurize`` runs on the same output used to share ``OUT.partial``: one died
with a raw FileNotFoundError, the other exited 0 with a file missing most
utterances. Now the first holds an exclusive flock on ``OUT.lock`` (holding its
pid) from before anything is written; a second writer fails at once naming the
output and that pid; a lock left by a killed run is taken over (the kernel drops
a flock when its holder dies).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
from reliability_helpers import wait_for, w2v_popen, wav_scp


def _slow_corpus(tmp_path, fsdd, n=30, sleep=6):
    """n FSDD files and, planned last, one `cmd |` source that takes `sleep` seconds: the run holds its lock that long."""
    files = sorted(fsdd.glob("*_theo_*.wav"))[:n]
    entries = {f.stem: f for f in files}
    entries["zz_slow"] = f"sleep {sleep}; cat {files[0]} |"
    return wav_scp(tmp_path / "wav.scp", entries), n + 1


def _lock_pid(lock):
    try:
        return lock.read_text().strip()
    except FileNotFoundError:
        return ""


def test_two_featurize_processes_on_one_output(tmp_path, fsdd, w2v):
    # the first run's last source reads a FIFO that is fed only after the second run returned,
    # so the first holds its lock for certain however slow the machine is
    files = sorted(fsdd.glob("*_theo_*.wav"))[:30]
    fifo = tmp_path / "held.fifo"
    os.mkfifo(fifo)
    entries = {f.stem: f for f in files}
    entries["zz_held"] = f"cat {fifo} |"
    scp, n = wav_scp(tmp_path / "wav.scp", entries), len(files) + 1
    out = tmp_path / "feats.h5"
    lock = tmp_path / "feats.h5.lock"
    first = w2v_popen("featurize", scp, out, "--model", "fbank", "--flush-every", "0")
    try:
        wait_for(lambda: _lock_pid(lock) == str(first.pid), what="the first writer's lock")
        second = w2v("featurize", scp, out, "--model", "fbank", check=False)
        assert first.poll() is None, "the first run must still be running for this test to mean anything"
    finally:
        if first.poll() is None:  # release the first run (it blocks in `cat` until then)
            with open(fifo, "wb") as f:
                f.write(files[0].read_bytes())
        stdout, stderr = first.communicate(timeout=120)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and f"pid {first.pid}" in lines[0], second.stderr
    assert first.returncode == 0, stderr
    assert f"featurize: {n} utterances" in stderr
    with h5py.File(out) as f:
        assert len(f) == n  # the second run took nothing away from the first
    assert not lock.exists() and not (tmp_path / "feats.h5.partial").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lock_of_a_killed_run_is_taken_over(tmp_path, fsdd, w2v):
    scp, n = _slow_corpus(tmp_path, fsdd, sleep=30)
    out = tmp_path / "feats.h5"
    lock = tmp_path / "feats.h5.lock"
    first = w2v_popen("featurize", scp, out, "--model", "fbank", "--flush-every", "0")
    wait_for(lambda: _lock_pid(lock) == str(first.pid), what="the first writer's lock")
    wait_for(lambda: any((tmp_path / "feats.h5.partial").glob("seg-*.h5")), what="a finished segment")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert lock.exists() and _lock_pid(lock) == str(first.pid)  # what SIGKILL leaves
    scp.write_text("\n".join(l for l in scp.read_text().splitlines() if not l.startswith("zz_slow")) + "\n")
    p = w2v("featurize", scp, out, "--model", "fbank")
    assert "already done" in p.stderr
    with h5py.File(out) as f:
        assert len(f) == n - 1
    assert not lock.exists()


def test_decode_and_quantize_refuse_an_output_another_process_writes(tmp_path, shared_data, w2v):
    hyp = tmp_path / "hyp.txt"
    # another process holds hyp.txt's lock as a writer would
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from w2vtools.fileio import exclusive_output\n"
         f"with exclusive_output({str(hyp)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        em = shared_data / "emissions"
        p = w2v("decode", "--emissions", next(em.glob("*.npy")), "--dict", em / "dict.ltr.txt", "-o", hyp, check=False)
        assert p.returncode == 1 and f"pid {holder.pid}" in p.stderr and str(hyp) in p.stderr, p.stderr
        assert not hyp.exists()
        np.save(tmp_path / "cb.npy", np.zeros((2, 80), np.float32))
        p = w2v("quantize", "--codebook", tmp_path / "cb.npy", tmp_path / "f.h5", hyp, check=False)
        assert p.returncode == 1 and f"pid {holder.pid}" in p.stderr, p.stderr
    finally:
        holder.kill()
        holder.wait()


def test_exclusive_output_is_reentrant_and_cleans_up(tmp_path):
    from w2vtools.fileio import exclusive_output

    out = tmp_path / "x.txt"
    with exclusive_output(out, "-", None):
        with exclusive_output(out):  # a command and the writer it opens
            assert (tmp_path / "x.txt.lock").read_text().strip() == str(os.getpid())
        assert (tmp_path / "x.txt.lock").exists()
    assert not (tmp_path / "x.txt.lock").exists()
