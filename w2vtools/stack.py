"""The installed stack: what is there, what is missing, and one line for what is broken.

torch and torchaudio ship compiled code that must come from matching builds: torchaudio 2.11.1
installed over torch 2.11.0 fails on import with an ``undefined symbol`` deep in a traceback,
although its metadata admits that torch. The CLI's last-resort handler asks
:func:`torchaudio_load_failure` about every unexpected exception, so a broken pair stops any
command with one line that names the cause and the fix. ``w2v doctor`` (:func:`check_stack`) reports every piece at once, and compares the
environment with the lock (``requirements.lock``, see :func:`lock_drift`).

Example:
    >>> kaldi = import_torchaudio("torchaudio.compliance.kaldi")   # doctest: +SKIP
    >>> [c.name for c in check_stack() if not c.ok]                 # doctest: +SKIP
    []
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from w2vtools import __version__
from w2vtools.errors import W2VError

REPO = Path(__file__).resolve().parents[1]
# The lock this install is checked against; tools/lock.sh points it at a candidate while testing one.
LOCK = Path(os.environ.get("W2V_LOCK") or REPO / "requirements.lock")
INSTALL_HINT = "bash tools/setup.sh (installs requirements.lock)"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _locked_versions(path: Path = LOCK) -> dict[str, str]:
    """``{normalized name: version}`` of the lock entries whose markers hold here."""
    return {name: version for name, version, marker in read_lock(path) if _marker_holds(marker)}


def _fix_for_torch_pair() -> str:
    locked = _locked_versions() if LOCK.is_file() else {}
    if "torch" in locked and "torchaudio" in locked:
        pins = f"pip install torch=={locked['torch']} torchaudio=={locked['torchaudio']}"
        return f"install the tested pair: {pins} (pinned in {LOCK.name}; or {INSTALL_HINT})"
    return "install a torch release that this torchaudio was built for, e.g. " + INSTALL_HINT


def torchaudio_cause(exc: BaseException) -> str:
    """Why torchaudio did not load, with the versions that met: the first half of the one line."""
    ta, torch = _version("torchaudio"), _version("torch")
    detail = " ".join(str(exc).split())
    if len(detail) > 160:
        detail = "..." + detail[-157:]
    if ta is None:
        return "torchaudio is not installed"
    if isinstance(exc, OSError) or "undefined symbol" in detail or "libtorchaudio" in detail:
        return f"torchaudio {ta} does not load against torch {torch} ({detail})"
    return f"torchaudio {ta} failed to import with torch {torch} ({type(exc).__name__}: {detail})"


def torchaudio_failure(exc: BaseException) -> str:
    """One line: why torchaudio did not load, and the command that fixes it.

    Example:
        >>> torchaudio_failure(OSError("libtorchaudio.so: undefined symbol: foo"))   # doctest: +SKIP
        'torchaudio 2.11.1 does not load against torch 2.11.0 (libtorchaudio.so: undefined symbol: foo): install ...'
    """
    return f"{torchaudio_cause(exc)}: {_fix_for_torch_pair()}"


def import_torchaudio(module: str = "torchaudio"):
    """Import torchaudio (or one of its submodules); a broken install becomes one W2VError line.

    Raises:
        W2VError: the cause (versions, the loader's message) and the fix.
    """
    try:
        return importlib.import_module(module)
    except (OSError, ImportError, RuntimeError) as e:
        raise W2VError(torchaudio_failure(e)) from e


def torchaudio_load_failure(exc: BaseException) -> str | None:
    """The one line for an exception raised while loading torchaudio; None for any other.

    The CLI's last-resort handler asks this, so every command that reaches torchaudio, now or
    later, reports a broken pair the same way without wrapping each import.
    """
    if not isinstance(exc, (OSError, ImportError)):
        return None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
        if "/torchaudio/" in filename:
            return torchaudio_failure(exc)
        tb = tb.tb_next
    return torchaudio_failure(exc) if "libtorchaudio" in str(exc) else None


def require_flashlight_text() -> None:
    """The flashlight CTC decoder's bindings (torchaudio's ``ctc_decoder`` needs them)."""
    if importlib.util.find_spec("flashlight") is None or _version("flashlight-text") is None:
        raise W2VError("flashlight-text is not installed (needed by --decoder kenlm/beam): "
                       "pip install flashlight-text, or " + INSTALL_HINT)


def find_tool(name: str, *, env_dir: str | None = None, repo_dir: Path | None = None) -> str | None:
    """First executable ``name`` in ``$env_dir``, PATH, then ``repo_dir``; None when absent."""
    candidates = []
    if env_dir and os.environ.get(env_dir):
        candidates.append(Path(os.environ[env_dir]) / name)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    if repo_dir is not None:
        candidates.append(repo_dir / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


# ---- the lock -------------------------------------------------------------------------------

_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.+))?$")


def normalize(name: str) -> str:
    """PEP 503 name: ``Flashlight_Text`` -> ``flashlight-text``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> list[tuple[str, str, str | None]]:
    """``(normalized name, version, marker or None)`` for each pinned line of a pip lock file.

    Raises:
        W2VError: a line that is neither a pin, a comment nor blank.
    """
    entries = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        m = _LOCK_LINE.match(line)
        if not m:
            raise W2VError(f"{path}:{number}: not a 'name==version [; marker]' pin: {raw.strip()!r}")
        entries.append((normalize(m.group(1)), m.group(2), m.group(3)))
    return entries


def _marker_holds(marker: str | None) -> bool:
    if not marker:
        return True
    from packaging.markers import Marker

    return Marker(marker).evaluate()


@dataclass(frozen=True)
class Drift:
    """One lock entry that the environment does not match."""

    name: str
    locked: str
    installed: str | None

    def __str__(self) -> str:
        return f"{self.name} {self.installed or 'missing'} (lock: {self.locked})"


def lock_drift(path: Path = LOCK) -> list[Drift]:
    """Lock entries (those whose markers hold here) that are missing or at another version.

    A local version label (``2.14.1+cpu`` for ``2.14.1``) counts as the same release.
    """
    from packaging.version import Version

    drift = []
    for name, version, marker in read_lock(path):
        if not _marker_holds(marker):
            continue
        installed = _version(name)
        if installed is None or Version(installed).public != Version(version).public:
            drift.append(Drift(name, version, installed))
    return drift


# ---- w2v doctor ------------------------------------------------------------------------------


@dataclass
class Check:
    """One line of ``w2v doctor``: a piece of the stack, what was found, and the fix when broken."""

    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = True


def _check_torch() -> Check:
    try:
        import torch
    except Exception as e:  # an unloadable torch: report, never raise
        return Check("torch", False, f"does not import ({type(e).__name__}: {e})", INSTALL_HINT)
    devices = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    return Check("torch", True, f"{torch.__version__} ({build}); devices: {', '.join(devices)}")


def _check_torchaudio() -> Check:
    """Import torchaudio and run each piece w2v uses on a few samples."""
    try:
        import torch

        kaldi = importlib.import_module("torchaudio.compliance.kaldi")
        functional = importlib.import_module("torchaudio.functional")
        transforms = importlib.import_module("torchaudio.transforms")
        wav = torch.randn(1, 1600)
        kaldi.fbank(wav, sample_frequency=16000)
        transforms.Resample(8000, 16000)(wav)
        emission = torch.randn(1, 10, 5).log_softmax(-1)
        functional.forced_align(emission, torch.tensor([[1, 2]], dtype=torch.int32), blank=0)
    except Exception as e:
        return Check("torchaudio", False, torchaudio_cause(e), _fix_for_torch_pair())
    return Check("torchaudio", True, f"{_version('torchaudio')}: fbank, Resample, forced_align work")


def _check_flashlight() -> Check:
    try:
        require_flashlight_text()
    except W2VError as e:
        return Check("flashlight-text", False, str(e).split(" (")[0], INSTALL_HINT)
    try:
        decoder = import_torchaudio("torchaudio.models.decoder")
    except W2VError:
        return Check("flashlight-text", True, f"{_version('flashlight-text')} (ctc_decoder not tried: torchaudio does not load)")
    try:
        decoder.ctc_decoder(lexicon=None, tokens=["-", "|", "a"], lm=None, blank_token="-", sil_token="|")
    except Exception as e:
        return Check("flashlight-text", False, f"ctc_decoder fails ({type(e).__name__}: {e})", INSTALL_HINT)
    return Check("flashlight-text", True, f"{_version('flashlight-text')}: ctc_decoder works")


def _check_module(dist: str, module: str, why: str) -> Check:
    try:
        importlib.import_module(module)
    except Exception as e:
        return Check(dist, False, f"does not import ({type(e).__name__}: {e}; {why})", INSTALL_HINT)
    return Check(dist, True, _version(dist) or "?")


def _check_binary(name: str, fix: str, required: bool, why: str, **where) -> Check:
    path = find_tool(name, **where)
    if path is None:
        return Check(name, False, f"not found ({why})", fix, required)
    return Check(name, True, path, required=required)


def _check_lock() -> Check:
    if not LOCK.is_file():
        return Check("lock", True, "no requirements.lock beside this install (a package install)", required=False)
    drift = lock_drift()
    total = len(_locked_versions())
    if not drift:
        return Check("lock", True, f"{LOCK}: all {total} pinned distributions installed as locked")
    shown = ", ".join(map(str, drift[:4])) + (f", and {len(drift) - 4} more" if len(drift) > 4 else "")
    return Check("lock", False, f"{len(drift)} of {total} differ from {LOCK.name}: {shown}",
                 f"pip install -r {LOCK}")


def check_stack() -> list[Check]:
    """Every piece of the stack w2v needs, each checked for real (imports, a tiny run)."""
    kenlm_bin = REPO / "tools" / "bin"
    kenlm_fix = "bash tools/install_kenlm.sh"
    return [
        Check("w2v", True, f"{__version__} ({Path(__file__).parent})"),
        Check("python", sys.version_info[:2] == (3, 11),
              f"{platform.python_version()} ({sys.executable})", "use Python 3.11 (tools/setup.sh makes the venv)"),
        _check_torch(),
        _check_torchaudio(),
        _check_flashlight(),
        _check_module("kenlm", "kenlm", "the KenLM decoder's Python module"),
        _check_module("h5py", "h5py", "HDF5 features"),
        _check_module("soundfile", "soundfile", "audio files"),
        _check_binary("lmplz", kenlm_fix, True, "w2v lm", env_dir="KENLM_BIN", repo_dir=kenlm_bin),
        _check_binary("build_binary", kenlm_fix, True, "w2v lm --binary", env_dir="KENLM_BIN", repo_dir=kenlm_bin),
        _check_binary("sclite", "apt-get install sctk", False, "optional: the sclite comparison tests",
                      repo_dir=Path("/usr/lib/sctk/bin")),
        _check_lock(),
    ]
