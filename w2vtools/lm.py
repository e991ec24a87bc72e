"""n-gram language models with KenLM, and the lexicons that go with them.

* :func:`normalize_line` maps text onto a CTC dictionary's alphabet: case folded to
  the dictionary's case, dashes and slashes become spaces, other punctuation is
  dropped (characters of the alphabet, such as ``'``, are kept). Words holding
  digits or other characters outside the alphabet are left as they are (they stay
  in the LM text but cannot be spelled, so they are not in the lexicon) and
  reported.
* :func:`build_lm` runs KenLM's ``lmplz`` (modified Kneser-Ney) and, for a ``.bin``
  output, ``build_binary``. The tools come from ``$KENLM_BIN``, ``PATH`` or
  ``<repo>/tools/bin`` (``tools/install_kenlm.sh`` builds them there).
* :func:`write_lexicon`: ``WORD W O R D |`` for every word spellable with the
  dictionary, the lexicon format of flashlight/torchaudio's ``ctc_decoder``.
* ``units="letter"``: the LM is over the CTC tokens (``H E L L O |``), for the
  lexicon-free beam search (``w2v decode --decoder beam --lm``); orders up to 6.
* :func:`evaluate_lm`: perplexity and OOV rate of a text under a model (KenLM's
  Python module), counted as KenLM's ``query`` counts them (``</s>`` included).
* :func:`warn_lexicon_lm_mismatch`: where a lexicon and an LM meet (``w2v lm
  --lexicon``, ``w2v decode --decoder kenlm``), one warning with counts and examples
  for the words in one but not the other.
* :func:`quiet_native_stderr`: KenLM's C++ loader writes "Loading the LM will be
  faster if you build a binary file" and a progress bar to stderr; they are
  silenced unless ``-v``.

Example:
    >>> normalize_line("Mrs. Fry's self-imposed task, in 1817!", set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
    "MRS FRY'S SELF IMPOSED TASK IN 1817"
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator

import kenlm

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, open_input
from w2vtools.formats.labels import SPECIAL_SYMBOLS, WORD_BOUNDARY, read_dictionary, words_to_letters

log = logging.getLogger("w2v.lm")

REPO = Path(__file__).resolve().parents[1]
# characters that join words: they become spaces (self-imposed -> SELF IMPOSED)
_JOINERS = set("-\u2010\u2011\u2012\u2013\u2014\u2015/")


def find_kenlm_tool(name: str) -> str:
    """Path of a KenLM binary: ``$KENLM_BIN/name``, then ``PATH``, then ``<repo>/tools/bin``.

    Raises:
        W2VError: one line saying to run ``tools/install_kenlm.sh``.

    Example:
        >>> find_kenlm_tool("lmplz")   # doctest: +SKIP
        '/work/main/tools/bin/lmplz'
    """
    env = os.environ.get("KENLM_BIN")
    candidates = []
    if env:
        candidates.append(Path(env) / name)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    candidates.append(REPO / "tools" / "bin" / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise W2VError(
        f"KenLM's {name} not found (looked in $KENLM_BIN, PATH and {REPO / 'tools' / 'bin'}): "
        f"run tools/install_kenlm.sh"
    )


def alphabet_of(tokens: Iterable[str]) -> set[str]:
    """The characters words are spelled with: single-character dictionary symbols except ``|``.

    Example:
        >>> sorted(alphabet_of(["<s>", "|", "A", "B", "'"]))
        ["'", 'A', 'B']
    """
    return {t for t in tokens if t not in SPECIAL_SYMBOLS and t != WORD_BOUNDARY and len(t) == 1}


def _case_of(alphabet: set[str]) -> str | None:
    letters = [c for c in alphabet if c.isalpha()]
    if letters and all(c.isupper() for c in letters):
        return "upper"
    if letters and all(c.islower() for c in letters):
        return "lower"
    return None


@dataclasses.dataclass
class NormalizeReport:
    """What normalization did, for the log."""

    lines: int = 0
    words: int = 0
    dropped_chars: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    number_words: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unspellable_words: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def log(self, source: str) -> None:
        log.info("%s: %d lines, %d words after normalization", source, self.lines, self.words)
        if self.dropped_chars:
            top = ", ".join(f"{c!r} x{n}" for c, n in self.dropped_chars.most_common(12))
            log.info("%s: dropped punctuation %s", source, top)
        if self.number_words:
            top = ", ".join(f"{w} x{n}" for w, n in self.number_words.most_common(8))
            log.warning(
                "%s: %d words with digits left as they are (not spellable, not in the lexicon): %s",
                source, sum(self.number_words.values()), top,
            )
        if self.unspellable_words:
            top = ", ".join(f"{w} x{n}" for w, n in self.unspellable_words.most_common(8))
            log.warning(
                "%s: %d words with characters outside the dictionary (not in the lexicon): %s",
                source, sum(self.unspellable_words.values()), top,
            )


def normalize_line(line: str, alphabet: set[str], report: NormalizeReport | None = None) -> str:
    """One line of text mapped onto ``alphabet`` (see the module doc).

    Example:
        >>> normalize_line("\\"Hello,\\" she said -- twice.", set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
        'HELLO SHE SAID TWICE'
    """
    case = _case_of(alphabet)
    if case == "upper":
        line = line.upper()
    elif case == "lower":
        line = line.lower()
    out_words = []
    for raw in line.split():
        chars = []
        for c in raw:
            if c in alphabet or c.isalnum():
                chars.append(c)
            elif c in _JOINERS:
                chars.append(" ")
            elif unicodedata.category(c).startswith(("P", "S")):
                if report is not None:
                    report.dropped_chars[c] += 1
            else:
                chars.append(c)
        for word in "".join(chars).split():
            # an apostrophe opening a word is a quotation mark ('city ...'); a closing one
            # is kept, since it is more often a plural possessive (prisoners') than a quote
            word = word.lstrip("'")
            if not word:
                continue
            if report is not None:
                if any(c.isdigit() for c in word):
                    report.number_words[word] += 1
                elif any(c not in alphabet for c in word):
                    report.unspellable_words[word] += 1
            out_words.append(word)
    if report is not None:
        report.lines += 1
        report.words += len(out_words)
    return " ".join(out_words)


def spellable(word: str, alphabet: set[str]) -> bool:
    """True when every character of ``word`` is in ``alphabet``."""
    return bool(word) and all(c in alphabet for c in word)


def write_lexicon(path: str | os.PathLike, words: Iterable[str], alphabet: set[str]) -> int:
    """``WORD W O R D |`` for every spellable word, sorted; returns how many were written.

    Example:
        >>> write_lexicon("lexicon.txt", ["HI", "1817"], set("HI"))   # doctest: +SKIP
        1
    """
    keep = sorted({w for w in words if spellable(w, alphabet)}, key=lambda w: w.encode("utf-8"))
    with atomic_write(path) as f:
        for w in keep:
            f.write(f"{w} {' '.join(w)} {WORD_BOUNDARY}\n")
    return len(keep)


def _run(cmd: list[str], what: str) -> None:
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-3:]
        hint = ""
        if "BadDiscount" in proc.stderr or "discount" in proc.stderr.lower():
            hint = " (too little text for Kneser-Ney discounts at this order: add --discount-fallback or lower --order)"
        raise W2VError(f"{what} failed{hint}: {' | '.join(tail)}")


def build_lm(
    text: str,
    output: str,
    *,
    order: int = 4,
    dict_path: str | None = None,
    lexicon: str | None = None,
    extra_words: Iterable[str] = (),
    prune: Iterable[int] = (),
    normalize: bool = True,
    units: str = "word",
    normalized_output: str | None = None,
    memory: str = "10%",
    discount_fallback: bool = False,
    binary_type: str = "probing",
) -> dict:
    """Normalize ``text``, estimate an ``order``-gram with lmplz, write ARPA or binary, and the lexicon.

    Args:
        text: training text, one sentence a line (``-`` = stdin).
        output: ``*.arpa`` (text) or any other name (KenLM binary via build_binary).
        dict_path: fairseq ``dict.ltr.txt``: its alphabet drives normalization and the lexicon.
        lexicon: where to write the lexicon (needs ``dict_path``).
        extra_words: more text files whose (normalized, spellable) words join the lexicon
            but not the LM (they get the LM's ``<unk>`` probability).
        prune: lmplz ``--prune`` thresholds per order (e.g. ``0 0 1``).

    Returns:
        a summary dict (lines, words, vocabulary, lexicon size, output paths).

    Example:
        >>> build_lm("lm_text.txt", "lm.bin", order=4, dict_path="dict.ltr.txt", lexicon="lexicon.txt")  # doctest: +SKIP
    """
    prune = _check_build_options(order, units, lexicon, dict_path, binary_type, prune)
    # The tools are looked up before the text is read, so a missing KenLM fails at once.
    lmplz = find_kenlm_tool("lmplz")
    build_binary = None if output.endswith(".arpa") else find_kenlm_tool("build_binary")
    alphabet = alphabet_of(read_dictionary(dict_path)) if dict_path else None
    if normalize and alphabet is None:
        log.info("no --dict: text is only split on whitespace (no case or punctuation normalization)")
    report = NormalizeReport()
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".w2v-lm.", dir=out_path.parent) as tmp:
        norm_path = Path(tmp) / "text.txt"
        counts = _write_training_text(text, norm_path, alphabet if normalize else None, units, report)
        if normalized_output:
            with atomic_write(normalized_output) as f, open(norm_path, encoding="utf-8") as src:
                shutil.copyfileobj(src, f)
        arpa = Path(tmp) / "lm.arpa"
        cmd = [lmplz, "-o", str(order), "--text", str(norm_path), "--arpa", str(arpa), "-S", memory, "-T", tmp]
        if prune:
            cmd += ["--prune", *map(str, prune)]
        # A few dozen letter types never give Kneser-Ney the count-of-counts it needs for
        # 1-grams: letter LMs always use lmplz's fallback discounts.
        if discount_fallback or units == "letter":
            cmd += ["--discount_fallback"]
        _run(cmd, "lmplz")
        final_tmp = Path(tmp) / "final"
        if build_binary:
            _run([build_binary, "-S", memory, "-T", str(Path(tmp) / "bb"), binary_type, str(arpa), str(final_tmp)],
                 "build_binary")
        else:
            arpa.rename(final_tmp)
        shutil.move(str(final_tmp), str(out_path) + ".tmp")
        os.replace(str(out_path) + ".tmp", out_path)
    summary = {"lines": report.lines, "words": report.words, "vocabulary": len(counts), "output": output}
    if lexicon:
        summary["lexicon"] = lexicon
        summary["lexicon_words"] = _write_lexicon_of(lexicon, set(counts), extra_words, alphabet, dict_path)
        warn_lexicon_lm_mismatch(lexicon, output, lm_words=set(counts) - LM_SPECIAL_WORDS)
    log.info("%s: %d-gram over %d words (vocabulary %d)", output, order, report.words, len(counts))
    return summary


def _check_build_options(
    order: int, units: str, lexicon: str | None, dict_path: str | None, binary_type: str, prune: Iterable[int]
) -> list[int]:
    """The options of :func:`build_lm` that cannot go together, as one-line errors; returns ``prune`` as ints."""
    if order < 1 or order > 6:
        raise W2VError(f"--order {order}: KenLM here is built for orders 1 to 6")
    if units not in ("word", "letter"):
        raise W2VError(f"--units must be word or letter, got {units!r}")
    if units == "letter" and lexicon:
        raise W2VError("--units letter builds a token-level LM for lexicon-free decoding: it has no lexicon")
    if lexicon and not dict_path:
        raise W2VError("--lexicon needs --dict (the dictionary whose tokens spell the words)")
    if binary_type not in ("probing", "trie"):
        raise W2VError(f"--binary-type must be probing or trie, got {binary_type!r}")
    prune = [int(p) for p in prune]
    if prune and (len(prune) > order or any(p < 0 for p in prune) or prune != sorted(prune)):
        raise W2VError(f"--prune {' '.join(map(str, prune))}: at most {order} non-decreasing counts")
    return prune


def _write_training_text(
    text: str, path: Path, alphabet: set[str] | None, units: str, report: NormalizeReport
) -> collections.Counter:
    """The text lmplz reads: normalized to ``alphabet`` (else whitespace-split), letter units for
    ``units="letter"``, empty lines dropped. Returns the counts of its tokens.

    Raises:
        W2VError: when no words are left.
    """
    counts: collections.Counter = collections.Counter()
    with open_input(text) as fin, open(path, "w", encoding="utf-8") as fout:
        for line in fin:
            if alphabet is not None:
                line = normalize_line(line, alphabet, report)
            else:
                line = " ".join(line.split())
                report.lines += 1
                report.words += len(line.split()) if line else 0
            if line:
                if units == "letter":
                    line = words_to_letters(line, upper=False)
                fout.write(line + "\n")
                counts.update(line.split())
    report.log("<stdin>" if text == "-" else text)
    if not counts:
        raise W2VError(f"{text}: no words after normalization")
    return counts


def _write_lexicon_of(
    lexicon: str, words: set[str], extra_words: Iterable[str], alphabet: set[str], dict_path: str
) -> int:
    """The lexicon of the LM's words and those of the ``extra_words`` files; returns how many were spellable."""
    for extra in extra_words:
        with open_input(extra) as f:
            for line in f:
                words.update(normalize_line(line, alphabet).split())
    n = write_lexicon(lexicon, words, alphabet)
    log.info("%s: %d words (of %d in the text and extra word lists) spellable with %s",
             lexicon, n, len(words), dict_path)
    return n


@dataclasses.dataclass
class Evaluation:
    sentences: int
    words: int
    oovs: int
    log10_prob: float
    log10_prob_in_vocab: float

    @property
    def perplexity(self) -> float:
        """Including OOVs: 10^(-log10 P / (words + sentences)), ``</s>`` counted as KenLM's query does."""
        return 10 ** (-self.log10_prob / (self.words + self.sentences))

    @property
    def perplexity_without_oovs(self) -> float:
        n = self.words + self.sentences - self.oovs
        return 10 ** (-self.log10_prob_in_vocab / n) if n else math.nan

    @property
    def oov_rate(self) -> float:
        return 100.0 * self.oovs / self.words if self.words else math.nan

    def format(self) -> str:
        return (
            f"perplexity {self.perplexity:.2f} (without OOVs {self.perplexity_without_oovs:.2f}), "
            f"OOV rate {self.oov_rate:.2f}% [ {self.oovs} / {self.words} words ], {self.sentences} sentences"
        )


def evaluate_lm(text: str, lm: str, *, dict_path: str | None = None, units: str = "word") -> Evaluation:
    """Perplexity and OOV rate of ``text`` (normalized with ``dict_path``'s alphabet when given).

    With ``units="letter"`` the text is scored as letter units (``H I | T H E R E |``, see
    :func:`w2vtools.formats.labels.words_to_letters`),
    and "words" in the counts are those units.

    Example:
        >>> print(evaluate_lm("test.txt", "lm.bin").format())   # doctest: +SKIP
        perplexity 312.55 (without OOVs 251.10), OOV rate 2.10% [ 120 / 5713 words ], 300 sentences
    """
    if not Path(lm).is_file():
        raise W2VError(f"{lm}: no such file")
    try:
        model = call_quietly(kenlm.Model, lm)
    except (OSError, RuntimeError) as e:
        raise W2VError(f"{lm}: not a KenLM ARPA or binary model ({e})") from None
    alphabet = alphabet_of(read_dictionary(dict_path)) if dict_path else None
    sentences = words = oovs = 0
    total = in_vocab = 0.0
    with open_input(text) as f:
        for line in f:
            line = normalize_line(line, alphabet) if alphabet is not None else " ".join(line.split())
            if not line:
                continue
            if units == "letter":
                line = words_to_letters(line, upper=False)
            sentences += 1
            words += len(line.split())
            for prob, _, oov in model.full_scores(line, bos=True, eos=True):
                total += prob
                if oov:
                    oovs += 1
                else:
                    in_vocab += prob
    if sentences == 0:
        raise W2VError(f"{text}: no sentences")
    return Evaluation(sentences, words, oovs, total, in_vocab)


# ---------------------------------------------------------------------------------------------
# Where an LM and a lexicon meet


#: KenLM's own vocabulary entries, never in a lexicon.
LM_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})
_KENLM_BINARY_MAGIC = b"mmap lm "
_warned_pairs: set[tuple[str, str]] = set()


@contextlib.contextmanager
def quiet_native_stderr(what: str = "KenLM") -> Iterator[None]:
    """Silence what C/C++ code writes to stderr (file descriptor 2) inside the block, unless ``-v``.

    KenLM's loader prints a hint and a progress bar there, below Python's logging.
    With ``-v`` (debug logging) nothing is silenced; when the block fails, what was
    silenced is written out after all, so no error message is lost.

    Example:
        >>> with quiet_native_stderr():   # doctest: +SKIP
        ...     model = kenlm.Model("lm.arpa")
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.debug("silenced %d bytes of %s output on stderr (-v shows them)", captured.tell(), what)


def call_quietly(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` inside :func:`quiet_native_stderr`: a KenLM load, silent unless ``-v``.

    Example:
        >>> decoder = call_quietly(ctc_decoder, lexicon="lexicon.txt", tokens=tokens, lm="lm.arpa")  # doctest: +SKIP
    """
    with quiet_native_stderr():
        return fn(*args, **kwargs)


def lexicon_words(path: str | os.PathLike) -> set[str]:
    """The words of a lexicon (``WORD t1 t2 ... |`` lines, :func:`write_lexicon`'s format).

    Example:
        >>> lexicon_words("lexicon.txt")   # doctest: +SKIP
        {'HELLO', 'WORLD'}
    """
    with open_input(path) as f:
        return {fields[0] for fields in (line.split(None, 1) for line in f) if fields}


def arpa_vocabulary(path: str | os.PathLike) -> set[str]:
    """The words of an ARPA model's ``\\1-grams:`` section (``<s> </s> <unk>`` left out); reads no further.

    Example:
        >>> sorted(arpa_vocabulary("lm.arpa"))[:3]   # doctest: +SKIP
        ['A', 'ABOUT', 'ACROSS']
    """
    words: set[str] = set()
    in_unigrams = False
    with open_input(path) as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif in_unigrams and (not line or line.startswith("\\")):
                break
            elif in_unigrams:
                fields = line.split()
                if len(fields) >= 2:
                    words.add(fields[1])
    if not in_unigrams:
        raise W2VError(f"{path}: not an ARPA model (no \\1-grams: section)")
    return words - LM_SPECIAL_WORDS


def lm_vocabulary(path: str | os.PathLike) -> set[str] | None:
    """An LM's words: an ARPA's 1-grams, or a KenLM binary's through the kenlm module's ``vocab``.

    Returns None when the vocabulary cannot be read (a binary, and a kenlm module
    without ``vocab``, as the released one is).

    Example:
        >>> "THE" in lm_vocabulary("lm.arpa")   # doctest: +SKIP
        True
    """
    with open(path, "rb") as f:
        binary = f.read(len(_KENLM_BINARY_MAGIC)) == _KENLM_BINARY_MAGIC
    if not binary:
        return arpa_vocabulary(path)
    with quiet_native_stderr():
        model = kenlm.Model(str(path))
    vocab = getattr(model, "vocab", None)
    if vocab is None:
        log.debug("%s: a KenLM binary, and this kenlm module cannot list its vocabulary: "
                  "lexicon words are checked one by one, LM words missing from the lexicon are not", path)
        return None
    return set(vocab() if callable(vocab) else vocab) - LM_SPECIAL_WORDS


def _binary_lacks(path: str | os.PathLike, words: Iterable[str]) -> set[str]:
    """The ``words`` a KenLM binary does not know (asked one by one: ``word in model``)."""
    with quiet_native_stderr():
        model = kenlm.Model(str(path))
    return {w for w in words if w not in model}


def _examples(words: set[str], n: int = 5) -> str:
    shown = sorted(words, key=lambda w: w.encode("utf-8"))[:n]
    return ", ".join(shown) + (", ..." if len(words) > n else "")


def vocabulary_mismatch(lexicon: set[str], lm_words: set[str] | None, *, lm_lacks: set[str] | None = None,
                        lexicon_name: str = "lexicon", lm_name: str = "LM") -> list[str]:
    """The warnings for words in the lexicon but not the LM, and in the LM but not the lexicon.

    Args:
        lexicon: the lexicon's words.
        lm_words: the LM's words (None: unknown, only ``lm_lacks`` is reported).
        lm_lacks: the lexicon words the LM lacks, when found another way (a binary LM).

    Example:
        >>> vocabulary_mismatch({"A", "B"}, {"A", "C"})
        ['1 of 2 lexicon words are not in LM (they get its <unk> score), e.g. B', '1 of 2 LM words are not in lexicon (the decoder can never output them), e.g. C']
    """
    if lm_lacks is None:
        lm_lacks = lexicon - lm_words if lm_words is not None else set()
    out = []
    if lm_lacks:
        out.append(f"{len(lm_lacks)} of {len(lexicon)} {lexicon_name} words are not in {lm_name} "
                   f"(they get its <unk> score), e.g. {_examples(lm_lacks)}")
    if lm_words is not None and lm_words - lexicon:
        missing = lm_words - lexicon
        out.append(f"{len(missing)} of {len(lm_words)} {lm_name} words are not in {lexicon_name} "
                   f"(the decoder can never output them), e.g. {_examples(missing)}")
    return out


def warn_lexicon_lm_mismatch(lexicon: str | os.PathLike | None, lm: str | os.PathLike | None,
                             lm_words: set[str] | None = None) -> list[str]:
    """Warn (once per lexicon and LM in a process) about words in one but not the other; returns the warnings.

    Args:
        lexicon: the lexicon file (None: nothing to compare).
        lm: the ARPA or KenLM binary model (None: nothing to compare).
        lm_words: the LM's vocabulary when the caller has it (``w2v lm`` counted it).

    Example:
        >>> warn_lexicon_lm_mismatch("exp/lexicon.txt", "exp/lm.bin")   # doctest: +SKIP
        ['3 of 1200 exp/lexicon.txt words are not in exp/lm.bin (they get its <unk> score), e.g. ...']
    """
    key = (str(lexicon), str(lm))
    if not lexicon or not lm or key in _warned_pairs:
        return []
    _warned_pairs.add(key)
    words = lexicon_words(lexicon)
    if lm_words is None:
        lm_words = lm_vocabulary(lm)
    lm_lacks = _binary_lacks(lm, words) if lm_words is None else None
    warnings = vocabulary_mismatch(words, lm_words, lm_lacks=lm_lacks, lexicon_name=str(lexicon), lm_name=str(lm))
    for w in warnings:
        log.warning("%s", w)
    return warnings
