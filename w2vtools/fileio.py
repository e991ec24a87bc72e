"""Plain-file plumbing shared by every command: ``-`` for stdin/stdout, atomic outputs.

Outputs appear atomically: they are written to a temporary file in the same
directory and renamed over the destination only when complete, so a crash never
leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
