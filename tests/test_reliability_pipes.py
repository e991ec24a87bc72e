"""Issue 15, pipes: a ``cmd |`` source's output is checked exactly as the same bytes in a file.

A truncated WAV arriving through ``cat truncated.wav |`` used to be accepted as
shorter audio while the same file was refused. WAVs streamed by SoX or ffmpeg
(declared sizes 0x7FFFF000, 0xFFFFFFFF...: "read to the end", as Kaldi's reader
takes them) are still accepted.
"""

from __future__ import annotations

import os
import signal
import struct
import time

import numpy as np
import pytest
from reliability_helpers import w2v_popen, wait_for, wav_scp

from w2vtools.audio import load_audio
from w2vtools.errors import W2VError


def _reason(source):
    with pytest.raises(W2VError) as e:
        load_audio(source)
    return str(e.value).split(": ", 1)[1]


@pytest.fixture
def wav(fsdd):
    return sorted(fsdd.glob("9_theo_*.wav"))[0]


def test_truncated_wav_through_a_pipe_is_refused_like_the_file(tmp_path, wav):
    cut = tmp_path / "truncated.wav"
    cut.write_bytes(wav.read_bytes()[:3000])
    in_file, in_pipe = _reason(str(cut)), _reason(f"cat {cut} |")
    assert in_file.startswith("truncated WAV (data chunk declares")
    assert in_pipe == in_file.replace("file holds", "output holds")


@pytest.mark.parametrize("data", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"\x00" * 100, b"RIFF\x24\x00\x00\x00WAVE"])
def test_malformed_bytes_are_refused_in_a_file_and_in_a_pipe(tmp_path, data):
    f = tmp_path / "x.wav"
    f.write_bytes(data)
    with pytest.raises(W2VError):
        load_audio(str(f))
    with pytest.raises(W2VError):
        load_audio(f"cat {f} |")


@pytest.mark.parametrize("size", [0x7FFFF000, 0xFFFFFFFF])
def test_streamed_wav_sizes_are_read_to_the_end(tmp_path, wav, size):
    data = bytearray(wav.read_bytes())
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = struct.pack("<I", size)  # as SoX / ffmpeg write to a pipe
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))
    np.testing.assert_array_equal(load_audio(f"cat {streamed} |"), load_audio(str(wav)))


def test_featurize_names_the_truncated_pipe_and_goes_on(tmp_path, wav, w2v):
    cut = tmp_path / "truncated.wav"
    cut.write_bytes(wav.read_bytes()[:3000])
    scp = wav_scp(tmp_path / "wav.scp", {"good": f"cat {wav} |", "cut": f"cat {cut} |"})
    p = w2v("featurize", scp, tmp_path / "f.h5", "--model", "fbank", check=False)
    assert p.returncode == 3, p.stderr
    assert "cut: skipped: command 'cat" in p.stderr and "truncated WAV" in p.stderr


# --------------------------------------------------------------------------- SIGTERM and cmd | children


def _processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            state = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the child")
@pytest.mark.parametrize("signum, rc, said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_terminates_the_cmd_pipe_children(tmp_path, wav, signum, rc, said):
    # a unique sleep length marks this test's child among other processes
    marker = f"sleep 30.{os.getpid()}{int(time.time() * 1000) % 100000}"
    scp = wav_scp(tmp_path / "wav.scp", {"slow": f"{marker} && cat {wav} |"})
    out = tmp_path / "feats.h5"
    proc = w2v_popen("featurize", scp, out, "--model", "fbank")
    try:
        wait_for(lambda: _processes_with(marker), timeout=60, what="the cmd | child")
        children = _processes_with(marker)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == rc, err
    assert err.strip().splitlines()[-1] == f"w2v featurize: {said}", err
    wait_for(lambda: not any(p in _processes_with(marker) for p in children), timeout=10,
             what="the cmd | child to end")
    assert not out.exists()
    assert not list(tmp_path.glob(".feats.h5*.tmp"))


def test_terminate_commands_stops_a_running_pipeline(tmp_path):
    # the library side, in-process: a pipeline in another thread ends when its group is terminated
    import threading

    from w2vtools import audio
    from w2vtools.audio import _running, terminate_commands

    marker = f"sleep 31.{os.getpid()}"
    result: list = []
    t = threading.Thread(target=lambda: result.append(_reason_or_none(f"{marker} | cat |")))
    t.start()
    wait_for(lambda: bool(_running) and _processes_with(marker), timeout=30, what="the pipeline")
    try:
        terminate_commands()
        t.join(timeout=10)
    finally:
        audio._terminating = False  # this process goes on: later pipelines must run

    assert not t.is_alive()
    assert "exited with status" in result[0]
    wait_for(lambda: not _processes_with(marker), timeout=10, what="sleep to end")


def _reason_or_none(source):
    try:
        load_audio(source)
    except W2VError as e:
        return str(e)
    return None
