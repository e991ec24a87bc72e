"""Kaldi data directories: ``wav.scp``, ``segments``, ``text``, ``utt2spk`` and friends.

Tables are ``key value`` lines, C-locale sorted by key, keys unique. ``wav.scp``
values are paths or commands ending in ``|``; with ``segments`` the utterances are
``utt rec start end`` windows of the recordings.

Example:
    >>> utts = read_data_dir("data/train")   # doctest: +SKIP
    >>> utts[0].uid, utts[0].speaker
    ('jackson-0_jackson_5', 'jackson')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, read_table
from w2vtools.formats.utterance import Utterance


def c_sorted(keys: Iterable[str]) -> list[str]:
    """Sort as ``LC_ALL=C sort`` does (byte order of UTF-8)."""
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def read_kaldi_table(path: str | os.PathLike, *, what: str = "value") -> dict[str, str]:
    """Read ``key value`` lines into a dict; duplicate keys are a W2VError."""
    table: dict[str, str] = {}
    for fields in read_table(path, min_fields=1):
        key = fields[0]
        value = fields[1] if len(fields) > 1 else ""
        if key in table:
            raise W2VError(f"{path}: duplicate key {key!r}")
        table[key] = value
    return table


def write_kaldi_table(path: str | os.PathLike, table: Mapping[str, object]) -> None:
    """Write ``key value`` lines, C-sorted, atomically."""
    with atomic_write(path) as f:
        for key in c_sorted(table):
            value = table[key]
            if isinstance(value, (list, tuple)):
                value = " ".join(map(str, value))
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")


def read_segments(path: str | os.PathLike) -> dict[str, tuple[str, float, float]]:
    """``utt rec start end`` -> {utt: (rec, start, end)}; end -1 means the end of the recording."""
    segs: dict[str, tuple[str, float, float]] = {}
    for lineno, fields in enumerate(read_table(path, min_fields=4, max_split=4), 1):
        if len(fields) != 4:
            raise W2VError(f"{path}: line {lineno}: expected 'utt rec start end'")
        utt, rec, start, end = fields
        try:
            s, e = float(start), float(end)
        except ValueError:
            raise W2VError(f"{path}: {utt}: start/end are not numbers: {start} {end}") from None
        if s < 0 or (e != -1 and e <= s):
            raise W2VError(f"{path}: {utt}: bad segment {start}-{end}")
        if utt in segs:
            raise W2VError(f"{path}: duplicate key {utt!r}")
        segs[utt] = (rec, s, e)
    return segs


def read_data_dir(data_dir: str | os.PathLike) -> list[Utterance]:
    """The utterances of a Kaldi data dir (with segments, speakers and text when present), C-sorted."""
    d = Path(data_dir)
    if not (d / "wav.scp").is_file():
        raise W2VError(f"{d}: not a Kaldi data dir (no wav.scp)")
    wavs = read_kaldi_table(d / "wav.scp")
    spk = read_kaldi_table(d / "utt2spk") if (d / "utt2spk").is_file() else {}
    text = read_kaldi_table(d / "text") if (d / "text").is_file() else {}
    utts: list[Utterance] = []
    if (d / "segments").is_file():
        for uid, (rec, s, e) in read_segments(d / "segments").items():
            if rec not in wavs:
                raise W2VError(f"{d / 'segments'}: {uid}: recording {rec!r} is not in wav.scp")
            utts.append(
                Utterance(uid, wavs[rec], start=s, end=None if e == -1 else e, speaker=spk.get(uid), text=text.get(uid))
            )
    else:
        for uid, src in wavs.items():
            utts.append(Utterance(uid, src, speaker=spk.get(uid), text=text.get(uid)))
    return sorted(utts, key=lambda u: u.uid.encode("utf-8"))


def read_wav_scp(path: str | os.PathLike) -> list[Utterance]:
    """The utterances of a bare ``wav.scp`` file."""
    return [Utterance(uid, src) for uid, src in read_kaldi_table(path).items()]
