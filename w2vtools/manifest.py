"""``w2v manifest``: index audio into fairseq TSV manifests, labels and Kaldi data dirs.

The semantics follow fairseq's ``examples/wav2vec/wav2vec_manifest.py`` (``train.tsv``
and ``valid.tsv`` under ``--dest``, ``--ext``, ``--valid-percent``, ``--seed``,
``--path-must-contain``), with these differences, all for reproducibility:

* rows are sorted by relative path (C order), so reruns give identical bytes;
* each file's train/valid assignment is a hash of ``seed`` and its relative path,
  so adding or removing files does not reshuffle the others;
* headers are read in parallel (``jobs`` threads: libsndfile releases the GIL);
* unreadable files are never skipped silently: each is logged as
  ``<path>: <reason>``, the rest are written, and :class:`PartialFailure` says
  that some were left out;
* symlinked files keep their own names (fairseq resolves them); the root line is
  the real absolute path of the root, as fairseq writes it.

Example:
    >>> report = build_manifest("corpus/", "data/", exts=["flac"], valid_percent=0.01)   # doctest: +SKIP
    >>> report.rows
    {'train': 2673, 'valid': 27}
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import soundfile as sf

from w2vtools.audio import AudioInfo, audio_info, is_command, load_audio
from w2vtools.errors import PartialFailure, W2VError
from w2vtools.formats import kaldi, labels
from w2vtools.formats.manifest import Manifest, ManifestItem, read_manifest, uids_for, write_manifest
from w2vtools.formats.utterance import Utterance

log = logging.getLogger("w2v.manifest")

# LibriSpeech ids are speaker-chapter-utterance (``103-1240-0000``).
LIBRISPEECH_SPEAKER = r"^(\d+)-\d+-\d+$"

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Report:
    """What a ``w2v manifest`` run wrote and what it left out."""

    rows: dict[str, int] = field(default_factory=dict)  # output name -> rows written
    failures: list[str] = field(default_factory=list)  # "<path>: <reason>" for each file left out
    written: list[str] = field(default_factory=list)  # paths of files written
    problems: list[str] = field(default_factory=list)  # Kaldi validation problems

    def fail(self, message: str) -> None:
        log.warning("%s", message)
        self.failures.append(message)

    def raise_if_partial(self, total: int | None = None) -> None:
        if self.failures:
            of = f" of {total}" if total is not None else ""
            raise PartialFailure(
                f"{len(self.failures)}{of} inputs left out (each named above); the rest were written"
            )


# ----------------------------------------------------------------------------
# Finding files, reading headers


def find_audio(root: str | os.PathLike, exts: Sequence[str], path_must_contain: str | None = None) -> list[str]:
    """Relative paths (C-sorted) of files under ``root`` ending in ``.<ext>``.

    Like fairseq's ``glob(root/**/*.ext)``: recursive, symlinked folders followed
    (each real folder once), names starting with ``.`` skipped, extensions
    case-sensitive. ``path_must_contain`` filters on the absolute path.

    Example:
        >>> find_audio("fsdd/recordings", ["wav"])[:2]   # doctest: +SKIP
        ['0_george_0.wav', '0_george_1.wav']
    """
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise W2VError(f"{root}: not a directory")
    suffixes = tuple("." + e.lstrip(".") for e in exts)
    found: list[str] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.endswith(suffixes):
                continue
            path = os.path.join(dirpath, name)
            if path_must_contain and path_must_contain not in path:
                continue
            found.append(os.path.relpath(path, root))
    return sorted(found, key=lambda p: p.encode("utf-8", "surrogateescape"))


def parallel_map(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """``[fn(x) for x in items]`` on ``jobs`` threads, results in input order."""
    if jobs <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items, chunksize=32))


def _probe(source: str, verify: bool) -> AudioInfo | str:
    """Header facts, or the error message naming the file and the reason."""
    try:
        info = audio_info(source)
        if verify:
            # Decode every sample: finds truncated compressed files and NaN/Inf.
            load_audio(source)
        return info
    except W2VError as e:
        return str(e)


def probe_all(sources: Sequence[str], *, jobs: int, verify: bool = False) -> list[AudioInfo | str]:
    """:func:`w2vtools.audio.audio_info` of every source in parallel; a failure is its message."""
    return parallel_map(lambda s: _probe(s, verify), list(sources), jobs)


def default_jobs() -> int:
    """Threads for header reading: I/O bound, so more than the cores helps on network storage."""
    return min(16, (os.cpu_count() or 1) * 2)


# ----------------------------------------------------------------------------
# Splits, speakers, transcripts


def is_valid_row(relpath: str, valid_percent: float, seed: int) -> bool:
    """Deterministic train/valid assignment of one file: hash(seed, relpath) < valid_percent.

    Example:
        >>> is_valid_row("a.wav", 0.0, 42), is_valid_row("a.wav", 1.0, 42)
        (False, True)
    """
    digest = hashlib.sha256(f"{seed}\0{relpath}".encode("utf-8", "surrogateescape")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return u < valid_percent


class SpeakerRule:
    """Where speaker ids come from: a ``utt2spk`` map, a regex over the id, or LibriSpeech's default.

    The regex's named group ``spk`` (or else its first group) is the speaker;
    ids it does not match have no known speaker.

    Example:
        >>> SpeakerRule(pattern=r"^\\d+_([a-z]+)_").speaker("0_jackson_5")
        'jackson'
        >>> SpeakerRule().speaker("103-1240-0000")
        '103'
    """

    def __init__(self, utt2spk: Mapping[str, str] | None = None, pattern: str | None = None):
        self.utt2spk = dict(utt2spk) if utt2spk else None
        self.explicit = utt2spk is not None or pattern is not None
        try:
            self.regex = re.compile(pattern if pattern is not None else LIBRISPEECH_SPEAKER)
        except re.error as e:
            raise W2VError(f"--speaker-pattern {pattern!r}: not a valid regular expression ({e})") from None
        if self.regex.groups < 1:
            raise W2VError(f"--speaker-pattern {pattern!r}: needs a group that captures the speaker")

    def speaker(self, uid: str) -> str | None:
        if self.utt2spk is not None:
            return self.utt2spk.get(uid)
        m = self.regex.search(uid)
        if not m:
            return None
        spk = m.group("spk") if "spk" in self.regex.groupindex else m.group(1)
        return spk or None


def _lookup(table: Mapping[str, str], uid: str, relpath: str) -> str | None:
    if uid in table:
        return table[uid]
    stem = os.path.basename(relpath).split(".")[0]  # as fairseq's libri_labels.py keys rows
    return table.get(stem)


@dataclass
class Row:
    """One manifest row with what is known about it."""

    relpath: str
    num_samples: int
    sample_rate: int | None = None
    uid: str = ""
    speaker: str | None = None
    text: str | None = None


def _assign_uids(rows: list[Row]) -> None:
    for row, uid in zip(rows, uids_for([r.relpath for r in rows])):
        row.uid = uid


def _split(rows: list[Row], name: str, valid_name: str, valid_percent: float, seed: int) -> dict[str, list[Row]]:
    """``{name: rows, valid_name: rows}`` by :func:`is_valid_row` (no valid split when ``valid_percent`` is 0)."""
    splits: dict[str, list[Row]] = {name: []}
    if valid_percent > 0:
        splits[valid_name] = []
    for r in rows:
        splits[valid_name if is_valid_row(r.relpath, valid_percent, seed) else name].append(r)
    return splits


def _attach_text(rows: list[Row], transcripts: Mapping[str, str], report: Report, where: str) -> list[Row]:
    """Rows with a transcript; each one without is named (it cannot stay line-aligned)."""
    kept = []
    for r in rows:
        text = _lookup(transcripts, r.uid, r.relpath)
        if text is None:
            report.fail(f"{where}/{r.relpath}: no transcript for utterance {r.uid!r}")
            continue
        r.text = text
        kept.append(r)
    return kept


def _attach_speakers(rows: list[Row], rule: SpeakerRule) -> None:
    for r in rows:
        r.speaker = rule.speaker(r.uid)
    if rule.explicit:
        unknown = [r.uid for r in rows if r.speaker is None]
        if unknown:
            log.warning(
                "%d utterances have no speaker from the speaker rule (e.g. %r); each is its own speaker",
                len(unknown),
                unknown[0],
            )


# ----------------------------------------------------------------------------
# Writing labels and TSVs: NAME.tsv, NAME.wrd, NAME.ltr, NAME.spk, dict.ltr.txt


class LabelWriter:
    """The one writer of fairseq label files: ``NAME.wrd`` and ``NAME.ltr`` per split, one ``dict.ltr.txt``.

    The dictionary is ``dictionary`` when given (copied beside the first split's
    labels), else counted on the first split's letters (fairseq's recipe counts
    ``train.ltr``). Letters of any split outside it are reported with counts.

    Example:
        >>> writer = LabelWriter(Report())
        >>> writer.write(Path("data"), "train", rows)   # doctest: +SKIP
    """

    def __init__(self, report: Report, *, dictionary: str | os.PathLike | None = None, upper: bool = True):
        self.report = report
        self.dictionary = dictionary
        self.upper = upper
        self.symbols: list[str] | None = labels.read_dictionary(dictionary) if dictionary is not None else None
        self.first = True

    def write(self, out: Path, name: str, rows: Sequence[Row]) -> None:
        """Write ``out/NAME.wrd`` and ``out/NAME.ltr`` (and the dictionary with the first split)."""
        words = [labels.normalize_words(r.text or "", upper=self.upper) for r in rows]
        letters = [labels.words_to_letters(w, upper=self.upper) for w in words]
        for ext, lines in (("wrd", words), ("ltr", letters)):
            labels.write_labels(out / f"{name}.{ext}", lines)
            self.report.written.append(str(out / f"{name}.{ext}"))
        if self.first:
            self._write_dictionary(out / "dict.ltr.txt", letters)
            self.first = False
        oov = labels.out_of_dictionary(letters, self.symbols)
        if oov:
            log.warning(
                "%s: %d characters outside the dictionary (fairseq maps them to <unk>): %s",
                out / f"{name}.ltr",
                sum(oov.values()),
                labels.format_symbol_counts(oov),
            )

    def _write_dictionary(self, target: Path, letters: list[str]) -> None:
        if self.dictionary is None:
            counts = labels.count_symbols(letters)
            labels.write_dictionary(target, counts)
            self.symbols = [s for s, _ in labels.dictionary_from_counts(counts)]
        elif not target.exists() or not os.path.samefile(self.dictionary, target):
            shutil.copyfile(self.dictionary, target)
        else:
            return
        self.report.written.append(str(target))


def write_speakers(out: Path, name: str, rows: Sequence[Row], report: Report) -> None:
    """``out/NAME.spk``: one speaker a line (an utterance without one is its own speaker)."""
    labels.write_labels(out / f"{name}.spk", [r.speaker or r.uid for r in rows])
    report.written.append(str(out / f"{name}.spk"))


def _remove_stale_labels(dest: Path, name: str, exts: Sequence[str]) -> None:
    """Line-aligned files of an earlier ``NAME.tsv`` no longer line up: remove those not rewritten."""
    for ext in exts:
        old = dest / f"{name}.{ext}"
        if old.is_file():
            log.info("%s: removed (left from an earlier %s.tsv)", old, name)
            old.unlink()


def write_bundle(
    dest: Path,
    root: str,
    splits: Mapping[str, list[Row]],
    report: Report,
    *,
    with_text: bool,
    dictionary: str | os.PathLike | None = None,
    upper: bool = True,
) -> None:
    """Write ``NAME.tsv`` per split, and the label files (see :class:`LabelWriter`) when text is known."""
    dest.mkdir(parents=True, exist_ok=True)
    writer = LabelWriter(report, dictionary=dictionary, upper=upper)
    for name, rows in splits.items():
        tsv = dest / f"{name}.tsv"
        write_manifest(tsv, Manifest(root, [ManifestItem(r.relpath, r.num_samples) for r in rows]))
        has_speakers = any(r.speaker is not None for r in rows)
        _remove_stale_labels(dest, name, ([] if with_text else ["wrd", "ltr"]) + ([] if has_speakers else ["spk"]))
        report.rows[name] = len(rows)
        report.written.append(str(tsv))
        if with_text:
            writer.write(dest, name, rows)
        if has_speakers:
            write_speakers(dest, name, rows, report)
    log.info("%s", ", ".join(f"{n}.tsv: {k} rows" for n, k in report.rows.items()))


# ----------------------------------------------------------------------------
# Scanning a folder


def _scan(root: str, relpaths: Sequence[str], report: Report, *, jobs: int, verify: bool) -> list[Row]:
    """A row for every readable file (each unreadable one is named in ``report``), with utterance ids."""
    log.info("%s: reading %d headers (%d threads)", root, len(relpaths), jobs)
    infos = probe_all([os.path.join(root, p) for p in relpaths], jobs=jobs, verify=verify)
    rows: list[Row] = []
    for relpath, info in zip(relpaths, infos):
        if isinstance(info, str):
            report.fail(info)
        else:
            rows.append(Row(relpath, info.num_frames, info.sample_rate))
    _assign_uids(rows)
    return rows


def build_manifest(
    root: str | os.PathLike,
    dest: str | os.PathLike | None,
    *,
    exts: Sequence[str] = ("flac",),
    valid_percent: float = 0.01,
    seed: int = 42,
    path_must_contain: str | None = None,
    jobs: int | None = None,
    name: str = "train",
    valid_name: str = "valid",
    transcripts: str | os.PathLike | None = None,
    dictionary: str | os.PathLike | None = None,
    upper: bool = True,
    speakers: SpeakerRule | None = None,
    verify: bool = False,
    to_kaldi: str | os.PathLike | None = None,
) -> Report:
    """Scan ``root`` and write ``NAME.tsv`` (+ ``valid.tsv``), labels and/or a Kaldi data dir.

    ``dest`` of ``-`` writes one TSV of every row to stdout (no split); ``None``
    writes no TSV (with ``to_kaldi``).

    Raises:
        PartialFailure: after writing, when some files were left out (each logged).

    Example:
        >>> build_manifest("fsdd/recordings", "data", exts=["wav"], valid_percent=0.1)   # doctest: +SKIP
    """
    if not 0.0 <= valid_percent <= 1.0:
        raise W2VError(f"--valid-percent must be between 0 and 1, got {valid_percent}")
    jobs = jobs or default_jobs()
    report = Report()
    real_root = os.path.realpath(root)
    relpaths = find_audio(real_root, exts, path_must_contain)
    if not relpaths:
        raise W2VError(f"{real_root}: no files ending in {', '.join('.' + e for e in exts)}")
    rows = _scan(real_root, relpaths, report, jobs=jobs, verify=verify)
    if transcripts is not None:
        rows = _attach_text(rows, labels.read_transcripts(transcripts), report, real_root)
    _attach_speakers(rows, speakers or SpeakerRule())

    if dest is not None and str(dest) == "-":
        if transcripts is not None:
            raise W2VError("--labels writes .wrd/.ltr files beside the TSV: give --dest a folder, not -")
        write_manifest("-", Manifest(real_root, [ManifestItem(r.relpath, r.num_samples) for r in rows]))
        report.rows["-"] = len(rows)
    elif dest is not None:
        if valid_percent == 0 and (Path(dest) / f"{valid_name}.tsv").exists():
            log.warning("%s: left from an earlier run (--valid-percent 0 writes none)", Path(dest) / f"{valid_name}.tsv")
        splits = _split(rows, name, valid_name, valid_percent, seed)
        write_bundle(
            Path(dest), real_root, splits, report,
            with_text=transcripts is not None, dictionary=dictionary, upper=upper,
        )
    if to_kaldi is not None:
        _write_kaldi(to_kaldi, real_root, rows, report, jobs)
    report.raise_if_partial(len(relpaths))
    return report


# ----------------------------------------------------------------------------
# Labelling existing TSVs


def _text_from_table(rows: list[Row], table: Mapping[str, str], tsv: Path, transcripts: str | os.PathLike) -> None:
    """Each row's transcript from ``table``; a missing one is an error (the TSV is not rewritten)."""
    missing = [r.uid for r in rows if _lookup(table, r.uid, r.relpath) is None]
    if missing:
        raise W2VError(
            f"{tsv}: {len(missing)} rows have no transcript in {transcripts} (e.g. {missing[0]!r}); "
            "label files must be line-aligned, so nothing was written"
        )
    for r in rows:
        r.text = _lookup(table, r.uid, r.relpath)


def _speakers_of_tsv(rows: list[Row], tsv: Path, rule: SpeakerRule | None) -> None:
    """Speakers from an explicit rule, else from ``NAME.spk`` beside the TSV, else LibriSpeech's default."""
    if rule is not None and rule.explicit:
        _attach_speakers(rows, rule)
    elif labels.label_path(tsv, "spk").is_file():
        for r, spk in zip(rows, labels.read_labels(tsv, "spk")):
            r.speaker = spk
    else:
        _attach_speakers(rows, rule or SpeakerRule())


def label_manifests(
    tsvs: Sequence[str | os.PathLike],
    *,
    transcripts: str | os.PathLike | None,
    dest: str | os.PathLike | None = None,
    dictionary: str | os.PathLike | None = None,
    upper: bool = True,
    speakers: SpeakerRule | None = None,
    to_kaldi: str | os.PathLike | None = None,
    jobs: int | None = None,
) -> Report:
    """Labels (and/or a Kaldi dir) for existing TSVs: ``train.tsv`` -> ``train.wrd``, ``.ltr``, ``dict.ltr.txt``.

    The dictionary is counted on the first TSV. A row without a transcript is an
    error here (the TSV is an input and is not rewritten), naming how many and one.
    With ``to_kaldi`` (one TSV), ``NAME.wrd`` and ``NAME.spk`` beside it supply
    text and speakers when ``transcripts``/``speakers`` are not given.

    Example:
        >>> label_manifests(["data/train.tsv", "data/valid.tsv"], transcripts="LibriSpeech/train-clean-100")  # doctest: +SKIP
    """
    if to_kaldi is not None and len(tsvs) != 1:
        raise W2VError("--to-kaldi converts one TSV at a time")
    report = Report()
    table = labels.read_transcripts(transcripts) if transcripts is not None else None
    writer = LabelWriter(report, dictionary=dictionary, upper=upper)
    for tsv in map(Path, tsvs):
        man = read_manifest(tsv)
        rows = [Row(it.relpath, it.num_samples) for it in man.items]
        _assign_uids(rows)
        if table is not None:
            _text_from_table(rows, table, tsv, transcripts)
        elif labels.label_path(tsv, "wrd").is_file():
            for r, line in zip(rows, labels.read_labels(tsv, "wrd")):
                r.text = line
        _speakers_of_tsv(rows, tsv, speakers)
        if table is not None:
            out = Path(dest) if dest is not None else tsv.parent
            out.mkdir(parents=True, exist_ok=True)
            writer.write(out, tsv.stem, rows)
            report.rows[tsv.stem] = len(rows)
            if speakers is not None and speakers.explicit and any(r.speaker for r in rows):
                write_speakers(out, tsv.stem, rows, report)
        if to_kaldi is not None:
            _write_kaldi(to_kaldi, man.root, rows, report, jobs or default_jobs())
    report.raise_if_partial()
    return report


# ----------------------------------------------------------------------------
# Kaldi data dirs, both ways


def _write_kaldi(
    data_dir: str | os.PathLike,
    root: str,
    rows: list[Row],
    report: Report,
    jobs: int,
) -> None:
    """Rows -> Kaldi data dir: ids prefixed by speakers (:func:`kaldi.kaldi_uid`), durations from headers."""
    sources = [os.path.join(root, r.relpath) for r in rows]
    # A TSV knows lengths but not rates: read the headers of rows that were not just scanned.
    unknown = [i for i, r in enumerate(rows) if r.sample_rate is None]
    probed = dict(zip(unknown, probe_all([sources[i] for i in unknown], jobs=jobs)))
    utts: list[Utterance] = []
    durations: dict[str, float] = {}
    for i, (r, src) in enumerate(zip(rows, sources)):
        info = probed.get(i)
        if isinstance(info, str):
            report.fail(info)
            continue
        rate = r.sample_rate if info is None else info.sample_rate
        if info is not None and info.num_frames != r.num_samples:
            log.warning("%s: the TSV says %d samples, the file has %d", src, r.num_samples, info.num_frames)
        uid = kaldi.kaldi_uid(r.uid, r.speaker)
        utts.append(Utterance(uid, src, num_samples=r.num_samples, speaker=r.speaker, text=r.text))
        durations[uid] = r.num_samples / rate
    ids = [u.uid for u in utts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise W2VError(f"{data_dir}: two utterances get the Kaldi id {dup!r}")
    if any(u.text is not None for u in utts):
        utts = [u if u.text is not None else replace(u, text="") for u in utts]
    kaldi.write_data_dir(data_dir, utts, durations=durations)
    report.written.append(str(data_dir))
    report.problems = kaldi.validate_data_dir(data_dir, no_text=not any(u.text is not None for u in utts))
    for p in report.problems:
        log.warning("%s: %s", data_dir, p)
    log.info("%s: %d utterances, %d speakers", data_dir, len(utts), len({u.speaker or u.uid for u in utts}))


def _is_plain_file(u: Utterance) -> bool:
    """True when fairseq can read the utterance as a whole file (no ``segments`` window, no ``cmd |``)."""
    return u.start is None and u.end is None and not is_command(u.source)


def _write_wav(u: Utterance, folder: Path) -> str | tuple[str, int]:
    """Cut/run ``u`` once into ``folder/<uid>.wav`` (16-bit): its absolute path and length, or the error."""
    try:
        wav, sr = load_audio(u.source, start=u.start, end=u.end, return_rate=True)
    except W2VError as e:
        return f"{u.uid}: {e}"
    out = folder / f"{u.uid}.wav"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sf.write(tmp, wav, sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, out)
    return os.path.abspath(out), len(wav)


def _audio_files(
    data_dir: Path, utts: list[Utterance], audio_dir: Path, report: Report, *, jobs: int, verify: bool
) -> dict[str, tuple[str, int]]:
    """``{uid: (audio path, samples)}``: plain files as they are, the others written under ``audio_dir``.

    Each utterance that cannot be read is named in ``report`` and left out.
    """
    plain = [u for u in utts if _is_plain_file(u)]
    cut = [u for u in utts if not _is_plain_file(u)]
    found: dict[str, tuple[str, int]] = {}
    for u, info in zip(plain, probe_all([os.path.abspath(u.source) for u in plain], jobs=jobs, verify=verify)):
        if isinstance(info, str):
            report.fail(info)
        else:
            found[u.uid] = (os.path.abspath(u.source), info.num_frames)
    if cut:
        log.info("%s: writing %d segment/command utterances as WAV under %s", data_dir, len(cut), audio_dir)
    for u, res in zip(cut, parallel_map(lambda u: _write_wav(u, audio_dir), cut, jobs)):
        if isinstance(res, str):
            report.fail(res)
        else:
            found[u.uid] = res
    return found


def _rows_of_kaldi(
    utts: list[Utterance], audio: Mapping[str, tuple[str, int]], root: str | os.PathLike | None
) -> tuple[str, list[Row], dict[str, str]]:
    """The TSV root, C-sorted rows (with uids) and ``{relpath: Kaldi id}`` of the utterances with audio."""
    kept = [u for u in utts if u.uid in audio]
    # Paths stay as Kaldi gives them (absolute, symlinks not resolved) so relative paths keep their names.
    root = os.path.abspath(root) if root is not None else os.path.commonpath(
        [os.path.dirname(audio[u.uid][0]) for u in kept]
    )
    rows = []
    kaldi_ids: dict[str, str] = {}
    for u in kept:
        path, num_samples = audio[u.uid]
        rel = os.path.relpath(path, root)
        kaldi_ids[rel] = u.uid
        rows.append(Row(rel, num_samples, speaker=u.speaker, text=u.text))
    rows.sort(key=lambda r: r.relpath.encode("utf-8", "surrogateescape"))
    _assign_uids(rows)
    # Kaldi's convention for unknown speakers is utt == spk: that is no speaker information.
    if all(r.speaker is None or r.speaker == kaldi_ids[r.relpath] for r in rows):
        for r in rows:
            r.speaker = None
    return root, rows, kaldi_ids


def from_kaldi(
    data_dir: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    name: str | None = None,
    valid_name: str = "valid",
    valid_percent: float = 0.0,
    seed: int = 42,
    jobs: int | None = None,
    root: str | os.PathLike | None = None,
    dictionary: str | os.PathLike | None = None,
    upper: bool = True,
    verify: bool = False,
) -> Report:
    """Kaldi data dir -> ``NAME.tsv`` (+ ``.wrd``/``.ltr``/``dict.ltr.txt`` from ``text``, ``.spk`` from ``utt2spk``).

    Plain ``wav.scp`` paths become rows relative to their common folder (or
    ``root``). Utterances fairseq cannot read as files (a ``segments`` window or
    a ``cmd |`` source) are cut/run once and written as 16-bit WAV files
    ``DEST/audio/<uid>.wav``, so their TSV id is the Kaldi id. ``NAME`` defaults
    to the data dir's name.

    Example:
        >>> from_kaldi("data/kaldi/test", "data/")   # doctest: +SKIP   # writes data/test.tsv ...
    """
    report = Report()
    d, dest = Path(data_dir), Path(dest)
    utts = kaldi.read_data_dir(d)
    if not utts:
        raise W2VError(f"{d}: no utterances")
    audio = _audio_files(d, utts, dest / "audio", report, jobs=jobs or default_jobs(), verify=verify)
    if not audio:
        report.raise_if_partial(len(utts))
    root, rows, kaldi_ids = _rows_of_kaldi(utts, audio, root)
    has_text = (d / "text").is_file()
    if has_text:
        for r in rows:
            if r.text is None:
                report.fail(f"{os.path.join(root, r.relpath)}: no transcript for {kaldi_ids[r.relpath]!r} in {d / 'text'}")
        rows = [r for r in rows if r.text is not None]
    splits = _split(rows, name or d.resolve().name, valid_name, valid_percent, seed)
    write_bundle(dest, root, splits, report, with_text=has_text, dictionary=dictionary, upper=upper)
    report.raise_if_partial(len(utts))
    return report
