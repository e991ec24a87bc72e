"""Repair a Kaldi data dir as ``utils/fix_data_dir.sh`` does.

:func:`fix_data_dir` backs the tables up into ``DIR/.backup``, makes ``spk2utt``
from ``utt2spk`` when it is missing (``utils/utt2spk_to_spk2utt.pl``), drops
recordings whose audio file does not exist, keeps only the utterances every
per-utterance table has, and writes every table back sorted in C-locale byte
order (``export LC_ALL=C; sort``). It returns what it dropped and why, so the
caller can report counts.

Only table files are touched; audio is checked for existence, never read (``cmd |``
entries of ``wav.scp`` are left alone: running them would be reading audio).

Example:
    >>> report = fix_data_dir("data/train")   # doctest: +SKIP
    >>> report.kept, dict(report.dropped)   # doctest: +SKIP
    (29, {'audio file missing': 1})
"""

from __future__ import annotations

import collections
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.formats.kaldi import c_sorted, spk2utt_from_utt2spk

#: Tables keyed by utterance id (fix_data_dir.sh's filter_utts, plus ours).
UTTERANCE_TABLES = ("utt2spk", "text", "segments", "feats.scp", "utt2dur", "utt2num_frames", "utt2uniq",
                    "utt2lang", "utt2warp", "vad.scp", "utt2gender")
#: Tables keyed by recording id (keyed by utterance id when there is no ``segments``).
RECORDING_TABLES = ("wav.scp", "reco2file_and_channel", "reco2dur")
#: Tables keyed by speaker id.
SPEAKER_TABLES = ("spk2utt", "spk2gender", "cmvn.scp", "spk2warp")

# A path with a byte offset into a Kaldi archive, ``feats.ark:1234``.
_ARK_OFFSET = re.compile(r"^(.*):\d+$")


@dataclass
class FixReport:
    """What :func:`fix_data_dir` did.

    Attributes:
        kept: utterances left.
        total: utterances before (the union of the per-utterance tables' ids).
        dropped: reason -> number of utterances dropped for it.
        examples: reason -> one utterance id dropped for it.
        made: files created (``spk2utt``).
        sorted: tables that were not in C order before.
        backup: the folder holding the originals.
    """

    kept: int = 0
    total: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)
    sorted: list[str] = field(default_factory=list)
    backup: str = ""

    def drop(self, reason: str, uid: str) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, uid)

    def lines(self) -> list[str]:
        """One line per fact, for stderr (``made spk2utt``, ``dropped 1 utterance: ...``)."""
        out = [f"made {name} from utt2spk" for name in self.made]
        out += [f"sorted {name} (LC_ALL=C)" for name in self.sorted]
        for reason, n in sorted(self.dropped.items()):
            out.append(f"dropped {n} utterance{'s' if n != 1 else ''}: {reason} (e.g. {self.examples[reason]!r})")
        out.append(f"kept {self.kept} of {self.total} utterances; originals in {self.backup}")
        return out


def audio_exists(value: str) -> bool:
    """Whether a ``wav.scp`` value's audio exists: a path (or ``ark:offset``); ``cmd |`` counts as existing.

    Relative paths are relative to the current folder, as Kaldi reads them.

    Example:
        >>> audio_exists("sox in.sph -t wav - |"), audio_exists("/no/such.wav")
        (True, False)
    """
    value = value.strip()
    if value.endswith("|"):
        return True
    if os.path.exists(value):
        return True
    m = _ARK_OFFSET.match(value)
    return bool(m) and os.path.exists(m.group(1))


def _read_lines(path: Path) -> dict[str, str]:
    """``key rest`` lines -> {key: rest}; the first of duplicate keys wins (as ``sort -u -k1,1`` keeps one)."""
    table: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.strip().split(None, 1)
        if fields:
            table.setdefault(fields[0], fields[1] if len(fields) > 1 else "")
    return table


def _was_sorted(path: Path) -> bool:
    keys = [line.split(None, 1)[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return keys == c_sorted(set(keys)) and len(keys) == len(set(keys))


def _write(path: Path, table: dict[str, str]) -> None:
    with atomic_write(path) as f:
        f.writelines(f"{k} {table[k]}\n" if table[k] else f"{k}\n" for k in c_sorted(table))


def _backup(d: Path, names: list[str]) -> Path:
    """Copy the tables into ``d/.backup`` (fix_data_dir.sh keeps the last originals there)."""
    backup = d / ".backup"
    backup.mkdir(exist_ok=True)
    for name in names:
        shutil.copy2(d / name, backup / name)
    return backup


def _tables(d: Path) -> dict[str, dict[str, str]]:
    """Every known table present in ``d``, read; ``spk2utt`` made from ``utt2spk`` when missing."""
    if not (d / "utt2spk").is_file():
        raise W2VError(f"{d}: no utt2spk; fix_data_dir needs it (make one 'utt spk' per line, "
                       "or write the dir with w2v manifest --to-kaldi)")
    if not (d / "wav.scp").is_file() and not (d / "feats.scp").is_file():
        raise W2VError(f"{d}: neither wav.scp nor feats.scp: not a Kaldi data dir")
    names = [n for n in UTTERANCE_TABLES + RECORDING_TABLES + SPEAKER_TABLES if (d / n).is_file()]
    return {n: _read_lines(d / n) for n in names}


def _surviving_utterances(tables: dict[str, dict[str, str]], report: FixReport) -> set[str]:
    """Utterance ids in every per-utterance table, with audio; each drop recorded with its reason."""
    segments = tables.get("segments")
    wav = tables.get("wav.scp")
    per_utt = [n for n in UTTERANCE_TABLES if n in tables]
    if wav is not None and segments is None:
        per_utt.append("wav.scp")
    every = set().union(*(tables[n] for n in per_utt))
    report.total = len(every)
    missing_recs = {r for r, v in (wav or {}).items() if not audio_exists(v)}
    keep = set()
    for uid in c_sorted(every):
        absent = next((n for n in per_utt if uid not in tables[n]), None)
        rec = segments[uid].split()[0] if segments is not None and uid in segments else uid
        if absent is not None:
            report.drop(f"not in {absent}", uid)
        elif segments is not None and wav is not None and rec not in wav:
            report.drop("recording not in wav.scp", uid)
        elif rec in missing_recs:
            report.drop("audio file missing", uid)
        else:
            keep.add(uid)
    return keep


def fix_data_dir(data_dir: str | os.PathLike) -> FixReport:
    """Repair ``data_dir`` in place, as Kaldi's ``utils/fix_data_dir.sh``; the originals go to ``.backup``.

    Args:
        data_dir: a Kaldi data dir with ``utt2spk`` and ``wav.scp`` (or ``feats.scp``).

    Returns:
        A :class:`FixReport`: counts of what was dropped and why.

    Raises:
        W2VError: no such dir, no ``utt2spk``, or no utterance left.

    Example:
        >>> print("\\n".join(fix_data_dir("data/test").lines()))   # doctest: +SKIP
        made spk2utt from utt2spk
        sorted wav.scp (LC_ALL=C)
        dropped 1 utterance: audio file missing (e.g. 'theo-0_theo_3')
        kept 5 of 6 utterances; originals in data/test/.backup
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise W2VError(f"{d}: no such directory")
    tables = _tables(d)
    report = FixReport()
    report.backup = str(_backup(d, list(tables)))
    report.sorted = [n for n in tables if not _was_sorted(d / n)]
    keep = _surviving_utterances(tables, report)
    if not keep:
        raise W2VError(f"{d}: no utterance is in every table with its audio present; nothing written "
                       f"(originals in {report.backup})")
    report.kept = len(keep)
    utt2spk = {u: s for u, s in tables["utt2spk"].items() if u in keep}
    if "spk2utt" not in tables:
        report.made.append("spk2utt")
    tables["spk2utt"] = {s: " ".join(us) for s, us in spk2utt_from_utt2spk(utt2spk).items()}
    segments = tables.get("segments")
    recs = {segments[u].split()[0] for u in keep} if segments is not None else keep
    speakers = set(utt2spk.values())
    for name, table in tables.items():
        wanted = keep if name in UTTERANCE_TABLES or (name in RECORDING_TABLES and segments is None) else (
            recs if name in RECORDING_TABLES else speakers)
        _write(d / name, {k: v for k, v in table.items() if k in wanted})
    return report


# validate_data_dir's problems that fix_data_dir repairs, by the start of their text
_FIXABLE = ("no such file spk2utt", "empty file spk2utt", "spk2utt and utt2spk do not match", "utterance lists differ",
            "recording ids differ")
_FIXABLE_ANYWHERE = ("not in sorted order (LC_ALL=C sort)", "duplicate key", "last line has no newline", "empty line")


def fix_hint(problem: str, data_dir: str | os.PathLike) -> str:
    """The command (or option) that fixes a problem :func:`~w2vtools.formats.kaldi.validate_data_dir` reported.

    Example:
        >>> fix_hint("no such file spk2utt", "data/train")
        'run: w2v manifest --fix-kaldi data/train'
    """
    if problem.startswith(_FIXABLE) or any(s in problem for s in _FIXABLE_ANYWHERE):
        return f"run: w2v manifest --fix-kaldi {data_dir}"
    if problem.startswith("utt2spk is not in sorted order when sorted first on speaker-id"):
        return ("make speaker ids prefixes of utterance ids (w2v manifest --to-kaldi writes them so), "
                "or pass --no-spk-sort")
    if problem.startswith("no such file text"):
        return "pass --no-text if the dir has no transcripts by design"
    if problem.startswith("text:"):
        return "edit the transcripts in text (fix_data_dir cannot)"
    if problem.startswith("no such file utt2spk") or problem.startswith("empty file utt2spk"):
        return "write utt2spk ('utt spk' lines; each utterance its own speaker if unknown), then run: " \
               f"w2v manifest --fix-kaldi {data_dir}"
    return ""
