"""Issue 15, pipes: a ``cmd |`` source's output is checked exactly as the same bytes in a file.

A truncated WAV arriving through ``cat truncated.wav |`` used to be accepted as
shorter audio while the same file was refused. WAVs streamed by SoX or ffmpeg
(declared sizes 0x7FFFF000, 0xFFFFFFFF...: "read to the end", as Kaldi's reader
takes them) are still accepted.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from reliability_helpers import wav_scp

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
