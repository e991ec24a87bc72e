"""Plain-file plumbing shared by every command: ``-`` for stdin/stdout, atomic outputs, one writer.

Outputs appear atomically: they are written to a temporary file in the same
directory and renamed over the destination only when complete, so a crash never
leaves a half-written file that looks finished.

One output, one writer: a command that writes ``OUT`` first takes
:func:`exclusive_output` on it, an exclusive ``flock`` on ``OUT.lock`` that holds the
writer's pid. A second process asking for the same output fails at once, naming the
output and that pid. The kernel drops a flock when its holder dies, so the lock of a
killed run is taken over by the next one without any staleness heuristics.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

from w2vtools.errors import W2VError


def is_stdio(path: str | os.PathLike | None) -> bool:
    return str(path) == "-"


@contextlib.contextmanager
def open_input(path: str | os.PathLike, mode: str = "r", encoding: str = "utf-8") -> Iterator[IO]:
    """Open ``path`` for reading, or stdin for ``-``; a missing file is a W2VError naming it."""
    if is_stdio(path):
        yield sys.stdin.buffer if "b" in mode else sys.stdin
        return
    try:
        f = open(path, mode, encoding=None if "b" in mode else encoding)
    except FileNotFoundError:
        raise W2VError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise W2VError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise W2VError(f"{path}: permission denied") from None
    with f:
        yield f


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Write ``path`` atomically (temp file + fsync + rename); ``-`` writes to stdout.

    A full disk (or another device error) removes the temporary file and raises one
    W2VError naming ``path``; the destination is untouched.

    Example:
        >>> with atomic_write("out.txt") as f:   # doctest: +SKIP
        ...     f.write("utt1 hello\\n")
    """
    if is_stdio(path):
        stream = sys.stdout.buffer if "b" in mode else sys.stdout
        yield stream
        stream.flush()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; give the finished file the permissions open() would (0666 & ~umask).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DEVICE_ERRNOS:
            raise write_error(path, e) from None
        raise


#: errno values of a write the device refused (disk full, quota, I/O error, file too large)
DEVICE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_table(path: str | os.PathLike, *, min_fields: int = 2, max_split: int = 1) -> Iterator[tuple[str, ...]]:
    """Read a Kaldi-style table (``key value ...``), skipping blank lines.

    Yields tuples of up to ``max_split + 1`` fields (the last keeps inner spaces).
    A line with fewer than ``min_fields`` fields is a W2VError naming file and line.
    """
    with open_input(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = tuple(line.strip().split(None, max_split))
            if len(fields) < min_fields:
                raise W2VError(f"{path}:{lineno}: expected at least {min_fields} fields, got {line!r}")
            yield fields


# ---------------------------------------------------------------------------------------------
# One output, one writer

LOCK_SUFFIX = ".lock"

_held: dict[str, list] = {}  # lock path -> [open lock file, holders in this process]
_held_guard = threading.Lock()


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``OUT.lock`` beside it (a folder output: beside the folder)."""
    p = Path(os.path.abspath(path))
    return p.with_name(p.name + LOCK_SUFFIX)


def _take(lock: Path, output: str | os.PathLike):
    """Open and flock ``lock`` without waiting; a W2VError naming the holder's pid when it is taken."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(lock, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                f.close()
                raise W2VError(f"{output}: cannot lock {lock} ({e.strerror})") from None
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise W2VError(
                f"{output}: another w2v process (pid {pid}) is writing this output; "
                f"wait for it or stop it (its lock: {lock})"
            ) from None
        # the holder unlinks the lock file before releasing it: a lock on an unlinked
        # inode guards nothing, so take the file that is there now instead
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            return f
        f.close()


def _release(lock: Path) -> None:
    with _held_guard:
        entry = _held.get(str(lock))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[str(lock)]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)
    entry[0].close()  # closing drops the flock


@contextlib.contextmanager
def exclusive_output(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Be the only process writing ``paths`` (``-`` and None are skipped) for the block.

    Re-entrant within a process (a command and the writer it opens may both ask).
    The lock files are removed on leaving the block.

    Raises:
        W2VError: another live process holds one of the outputs (its pid is named).

    Example:
        >>> with exclusive_output("feats.h5"):   # doctest: +SKIP
        ...     write_everything()
    """
    taken: list[Path] = []
    try:
        for path in paths:
            if path is None or is_stdio(path):
                continue
            lock = lock_path(path)
            with _held_guard:
                entry = _held.get(str(lock))
                if entry is not None:
                    entry[1] += 1
                else:
                    _held[str(lock)] = [_take(lock, path), 1]
            taken.append(lock)
        yield
    finally:
        for lock in reversed(taken):
            _release(lock)


#: What a failed write raises: OSError, or h5py's RuntimeError for some HDF5 calls (a copy on a full disk)
WRITE_ERRORS = (OSError, RuntimeError)


def write_error(path: str | os.PathLike, e: Exception, kept: str | os.PathLike | None = None) -> W2VError:
    """The one-line error for a failed write (disk full, I/O error, quota): names the file and what is kept.

    Example:
        >>> str(write_error("feats.h5", OSError(28, "No space left on device"), kept="feats.h5.partial"))
        'feats.h5: write failed: No space left on device; the finished work is kept in feats.h5.partial: make room and rerun to resume'
    """
    tail = f"; the finished work is kept in {kept}: make room and rerun to resume" if kept else ""
    return W2VError(f"{path}: write failed: {os_reason(e)}{tail}")


def os_reason(e: Exception) -> str:
    """The reason of an OSError in a few words; h5py's long HDF5 messages cut to their ``error message``.

    Example:
        >>> os_reason(OSError("Unable to create (file write failed: errno = 28, error message = 'No space left on device')"))
        'No space left on device'
    """
    text = str(e)
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        return found.group(1)
    if getattr(e, "errno", None) and getattr(e, "strerror", None):
        return e.strerror
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__
