"""The one audio loader every command uses.

A *source* is what a manifest, ``wav.scp`` or ``segments`` entry points at:

* a file path: WAV, FLAC, OGG or NIST SPHERE, recognised by content (a SPHERE file
  named ``.wav`` still loads); any PCM width or float; channels averaged to mono;
* a Kaldi ``wav.scp`` command ending in ``|`` (``sox x.flac -t wav - |``): run
  through the shell, its stdout read as audio.

Optionally a time window (Kaldi ``segments``: start/end seconds) and a target
sample rate (resampled with torchaudio's band-limited sinc interpolation).
Bad input raises :class:`~w2vtools.errors.W2VError` naming the source and the reason.

Example:
    >>> wav = load_audio("1_jackson_0.wav", sample_rate=16000)   # doctest: +SKIP
    >>> wav.dtype, wav.ndim
    (dtype('float32'), 1)
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import signal
import struct
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from w2vtools.errors import W2VError
from w2vtools.formats.utterance import Utterance


# As Kaldi's extract-segments: a segment may end this far (seconds) past the end of
# its recording (rounding in hand-made segment files); further is an error.
MAX_SEGMENT_OVERSHOOT = 0.5


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    num_frames: int
    channels: int
    format: str  # soundfile's container name: WAV, FLAC, OGG, NIST, ...

    @property
    def duration(self) -> float:
        return self.num_frames / self.sample_rate


def is_command(source: str) -> bool:
    """True for a Kaldi ``wav.scp`` pipe entry such as ``sox a.flac -t wav - |``."""
    return source.rstrip().endswith("|")


def _describe(source: str) -> str:
    return f"command {source.rstrip()!r}" if is_command(source) else str(source)


#: The ``cmd |`` shells running now. Each runs in a process group of its own, so that
#: :func:`terminate_commands` (the CLI calls it on SIGTERM) stops the whole pipeline
#: (``sox ... | sph2pipe ...``), not only the shell, which would leave its children orphaned.
_running: set[subprocess.Popen] = set()
#: Set once the process is being stopped: a pipeline started in another thread just as the
#: signal came (after terminate_commands looked at _running) stops itself (see _run_command).
_terminating = False


def terminate_commands() -> None:
    """Send SIGTERM to the process group of every ``cmd |`` source still running.

    Safe from a signal handler: it takes no lock (a set copied under the GIL).

    Example:
        >>> terminate_commands()   # nothing running: nothing to do
    """
    global _terminating
    _terminating = True  # first: a pipeline registered after the loop below sees it
    for proc in list(_running):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def _run_command(source: str) -> bytes:
    cmd = source.rstrip()[:-1].strip()
    try:
        # start_new_session: its own process group, terminated as one (see _running)
        proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:  # pragma: no cover - shell missing
        raise W2VError(f"{_describe(source)}: cannot run: {e}") from None
    _running.add(proc)
    try:
        if _terminating:  # the stop signal came between Popen and the line above
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        out, err_bytes = proc.communicate()
    except BaseException:
        # interrupted (SIGTERM, Ctrl-C): the pipeline goes with us
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        _running.discard(proc)
    if proc.returncode != 0:
        err = err_bytes.decode(errors="replace").strip().splitlines()
        raise W2VError(
            f"{_describe(source)}: exited with status {proc.returncode}" + (f": {err[-1]}" if err else "")
        )
    if not out:
        raise W2VError(f"{_describe(source)}: printed no audio")
    return out


#: Chunk sizes that mean "unknown, read to the end" in a WAV written to a pipe, as Kaldi's
#: wave reader accepts them: 0 and 0xFFFFFFFF (ffmpeg and others), 0x7FFFF000 (SoX),
#: 0xFFFFFFFE (seen from an ffmpeg -> SoX pipeline)
STREAMED_SIZES = (0, 0xFFFFFFFF, 0x7FFFF000, 0xFFFFFFFE)


def _wav_truncation(path: str) -> str | None:
    """For a RIFF/WAVE file, compare the data chunk's declared size with the bytes present.

    libsndfile silently shortens a truncated WAV to what is there; Kaldi and fairseq
    would then disagree on its length, so we call it what it is.
    """
    try:
        with open(path, "rb") as f:
            return _wav_stream_truncation(f, os.path.getsize(path))
    except OSError as e:
        return str(e)


def _wav_stream_truncation(f, size: int) -> str | None:
    """:func:`_wav_truncation` of an open binary stream of ``size`` bytes (a file, or a command's output)."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    if struct.unpack("<I", head[4:8])[0] in STREAMED_SIZES:
        return None
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8:
            return "truncated WAV header"
        cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"data":
            if csize in STREAMED_SIZES:
                return None
            have = size - pos - 8
            if have < csize:
                return f"truncated WAV (data chunk declares {csize} bytes, file holds {have})"
            return None
        pos += 8 + csize + (csize & 1)
    return "WAV has no data chunk"


def _open(source: str) -> tuple[sf.SoundFile, str]:
    if is_command(source):
        data = _run_command(source)
        # the same checks as a file: a truncated WAV through a pipe is refused, not read short
        problem = _wav_stream_truncation(io.BytesIO(data), len(data))
        if problem:
            raise W2VError(f"{_describe(source)}: {problem.replace('file holds', 'output holds')}")
        try:
            return sf.SoundFile(io.BytesIO(data)), source
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise W2VError(f"{_describe(source)}: output is not readable audio ({_reason(e)})") from None
    if not os.path.exists(source):
        raise W2VError(f"{source}: no such file")
    if os.path.isdir(source):
        raise W2VError(f"{source}: is a directory, not audio")
    if os.path.getsize(source) == 0:
        raise W2VError(f"{source}: empty file")
    problem = _wav_truncation(source)
    if problem:
        raise W2VError(f"{source}: {problem}")
    try:
        return sf.SoundFile(source), source
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise W2VError(f"{source}: not readable audio ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    msg = str(e)
    # soundfile repeats the path in its messages; keep only libsndfile's reason.
    if ":" in msg:
        msg = msg.split(":")[-1].strip()
    return msg or type(e).__name__


def audio_info(source: str) -> AudioInfo:
    """Header facts of a source without decoding it (a command is run, though)."""
    f, _ = _open(source)
    with f:
        if f.frames <= 0:
            raise W2VError(f"{_describe(source)}: no samples")
        return AudioInfo(f.samplerate, f.frames, f.channels, f.format)


def load_audio(
    source: str,
    *,
    sample_rate: int | None = None,
    start: float | None = None,
    end: float | None = None,
    return_rate: bool = False,
) -> np.ndarray | tuple[np.ndarray, int]:
    """Read ``source`` as mono float32 in [-1, 1], optionally cut and resampled.

    Args:
        source: a path, or a ``wav.scp`` command ending in ``|``.
        sample_rate: resample to this rate; ``None`` keeps the file's own.
        start, end: a window in seconds (Kaldi ``segments``); ``end`` of ``None`` or
            ``-1`` means the end of the file; an end up to 0.5 s past the end of
            the file is cut to it (as Kaldi's ``extract-segments``), further is an error.
        return_rate: also return the sample rate of the returned samples.

    Raises:
        W2VError: unreadable, empty or truncated file; NaN/Inf samples; a window
            outside the file; a failing command.
    """
    f, _ = _open(source)
    with f:
        sr = f.samplerate
        if f.frames <= 0:
            raise W2VError(f"{_describe(source)}: no samples")
        first = 0 if start is None else int(round(start * sr))
        last = f.frames if end is None or end < 0 else int(round(end * sr))
        if first < 0 or first >= f.frames or last <= first:
            raise W2VError(
                f"{_describe(source)}: segment {start}-{end} s is outside the audio (0-{f.frames / sr:.3f} s)"
            )
        if last > f.frames + int(MAX_SEGMENT_OVERSHOOT * sr):
            raise W2VError(
                f"{_describe(source)}: segment ends at {end} s, past the end of the audio ({f.frames / sr:.3f} s)"
            )
        last = min(last, f.frames)
        try:
            if first:
                f.seek(first)
            wav = f.read(last - first, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise W2VError(f"{_describe(source)}: read failed ({_reason(e)})") from None
    if wav.shape[0] == 0:
        raise W2VError(f"{_describe(source)}: no samples")
    if wav.shape[0] < last - first and end is None:
        raise W2VError(f"{_describe(source)}: truncated (header says {last - first} frames, read {wav.shape[0]})")
    wav = _mono_checked(wav, source)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return (wav, sr) if return_rate else wav


def _mono_checked(wav: np.ndarray, source: str) -> np.ndarray:
    """(frames, channels) samples as contiguous mono float32; NaN/Inf samples are an error naming ``source``."""
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if not np.isfinite(wav).all():
        raise W2VError(f"{_describe(source)}: contains NaN or Inf samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


class RecordingWindows:
    """A long recording read window by window: ``len()`` and slices as if it were loaded whole.

    ``windows[a:b]`` equals ``load_utterance(utt, sample_rate)[a:b]`` without holding the
    recording: only ``b - a`` samples (plus a few dozen of the resampling filter's support)
    are read from the file and resampled. Resampling a piece gives the whole recording's
    samples because the piece starts on a multiple of the rate ratio's period (so its
    output samples fall on the whole run's output grid) and reaches past both ends of the
    requested range by more than the sinc filter's width (so no sample in it sees the
    piece's zero padding where the whole run saw audio). tests/test_audio.py checks it.

    Only seekable files: a ``cmd |`` source is read whole (:func:`load_utterance`).

    Raises:
        W2VError: as :func:`load_audio`, for the header on construction and for a
            window's samples (truncated, NaN/Inf) when it is read.

    Example:
        >>> rec = RecordingWindows(Utterance("book", "book.flac"), 16000)   # doctest: +SKIP
        >>> len(rec), rec[160000:480000].shape          # an hour, and 20 s of it
        (57600000, (320000,))
    """

    def __init__(self, utt: Utterance, sample_rate: int):
        self.source = utt.source
        f, _ = _open(utt.source)
        with f:
            if f.frames <= 0:
                raise W2VError(f"{utt.source}: no samples")
            self.file_rate = f.samplerate
            first = 0 if utt.start is None else int(round(utt.start * f.samplerate))
            last = f.frames if utt.end is None or utt.end < 0 else min(f.frames, int(round(utt.end * f.samplerate)))
        if first < 0 or first >= f.frames or last <= first:
            raise W2VError(f"{utt.source}: segment {utt.start}-{utt.end} s is outside the audio")
        self.first, self.frames = first, last - first
        self.sample_rate = int(sample_rate)
        g = math.gcd(self.file_rate, self.sample_rate)
        self._orig, self._new = self.file_rate // g, self.sample_rate // g
        # torchaudio's kernel reaches ceil(6 * orig / (0.99 * min(orig, new))) input samples
        # each side (lowpass_filter_width 6, rolloff 0.99, its defaults); then one period more.
        width = math.ceil(6 * self._orig / (0.99 * min(self._orig, self._new))) + self._orig
        self._pad = -(-width // self._orig) * self._orig
        self._length = num_resampled(self.frames, self.file_rate, self.sample_rate)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, window: slice) -> np.ndarray:
        a, b, step = window.indices(self._length)
        if step != 1:
            raise ValueError("RecordingWindows takes contiguous slices only")
        if b <= a:
            return np.zeros(0, np.float32)
        if self._orig == self._new:
            return self._read(a, b)
        s0 = max(0, (a // self._new) * self._orig - self._pad)
        s1 = min(self.frames, (b // self._new + 1) * self._orig + self._pad)
        piece = resample(self._read(s0, s1), self.file_rate, self.sample_rate)
        j0 = s0 // self._orig * self._new  # global index of the piece's first output sample
        return np.ascontiguousarray(piece[a - j0 : b - j0])

    def _read(self, s0: int, s1: int) -> np.ndarray:
        """Samples ``[s0, s1)`` of the segment at the file's rate, mono float32, checked."""
        f, _ = _open(self.source)
        try:
            with f:
                f.seek(self.first + s0)
                wav = f.read(s1 - s0, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise W2VError(f"{self.source}: read failed ({_reason(e)})") from None
        if wav.shape[0] < s1 - s0:
            raise W2VError(f"{self.source}: truncated (read {wav.shape[0]} of {s1 - s0} frames at {self.first + s0})")
        return _mono_checked(wav, self.source)


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int):
    import torchaudio

    # One kernel per rate pair, built once per process (Resample caches it).
    return torchaudio.transforms.Resample(orig, new)


def resample(wav: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio), float32 in and out."""
    if orig_rate == new_rate:
        return wav
    import torch

    with torch.no_grad():
        out = _resampler(int(orig_rate), int(new_rate))(torch.from_numpy(wav)[None])[0]
    return out.numpy().astype(np.float32, copy=False)


def num_resampled(num_frames: int, orig_rate: int, new_rate: int) -> int:
    """Length after :func:`resample`: ceil(n * new / orig), as torchaudio computes it."""
    if orig_rate == new_rate:
        return num_frames
    import math

    g = math.gcd(orig_rate, new_rate)
    o, n = orig_rate // g, new_rate // g
    return -(-n * num_frames // o)


def load_utterance(utt: Utterance, sample_rate: int | None = None) -> np.ndarray:
    """An utterance's audio (its source, cut to its segment) as mono float32.

    Example:
        >>> load_utterance(Utterance("u1", "a.wav", start=0.5, end=1.0), 16000).shape   # doctest: +SKIP
        (8000,)
    """
    return load_audio(utt.source, sample_rate=sample_rate, start=utt.start, end=utt.end)
