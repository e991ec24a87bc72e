"""A tiny LibriSpeech-layout corpus built at test time from real speech.

LibriSpeech keeps ``<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` with one
``<spk>-<chapter>.trans.txt`` per chapter (``<uid> UPPER CASE WORDS`` lines).
:func:`build_librispeech_fixture` arranges the real clips of ``../shared/data``
that way, resampled to 16 kHz FLAC as LibriSpeech's audio is:

* LJ Speech (one reader, real sentences, normalized text upper-cased with
  punctuation removed, as LibriSpeech's transcripts are): ``train-clean-100``
  (16 clips), ``dev-clean``, ``test-clean``, ``dev-other``, ``test-other`` (4 each).
  LJ Speech has a single reader, so the "speakers" here are groups of 4 clips.
* FSDD digits (6 real speakers, the digit as a word): ``train-other-500``,
  the part the librispeech recipe treats as unlabeled audio for self-training
  (its transcripts are there, so the recipe can score its pseudo-labels).

It also writes an ``lm/`` folder like openslr's resource 11 holds: the LM
training text (``librispeech-lm-norm.txt``, here LJ Speech's lm_text.txt
normalized the same way, no evaluation sentence in it), a lexicon
``librispeech-lexicon.txt`` (word, then its letters standing in for phones) and
``4-gram.arpa.gz`` estimated from that text with KenLM's lmplz (needs
tools/install_kenlm.sh).

Example:
    >>> root = build_librispeech_fixture(Path("../shared/data"), tmp_path)   # doctest: +SKIP
    >>> sorted(p.name for p in (root / "LibriSpeech").iterdir())[:2]
    ['dev-clean', 'dev-other']
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import soundfile

from w2vtools.audio import load_audio
from w2vtools.lm import build_lm

LJ_PARTS = [("train-clean-100", 16), ("dev-clean", 4), ("test-clean", 4), ("dev-other", 4), ("test-other", 4)]
DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
UNLABELED_PART = "train-other-500"


def normalize_transcript(text: str) -> str:
    """LibriSpeech-style: upper case, letters and apostrophes only, single spaces.

    Example:
        >>> normalize_transcript("Printing, in the only sense -- with which")
        'PRINTING IN THE ONLY SENSE WITH WHICH'
    """
    return " ".join(re.sub(r"[^A-Z']+", " ", text.upper()).split())


def _write_flac(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(dest), load_audio(str(src), sample_rate=16000), 16000, format="FLAC", subtype="PCM_16")


def _write_chapter(part_dir: Path, spk: int, chapter: int, items: list[tuple[Path, str]]) -> None:
    chap_dir = part_dir / str(spk) / str(chapter)
    lines = []
    for i, (src, text) in enumerate(items):
        uid = f"{spk}-{chapter}-{i:04d}"
        _write_flac(src, chap_dir / f"{uid}.flac")
        lines.append(f"{uid} {text}\n")
    (chap_dir / f"{spk}-{chapter}.trans.txt").write_text("".join(lines), encoding="utf-8")


def build_librispeech_fixture(shared_data: Path, dest: Path, *, fsdd_per_speaker: int = 3) -> Path:
    """Build ``dest/LibriSpeech/<part>/...`` and ``dest/lm/``; returns ``dest``.

    Args:
        shared_data: the ``../shared/data`` folder (ljspeech/, fsdd/recordings/).
        dest: where to build (created).
        fsdd_per_speaker: FSDD clips per speaker in the unlabeled part.
    """
    lj = shared_data / "ljspeech"
    texts = {}
    for line in (lj / "metadata.csv").read_text(encoding="utf-8").splitlines():
        fields = line.split("|")
        if len(fields) == 3:
            texts[fields[0]] = normalize_transcript(fields[2])
    clips = sorted(p for p in (lj / "wavs").glob("*.flac") if p.stem in texts)
    need = sum(n for _, n in LJ_PARTS)
    if len(clips) < need:
        raise ValueError(f"{lj}: need {need} transcribed clips, found {len(clips)}")

    root = dest / "LibriSpeech"
    pos = 0
    spk = 1001
    for part, n in LJ_PARTS:
        part_clips = clips[pos : pos + n]
        pos += n
        # groups of 4 clips: one "speaker" with one chapter each
        for g in range(0, n, 4):
            group = part_clips[g : g + 4]
            _write_chapter(root / part, spk, 100 + spk % 100, [(c, texts[c.stem]) for c in group])
            spk += 1

    rec = shared_data / "fsdd" / "recordings"
    for k, name in enumerate(FSDD_SPEAKERS):
        items = []
        for i in range(fsdd_per_speaker):
            digit = (k + 3 * i) % 10
            items.append((rec / f"{digit}_{name}_{10 + i}.wav", DIGITS[digit]))
        _write_chapter(root / UNLABELED_PART, 2001 + k, 300 + k, items)

    lm_dir = dest / "lm"
    lm_dir.mkdir(parents=True, exist_ok=True)
    lm_lines = [normalize_transcript(t) for t in (lj / "lm_text.txt").read_text(encoding="utf-8").splitlines()]
    lm_lines = [t for t in lm_lines if t]
    # the digit words, so the unlabeled part's words are in the vocabulary too
    lm_lines += [" ".join(DIGITS[(i + j) % 10] for j in range(3)) for i in range(10)]
    (lm_dir / "librispeech-lm-norm.txt").write_text("\n".join(lm_lines) + "\n", encoding="utf-8")
    vocab = sorted({w for t in lm_lines for w in t.split()} | {w for t in texts.values() for w in t.split()})
    (lm_dir / "librispeech-lexicon.txt").write_text(
        "".join(f"{w}\t{' '.join(ch for ch in w)}\n" for w in vocab), encoding="utf-8"
    )
    # openslr ships the 4-gram as gzipped ARPA; estimate ours with KenLM the same way
    arpa = lm_dir / "4-gram.arpa"
    build_lm(str(lm_dir / "librispeech-lm-norm.txt"), str(arpa), order=4, normalize=False, memory="200M")
    with open(arpa, "rb") as src, gzip.open(lm_dir / "4-gram.arpa.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    arpa.unlink()
    return dest
