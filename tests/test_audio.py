"""The one audio loader: formats, channels, widths, resampling, windows, commands, bad files."""

from __future__ import annotations

import math
import re
import shlex

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from w2vtools.audio import audio_info, is_command, load_audio, num_resampled, resample
from w2vtools.errors import W2VError


def _tone(n: int, sr: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n) / sr
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


@pytest.fixture
def tone():
    return _tone(8000, 16000)


@pytest.mark.parametrize(
    "name, fmt, subtype",
    [
        ("pcm16.wav", "WAV", "PCM_16"),
        ("pcm24.wav", "WAV", "PCM_24"),
        ("pcm32.wav", "WAV", "PCM_32"),
        ("u8.wav", "WAV", "PCM_U8"),
        ("float.wav", "WAV", "FLOAT"),
        ("double.wav", "WAV", "DOUBLE"),
        ("audio.flac", "FLAC", "PCM_16"),
        ("audio.ogg", "OGG", "VORBIS"),
        ("sphere.sph", "NIST", "PCM_16"),
        # A NIST SPHERE file named .wav (as in TIMIT/WSJ copies): recognised by content.
        ("sphere_named.wav", "NIST", "PCM_16"),
    ],
)
def test_formats_and_widths_load_as_mono_float32(tmp_path, tone, name, fmt, subtype):
    path = tmp_path / name
    sf.write(path, tone, 16000, format=fmt, subtype=subtype)
    info = audio_info(str(path))
    assert info.sample_rate == 16000
    assert info.num_frames == len(tone)
    assert info.format == fmt
    wav = load_audio(str(path))
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) == len(tone)
    # Lossy/low-width formats differ by quantisation only.
    tol = {"PCM_U8": 1e-2, "VORBIS": 5e-2}.get(subtype, 1e-4)
    assert np.max(np.abs(wav - tone)) < tol


def test_multichannel_is_averaged_to_mono(tmp_path, tone):
    left, right = tone, -0.5 * tone
    path = tmp_path / "stereo24.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="PCM_24")
    assert audio_info(str(path)).channels == 2
    wav = load_audio(str(path))
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-5)

    path6 = tmp_path / "six.flac"
    chans = np.stack([tone * (i + 1) / 8 for i in range(6)], axis=1)
    sf.write(path6, chans, 16000)
    np.testing.assert_allclose(load_audio(str(path6)), chans.mean(axis=1), atol=1e-4)


def test_resampling_matches_torchaudio_and_predicted_length(tmp_path, fsdd):
    src = fsdd / "3_theo_7.wav"
    data, sr = sf.read(src, dtype="float32")
    assert sr == 8000
    wav = load_audio(str(src), sample_rate=16000)
    expected = torchaudio.functional.resample(torch.from_numpy(data)[None], 8000, 16000)[0].numpy()
    assert len(wav) == len(expected) == num_resampled(len(data), 8000, 16000)
    np.testing.assert_allclose(wav, expected, atol=1e-6)
    # A 22.05 kHz file down to 16 kHz: the length rule holds for odd ratios too.
    for n in (1, 7, 22050, 22051, 123457):
        assert len(resample(np.zeros(n, np.float32), 22050, 16000)) == num_resampled(n, 22050, 16000)


def test_ljspeech_flac_resampled(ljspeech):
    flac = sorted((ljspeech / "wavs").glob("*.flac"))[0]
    info = audio_info(str(flac))
    assert info.sample_rate == 22050 and info.format == "FLAC"
    wav, sr = load_audio(str(flac), sample_rate=16000, return_rate=True)
    assert sr == 16000
    assert len(wav) == num_resampled(info.num_frames, 22050, 16000)
    assert np.isfinite(wav).all() and 0.01 < np.abs(wav).max() <= 1.0


def test_segment_window(tmp_path):
    sr = 8000
    ramp = (np.arange(sr * 2) / (sr * 4)).astype(np.float32)  # distinct value per sample
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, sr, subtype="FLOAT")
    part = load_audio(str(path), start=0.5, end=1.25)
    np.testing.assert_array_equal(part, ramp[4000:10000])
    np.testing.assert_array_equal(load_audio(str(path), start=1.0, end=-1), ramp[8000:])
    np.testing.assert_array_equal(load_audio(str(path), start=1.0, end=None), ramp[8000:])
    with pytest.raises(W2VError, match="outside the audio"):
        load_audio(str(path), start=3.0, end=4.0)
    # Up to 0.5 s past the end is cut to the end (Kaldi's extract-segments), more is an error.
    np.testing.assert_array_equal(load_audio(str(path), start=1.5, end=2.4), ramp[12000:])
    with pytest.raises(W2VError, match="past the end of the audio"):
        load_audio(str(path), start=1.5, end=2.6)


def test_command_source(tmp_path, fsdd):
    src = fsdd / "0_george_0.wav"
    cmd = f"cat {shlex.quote(str(src))} |"
    assert is_command(cmd) and not is_command(str(src))
    np.testing.assert_array_equal(load_audio(cmd), load_audio(str(src)))
    assert audio_info(cmd).num_frames == sf.info(src).frames
    # A pipe that converts (sox-style): a FLAC printed to stdout.
    flac = tmp_path / "x.flac"
    sf.write(flac, sf.read(src, dtype="float32")[0], 8000)
    np.testing.assert_allclose(load_audio(f"cat {shlex.quote(str(flac))} | "), load_audio(str(src)), atol=1e-4)


def test_failing_command_names_command_and_reason():
    with pytest.raises(W2VError, match=r"command 'false \|'.*exited with status 1"):
        load_audio("false |")
    with pytest.raises(W2VError, match="printed no audio"):
        load_audio("true |")
    with pytest.raises(W2VError, match="not readable audio"):
        load_audio("echo hello |")


def _bad_files(tmp_path, fsdd):
    good = (fsdd / "0_george_0.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    (tmp_path / "header_only.wav").write_bytes(good[:44])
    nan = np.zeros(800, np.float32)
    nan[10] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 8000, subtype="FLOAT")
    inf = np.zeros(800, np.float32)
    inf[5] = np.inf
    sf.write(tmp_path / "inf.wav", inf, 8000, subtype="FLOAT")
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 8000)
    flac = tmp_path / "full.flac"
    sf.write(flac, _tone(80000, 16000), 16000)
    (tmp_path / "truncated.flac").write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.wav", "truncated WAV"),
        ("empty.wav", "empty file"),
        ("text.wav", "not readable audio"),
        ("header_only.wav", "truncated WAV"),
        ("nan.wav", "NaN or Inf"),
        ("inf.wav", "NaN or Inf"),
        ("zero.wav", "no samples"),
        ("truncated.flac", "read failed|truncated"),
        ("missing.wav", "no such file"),
    ],
)
def test_bad_files_name_file_and_reason(tmp_path, fsdd, name, reason):
    _bad_files(tmp_path, fsdd)
    path = str(tmp_path / name)
    with pytest.raises(W2VError) as err:
        load_audio(path)
    msg = str(err.value)
    assert msg.startswith(path + ":"), msg
    assert re.search(reason, msg), msg


def test_header_checks_catch_what_headers_can(tmp_path, fsdd):
    _bad_files(tmp_path, fsdd)
    for name in ("truncated.wav", "empty.wav", "text.wav", "zero.wav"):
        with pytest.raises(W2VError, match=name):
            audio_info(str(tmp_path / name))
    with pytest.raises(W2VError, match="directory"):
        audio_info(str(tmp_path))


def test_streamed_wav_with_unknown_size_is_accepted(tmp_path, tone):
    # WAVs written to a pipe carry 0xFFFFFFFF (or 0) as data size; libsndfile reads them.
    path = tmp_path / "streamed.wav"
    sf.write(path, tone, 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    pos = raw.index(b"data")
    raw[pos + 4 : pos + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    assert len(load_audio(str(path))) == len(tone)


@pytest.mark.parametrize("file_rate, rate, segment", [
    (22050, 16000, (None, None)),   # LJ Speech to a wav2vec 2.0 model
    (22050, 16000, (1.3, 9.7)),     # a Kaldi segment of it
    (8000, 16000, (None, None)),    # FSDD, upsampled
    (22050, 8000, (0.5, None)),     # downsampled, open-ended segment
    (22050, 22050, (None, None)),   # no resampling: plain reads
])
def test_windows_of_a_long_recording_equal_the_recording_loaded_whole(tmp_path, ljspeech, fsdd, file_rate,
                                                                      rate, segment):
    """RecordingWindows reads only the slice asked for, and the slice is the whole load's
    (to float32 rounding of the resampling sums), at the edges and anywhere inside."""
    from w2vtools.audio import RecordingWindows, load_utterance
    from w2vtools.formats.utterance import Utterance

    clips = sorted((ljspeech / "wavs").glob("*.flac"))[:5] if file_rate == 22050 else sorted(fsdd.glob("*.wav"))[:40]
    path = tmp_path / "long.flac"
    sf.write(path, np.concatenate([sf.read(c, dtype="float32")[0] for c in clips]), file_rate)
    utt = Utterance("long", str(path), start=segment[0], end=segment[1])
    whole = load_utterance(utt, rate)
    windows = RecordingWindows(utt, rate)
    assert len(windows) == len(whole)
    rng = np.random.default_rng(0)
    spans = [(0, 1000), (len(whole) - 1000, len(whole)), (0, len(whole))]
    spans += [(a, min(len(whole), a + int(rng.integers(1, 200_000)))) for a in rng.integers(0, len(whole), 40)]
    for a, b in spans:
        np.testing.assert_allclose(windows[a:b], whole[a:b], rtol=0, atol=1e-7, err_msg=f"[{a}:{b}]")


def test_a_window_past_a_truncation_is_named_when_read(tmp_path, ljspeech):
    """The header promises more than the file holds: the window that reaches there says so."""
    from w2vtools.audio import RecordingWindows
    from w2vtools.formats.utterance import Utterance

    path = tmp_path / "long.wav"
    sf.write(path, np.concatenate([sf.read(c, dtype="float32")[0] for c in sorted((ljspeech / "wavs").glob("*.flac"))[:3]]),
             22050, subtype="FLOAT")
    windows = RecordingWindows(Utterance("long", str(path)), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut after the header was read
    with pytest.raises(W2VError, match=r"long\.wav: truncated"):
        windows[len(windows) - 1000 :]
