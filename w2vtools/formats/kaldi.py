"""Kaldi data directories: ``wav.scp``, ``segments``, ``text``, ``utt2spk`` and friends.

Tables are ``key value`` lines, C-locale sorted by key, keys unique. ``wav.scp``
values are paths or commands ending in ``|``; with ``segments`` the utterances are
``utt rec start end`` windows of the recordings.

Files handled here (one line each, as Kaldi's ``utils/`` scripts write them):

==================  ============================================================
``wav.scp``         ``rec path`` or ``rec cmd ... |``
``segments``        ``utt rec start end`` (seconds; end -1 = end of recording)
``text``            ``utt word word ...``
``utt2spk``         ``utt spk`` (speaker ids are prefixes of utterance ids)
``spk2utt``         ``spk utt1 utt2 ...``
``utt2dur``         ``utt seconds``
``utt2num_frames``  ``utt frames`` (feature frames)
``feats.scp``       ``utt feats.ark:offset``
``frame_shift``     one number: seconds per feature frame
==================  ============================================================

:func:`validate_data_dir` performs the checks of Kaldi's ``utils/validate_data_dir.sh``
and returns the problems it would report.

Example:
    >>> utts = read_data_dir("data/train")   # doctest: +SKIP
    >>> utts[0].uid, utts[0].speaker
    ('jackson-0_jackson_5', 'jackson')
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, open_input, read_table
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


def kaldi_uid(uid: str, speaker: str | None) -> str:
    """The Kaldi utterance id: ``uid``, prefixed ``<speaker>-`` unless it already starts with the speaker.

    Kaldi wants utterances sorted by speaker as well as by id, which holds when
    speaker ids are prefixes of utterance ids (``utils/validate_data_dir.sh``).

    Example:
        >>> kaldi_uid("0_jackson_5", "jackson")
        'jackson-0_jackson_5'
        >>> kaldi_uid("103-1240-0000", "103")
        '103-1240-0000'
    """
    if not speaker or uid.startswith(speaker):
        return uid
    return f"{speaker}-{uid}"


def spk2utt_from_utt2spk(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """``{spk: [utts, C-sorted]}`` as ``utils/utt2spk_to_spk2utt.pl`` builds it."""
    out: dict[str, list[str]] = {}
    for utt in c_sorted(utt2spk):
        out.setdefault(utt2spk[utt], []).append(utt)
    return out


def format_seconds(seconds: float) -> str:
    """Seconds as Kaldi prints them: no exponent, no trailing zeros (``1.5``, ``0.0125``)."""
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def read_utt2dur(path: str | os.PathLike) -> dict[str, float]:
    """``utt seconds`` lines -> {utt: seconds}."""
    out: dict[str, float] = {}
    for key, value in read_kaldi_table(path).items():
        try:
            out[key] = float(value)
        except ValueError:
            raise W2VError(f"{path}: {key}: duration is not a number: {value!r}") from None
    return out


def read_utt2num_frames(path: str | os.PathLike) -> dict[str, int]:
    """``utt frames`` lines -> {utt: frames}."""
    out: dict[str, int] = {}
    for key, value in read_kaldi_table(path).items():
        try:
            out[key] = int(value)
        except ValueError:
            raise W2VError(f"{path}: {key}: frame count is not an integer: {value!r}") from None
    return out


def read_frame_shift(path: str | os.PathLike) -> float:
    """The single number in a ``frame_shift`` file (seconds per feature frame, e.g. ``0.02``)."""
    with open_input(path) as f:
        text = f.read().strip()
    try:
        value = float(text)
    except ValueError:
        raise W2VError(f"{path}: expected one number (seconds), got {text[:40]!r}") from None
    if not value > 0:
        raise W2VError(f"{path}: frame shift must be positive, got {value}")
    return value


def write_frame_shift(path: str | os.PathLike, seconds: float) -> None:
    """Write a ``frame_shift`` file (one line, seconds)."""
    with atomic_write(path) as f:
        f.write(format_seconds(seconds) + "\n")


def write_data_dir(
    data_dir: str | os.PathLike,
    utts: Iterable[Utterance],
    *,
    durations: Mapping[str, float] | None = None,
    recording_seconds: Mapping[str, float] | None = None,
) -> None:
    """Write a Kaldi data dir for ``utts``: ``wav.scp``, ``utt2spk``, ``spk2utt``, and ``text``,
    ``segments``, ``utt2dur`` when known.

    The utterance ids are used as given (make speakers their prefixes first, see
    :func:`kaldi_uid`). An utterance without a speaker is its own speaker, as
    Kaldi's recipes do when speakers are unknown. Utterances with a time window
    get a ``segments`` line; a recording is named after the first utterance (in C
    order) cut from it, so reruns give the same ids. A window without an end needs
    the length of its recording, ``recording_seconds[source]`` (the caller reads
    it, e.g. with :func:`w2vtools.audio.audio_info`: formats read no audio).

    Example:
        >>> write_data_dir("data/kaldi/train", read_corpus("data/train.tsv"))   # doctest: +SKIP
    """
    d = Path(data_dir)
    utts = list(utts)
    _check_writable(d, utts)
    d.mkdir(parents=True, exist_ok=True)
    if any(u.start is not None or u.end is not None for u in utts):
        _write_segments(d, utts, recording_seconds or {})
    else:
        write_kaldi_table(d / "wav.scp", {u.uid: u.source for u in utts})
        _remove_stale(d / "segments")
    utt2spk = {u.uid: (u.speaker or u.uid) for u in utts}
    write_kaldi_table(d / "utt2spk", utt2spk)
    write_kaldi_table(d / "spk2utt", spk2utt_from_utt2spk(utt2spk))
    if any(u.text is not None for u in utts):
        missing = [u.uid for u in utts if u.text is None]
        if missing:
            raise W2VError(f"{d}: {len(missing)} utterances have no transcript, e.g. {missing[0]!r}")
        write_kaldi_table(d / "text", {u.uid: " ".join(u.text.split()) for u in utts})
    else:
        _remove_stale(d / "text")
    if durations is not None:
        write_kaldi_table(d / "utt2dur", {uid: format_seconds(dur) for uid, dur in durations.items()})
    else:
        _remove_stale(d / "utt2dur")
    # Files derived from audio that we did not write would no longer match it.
    for name in ("feats.scp", "cmvn.scp", "utt2num_frames", "reco2dur", "frame_shift"):
        _remove_stale(d / name)


def _check_writable(d: Path, utts: list[Utterance]) -> None:
    """Ids unique and without whitespace, sources on one line: what a table line can hold."""
    seen: set[str] = set()
    for u in utts:
        if u.uid in seen:
            raise W2VError(f"{d}: duplicate utterance id {u.uid!r}")
        if not u.uid or any(c.isspace() for c in u.uid):
            raise W2VError(f"{d}: utterance id {u.uid!r} is empty or contains whitespace")
        if u.speaker is not None and (not u.speaker or any(c.isspace() for c in u.speaker)):
            raise W2VError(f"{d}: {u.uid}: speaker id {u.speaker!r} is empty or contains whitespace")
        if "\n" in u.source:
            raise W2VError(f"{d}: {u.uid}: audio source contains a line break")
        seen.add(u.uid)


def _write_segments(d: Path, utts: list[Utterance], recording_seconds: Mapping[str, float]) -> None:
    """``wav.scp`` of the recordings and ``segments`` of the windows cut from them."""
    # One recording id per distinct source, named after the first utterance (C order) using it.
    rec_of_source: dict[str, str] = {}
    for u in sorted(utts, key=lambda u: u.uid.encode("utf-8")):
        rec_of_source.setdefault(u.source, u.uid)
    # validate_data_dir.sh wants end > start, so an open end (-1) is written as the recording's length.
    unknown = sorted({u.source for u in utts if u.end is None} - set(recording_seconds))
    if unknown:
        raise W2VError(f"{d}: {unknown[0]}: a window without an end needs the recording's length (recording_seconds)")
    write_kaldi_table(d / "wav.scp", {rec: src for src, rec in rec_of_source.items()})
    write_kaldi_table(
        d / "segments",
        {
            u.uid: (
                rec_of_source[u.source],
                format_seconds(u.start or 0.0),
                format_seconds(recording_seconds[u.source] if u.end is None else u.end),
            )
            for u in utts
        },
    )


PER_UTTERANCE_TABLES = ("wav.scp", "text", "utt2spk", "utt2dur", "segments", "feats.scp", "utt2num_frames")


def subset_data_dir(src: str | os.PathLike, dest: str | os.PathLike, keep: Iterable[str]) -> int:
    """Copy the utterances ``keep`` of data dir ``src`` into ``dest`` (Kaldi's subset_data_dir.sh).

    Per-utterance tables keep their lines (and order) for the kept ids, ``frame_shift`` is
    copied, ``spk2utt`` is rebuilt from the kept ``utt2spk``. Returns the number kept.

    Example:
        >>> subset_data_dir("data/train", "data/train_10pct", ["jackson-0_jackson_5"])   # doctest: +SKIP
        1
    """
    src, dest = Path(src), Path(dest)
    kept = set(keep)
    dest.mkdir(parents=True, exist_ok=True)
    for name in PER_UTTERANCE_TABLES:
        if (src / name).is_file():
            with open(src / name, encoding="utf-8") as f, atomic_write(dest / name) as out:
                out.writelines(line for line in f if line.split(" ", 1)[0] in kept)
    if (src / "frame_shift").is_file():
        write_frame_shift(dest / "frame_shift", read_frame_shift(src / "frame_shift"))
    if (src / "utt2spk").is_file():
        utt2spk = {u: s for u, s in read_kaldi_table(src / "utt2spk").items() if u in kept}
        write_kaldi_table(dest / "spk2utt", spk2utt_from_utt2spk(utt2spk))
    return len(kept)


def _remove_stale(path: Path) -> None:
    if path.is_file():
        path.unlink()


# ----------------------------------------------------------------------------
# Validation, after Kaldi's utils/validate_data_dir.sh and utils/validate_text.pl


# Whitespace other than space and tab (validate_text.pl rejects it in `text`).
_OTHER_WHITESPACE = re.compile(r"[^\S \t]")


def _table_lines(path: Path, problems: list[str]) -> list[str] | None:
    """Lines of a table as text; records byte-level problems (newline, UTF-8) on the way."""
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        problems.append(f"{path.name}: last line has no newline")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{path.name}: not valid UTF-8 (byte {e.start})")
        text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            problems.append(f"{path.name}:{i}: empty line")
    return lines


def _check_sorted_unique(path: Path, lines: list[str], problems: list[str]) -> list[str]:
    keys = [line.split()[0] if line.split() else "" for line in lines]
    encoded = [k.encode("utf-8") for k in keys]
    if encoded != sorted(set(encoded)):
        dup = [k for k, n in collections.Counter(keys).items() if n > 1]
        if dup:
            problems.append(f"{path.name}: duplicate key {dup[0]!r}")
        else:
            problems.append(f"{path.name}: not in sorted order (LC_ALL=C sort)")
    return keys


def _compare_keys(a_name: str, a: list[str], b_name: str, b: list[str], problems: list[str], what: str) -> None:
    if a == b:
        return
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    detail = []
    if only_a:
        detail.append(f"{len(only_a)} only in {a_name} (e.g. {only_a[0]!r})")
    if only_b:
        detail.append(f"{len(only_b)} only in {b_name} (e.g. {only_b[0]!r})")
    problems.append(f"{what} differ between {a_name} and {b_name}: " + ("; ".join(detail) or "order differs"))


def validate_data_dir(
    data_dir: str | os.PathLike,
    *,
    no_feats: bool = True,
    no_text: bool = False,
    no_wav: bool = False,
    no_spk_sort: bool = False,
) -> list[str]:
    """The problems Kaldi's ``utils/validate_data_dir.sh`` would report, as a list (empty = valid).

    Checks: ``utt2spk``/``spk2utt`` present, non-empty, two fields, consistent;
    every table ends in a newline, has no empty lines, is C-sorted with unique
    keys; ``utt2spk`` also sorted by speaker (speaker ids prefixing utterance ids);
    ``text`` is UTF-8 without CR or Unicode whitespace other than space and tab
    and without the symbols ``<s> </s> #0``; the utterance lists of ``utt2spk``,
    ``text``, ``wav.scp`` (or ``segments``), ``feats.scp``, ``utt2dur`` and
    ``utt2num_frames`` agree; ``segments`` lines are ``utt rec start end`` with
    end > start and their recordings are exactly those of ``wav.scp``; no ``~``
    paths in ``wav.scp``; positive durations and integer frame counts;
    ``frame_shift`` a positive number. The ``--no-*`` switches of the script are
    the keyword arguments (``no_feats`` defaults to True: raw-audio dirs are
    normal for wav2vec). A single speaker is not a problem (the script only warns).

    Example:
        >>> validate_data_dir("data/kaldi/train")   # doctest: +SKIP
        []
    """
    d = Path(data_dir)
    if not d.is_dir():
        return [f"{d}: no such directory"]
    problems = [
        f"no such file {name}" if not (d / name).is_file() else f"empty file {name}"
        for name in ("utt2spk", "spk2utt")
        if not (d / name).is_file() or (d / name).stat().st_size == 0
    ]
    if problems:
        return problems
    checked = _check_utt2spk(d, problems, no_spk_sort)
    if checked is None:
        return problems
    utts, pairs = checked
    _check_spk2utt(d, pairs, problems)
    _check_text(d, utts, problems, no_text)
    recs = _check_recordings(d, utts, problems, no_wav)
    _check_feats(d, utts, problems, no_feats)
    _check_numeric_tables(d, utts, recs, problems)
    _check_frame_shift(d, problems)
    return problems


def _check_utt2spk(
    d: Path, problems: list[str], no_spk_sort: bool
) -> tuple[list[str], list[tuple[str, str]]] | None:
    """The utterance ids and ``(utt, spk)`` pairs in file order; None when a line is not ``utt spk``."""
    lines = _table_lines(d / "utt2spk", problems)
    pairs = [line.split() for line in lines if line.strip()]
    bad = [i for i, p in enumerate(pairs, 1) if len(p) != 2]
    if bad:
        problems.append(f"utt2spk: wrong format at line {bad[0]} (expected 'utt spk')")
        return None
    utts = _check_sorted_unique(d / "utt2spk", lines, problems)
    if not no_spk_sort:
        by_spk = sorted(lines, key=lambda line: (line.split()[1].encode("utf-8"), line.encode("utf-8")))
        if by_spk != lines:
            first = next(a for a, b in zip(lines, by_spk) if a != b)
            problems.append(
                "utt2spk is not in sorted order when sorted first on speaker-id "
                f"(make speaker-ids prefixes of utt-ids), first out of order: {first!r}"
            )
    return utts, [(utt, spk) for utt, spk in pairs]


def _check_spk2utt(d: Path, pairs: list[tuple[str, str]], problems: list[str]) -> None:
    lines = _table_lines(d / "spk2utt", problems)
    _check_sorted_unique(d / "spk2utt", lines, problems)
    from_spk2utt = []
    for line in lines:
        fields = line.split()
        from_spk2utt += [(utt, fields[0]) for utt in fields[1:]]
    from_spk2utt.sort(key=lambda p: p[0].encode("utf-8"))
    if from_spk2utt != sorted(pairs, key=lambda p: p[0].encode("utf-8")):
        problems.append("spk2utt and utt2spk do not match")


def _check_text(d: Path, utts: list[str], problems: list[str], no_text: bool) -> None:
    """``text``: UTF-8, no CR or other Unicode whitespace, no ``<s> </s> #0`` (validate_text.pl)."""
    text = d / "text"
    if not text.is_file():
        if not no_text:
            problems.append("no such file text (if this is by design, use no_text)")
        return
    lines = _table_lines(text, problems)
    for i, line in enumerate(lines, 1):
        if "\r" in line:
            problems.append(f"text:{i}: contains CR (0x0D)")
            break
        if _OTHER_WHITESPACE.search(line):
            problems.append(f"text:{i}: contains Unicode whitespace other than space and tab")
            break
    for i, line in enumerate(lines, 1):
        illegal = {"<s>", "</s>", "#0"} & set(line.split()[1:])
        if illegal:
            problems.append(f"text:{i}: contains illegal symbol {sorted(illegal)[0]}")
            break
    keys = _check_sorted_unique(text, lines, problems)
    _compare_keys("utt2spk", utts, "text", keys, problems, "utterance lists")


def _check_recordings(d: Path, utts: list[str], problems: list[str], no_wav: bool) -> list[str] | None:
    """``wav.scp`` (and ``segments``): their ids against ``utt2spk``; returns the recording ids, None without wav.scp."""
    wav = d / "wav.scp"
    segments = d / "segments"
    if segments.is_file() and not wav.is_file():
        problems.append("segments file exists but no wav.scp")
    if not wav.is_file():
        if not no_wav:
            problems.append("no such file wav.scp (if this is by design, use no_wav)")
        return None
    wav_lines = _table_lines(wav, problems)
    recs = _check_sorted_unique(wav, wav_lines, problems)
    for i, line in enumerate(wav_lines, 1):
        fields = line.split(None, 1)
        if len(fields) < 2:
            problems.append(f"wav.scp:{i}: no path or command for {fields[0] if fields else ''!r}")
        elif fields[1].startswith("~"):
            problems.append(f"wav.scp:{i}: do not use tilde (~) in wav.scp")
    if segments.is_file():
        _check_segments(segments, utts, recs, problems)
    else:
        _compare_keys("utt2spk", utts, "wav.scp", recs, problems, "utterance lists")
    return recs


def _check_segments(segments: Path, utts: list[str], recs: list[str], problems: list[str]) -> None:
    """``utt rec start end`` lines with end > start; utterances those of utt2spk, recordings those of wav.scp."""
    lines = _table_lines(segments, problems)
    seg_utts = _check_sorted_unique(segments, lines, problems)
    seg_recs = set()
    for i, line in enumerate(lines, 1):
        f = line.split()
        try:
            ok = len(f) == 4 and float(f[3]) > float(f[2])
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"segments:{i}: bad line {line!r} (expected 'utt rec start end', end > start)")
        if len(f) >= 2:
            seg_recs.add(f[1])
    _compare_keys("utt2spk", utts, "segments", seg_utts, problems, "utterance lists")
    _compare_keys("segments", c_sorted(seg_recs), "wav.scp", recs, problems, "recording ids")


def _check_feats(d: Path, utts: list[str], problems: list[str], no_feats: bool) -> None:
    feats = d / "feats.scp"
    if feats.is_file():
        keys = _check_sorted_unique(feats, _table_lines(feats, problems), problems)
        _compare_keys("utt2spk", utts, "feats.scp", keys, problems, "utterance lists")
    elif not no_feats:
        problems.append("no such file feats.scp (if this is by design, use no_feats)")


def _check_numeric_tables(d: Path, utts: list[str], recs: list[str] | None, problems: list[str]) -> None:
    """``utt2dur``, ``utt2num_frames``, ``reco2dur``: their keys, and one positive number a line."""
    for name, check in (("utt2dur", _positive), ("utt2num_frames", _positive_int), ("reco2dur", _positive)):
        path = d / name
        if not path.is_file():
            continue
        lines = _table_lines(path, problems)
        keys = _check_sorted_unique(path, lines, problems)
        if name == "reco2dur":
            reference = recs if recs is not None else utts
            _compare_keys("wav.scp" if recs is not None else "utt2spk", reference, name, keys, problems, "recording ids")
        else:
            _compare_keys("utt2spk", utts, name, keys, problems, "utterance lists")
        for i, line in enumerate(lines, 1):
            f = line.split()
            if len(f) != 2 or not check(f[1]):
                problems.append(f"{name}:{i}: bad line {line!r}")
                break


def _check_frame_shift(d: Path, problems: list[str]) -> None:
    if (d / "frame_shift").is_file():
        try:
            read_frame_shift(d / "frame_shift")
        except W2VError as e:
            problems.append(f"frame_shift: {str(e).split(': ', 1)[-1]}")


def _positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False


def _positive_int(value: str) -> bool:
    try:
        return int(value) > 0
    except ValueError:
        return False


def data_dir_warnings(data_dir: str | os.PathLike) -> list[str]:
    """Things Kaldi accepts but warns about: a single speaker, speaker ids that do not prefix utterance ids.

    Example:
        >>> data_dir_warnings("data/kaldi/train")   # doctest: +SKIP
        ['only one speaker: a bad idea for speaker-adaptive training (see kaldi-asr.org/doc/data_prep.html)']
    """
    d = Path(data_dir)
    if not (d / "utt2spk").is_file():
        return []
    utt2spk = read_kaldi_table(d / "utt2spk")
    warnings = []
    speakers = set(utt2spk.values())
    if len(speakers) == 1:
        warnings.append("only one speaker: a bad idea for speaker-adaptive training (see kaldi-asr.org/doc/data_prep.html)")
    unprefixed = [u for u, s in utt2spk.items() if not u.startswith(s)]
    if unprefixed:
        warnings.append(
            f"{len(unprefixed)} utterance ids do not start with their speaker id (e.g. {unprefixed[0]!r}); "
            "Kaldi's sorting assumptions rely on that prefix"
        )
    return warnings
