"""The one feature-file interface: flat HDF5, Kaldi ark/scp, fairseq/wav2letter ``h5context``.

Every command that writes or reads frame-level features goes through
:func:`open_feature_writer` and :func:`open_features`; a new format plugs in here.

Output specs (``OUT``):

* ``feats.h5`` (or ``.hdf5``): one flat HDF5 file, one float ``(T, D)`` dataset per
  utterance at the root. Dataset names are utterance ids with ``%`` written ``%25``
  and ``/`` written ``%2F`` (HDF5 would read a ``/`` as a group separator); every
  other character is kept, so ids without those two characters are their own keys.
  Root attributes: ``frame_shift`` (s), ``sample_rate``, ``model``, ``model_sha256``,
  ``family``, ``output``, ``layer`` (and ``num_layers`` for all layers side by side).
  ESPnet's ``hdf5`` loader and lhotse's ``numpy_hdf5`` storage read it unchanged
  (``h5py.File(path)[key][()]``).
* ``ark:-``, ``ark:f.ark``, ``ark,scp:f.ark,f.scp``: Kaldi binary float matrices
  through kaldiio (``ark:-`` is stdout, binary, nothing else written there; read
  back, ``ark:-`` or ``-`` is stdin, streamed one utterance at a time).
* a directory with ``--format h5context``: fairseq's ``wav2vec_featurize.py`` layout,
  ``DIR/<uid>.h5context`` with ``features`` (T*D, flattened time-major) and
  ``info`` = ``[frames per second, T, D]``.

Crash safety and resume: a writer builds its output beside the destination and
renames it into place only when every utterance is in (the HDF5 file as
``OUT.partial/`` segment files merged at the end; an ark as ``f.ark.partial`` with a
fsync'd index of finished entries; the scp only at the end). Reopening a writer on
the same destination keeps what was finished (:attr:`FeatureWriter.done`) and drops
what was half written, so a rerun after ``kill -9`` ends with the same file as a run
that was never interrupted (model features: up to float32 rounding, as the resumed
run batches differently). (The price: the HDF5 commit copies the data once, so the
disk needs room for the output twice at the very end.) Each finished utterance
records its input identity, so the caller can :meth:`~FeatureWriter.forget` those
whose audio changed; ``settings`` are compared on resume like the attributes.

One writer: a writer holds :func:`~w2vtools.fileio.exclusive_output` on its output.
A failed write (disk full, I/O error) is one W2VError naming the output and the
partial state kept for a rerun; no temporary file is left behind.

Example:
    >>> with open_feature_writer("feats.h5", attrs={"frame_shift": 0.02}) as w:  # doctest: +SKIP
    ...     for uid, feats in computed:
    ...         if uid not in w.done:
    ...             w.write(uid, feats)
    >>> reader = open_features("ark,scp:f.ark,f.scp")                           # doctest: +SKIP
    >>> for uid, feats in reader: ...
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from w2vtools.errors import W2VError
from w2vtools.fileio import WRITE_ERRORS, atomic_write, exclusive_output, write_error

H5_SUFFIXES = (".h5", ".hdf5")
H5CONTEXT_SUFFIX = ".h5context"


# ---------------------------------------------------------------------------------------------
# Keys


def escape_key(uid: str) -> str:
    """The HDF5 dataset name (or h5context file stem) of an utterance id.

    ``%`` becomes ``%25`` and ``/`` becomes ``%2F``; nothing else changes.

    Example:
        >>> escape_key("spk1/utt-01")
        'spk1%2Futt-01'
        >>> unescape_key(escape_key("50%/a"))
        '50%/a'
    """
    return uid.replace("%", "%25").replace("/", "%2F")


def unescape_key(key: str) -> str:
    """Inverse of :func:`escape_key`."""
    return key.replace("%2F", "/").replace("%2f", "/").replace("%25", "%")


# ---------------------------------------------------------------------------------------------
# Specs


class FeatureSpec:
    """A parsed output/input spec.

    Attributes:
        kind: ``"h5"``, ``"ark"`` (with optional scp), ``"scp"`` (read only), ``"h5context"``.
        path: the HDF5 file, the ark file (``"-"`` for stdout/stdin) or the h5context folder.
        scp: the scp file for ``ark,scp:`` and ``scp:`` specs.
    """

    def __init__(self, kind: str, path: str, scp: str | None = None):
        self.kind, self.path, self.scp = kind, path, scp

    def __repr__(self) -> str:
        return f"FeatureSpec({self.kind!r}, {self.path!r}, scp={self.scp!r})"


def parse_spec(spec: str, *, format: str | None = None) -> FeatureSpec:
    """Tell a features spec's kind from its form (see the module doc).

    Example:
        >>> parse_spec("ark,scp:a.ark,a.scp")
        FeatureSpec('ark', 'a.ark', scp='a.scp')
        >>> parse_spec("feats.h5").kind
        'h5'
    """
    spec = str(spec)
    if format == "h5context":
        return FeatureSpec("h5context", spec)
    if spec == "-":  # stdin/stdout, as every other command's '-': a Kaldi binary archive
        return FeatureSpec("ark", "-")
    if ":" in spec and spec.split(":", 1)[0].replace(",", "").isalpha() and not os.path.exists(spec):
        head, rest = spec.split(":", 1)
        opts = [o for o in head.split(",") if o]
        kinds = [o for o in opts if o in ("ark", "scp")]
        flags = set(opts) - {"ark", "scp"}
        # Kaldi's table options that do not change what is stored are accepted and ignored.
        unknown = flags - {"t", "b", "f", "o", "s", "cs", "p", "nf", "no", "ns", "ncs", "np"}
        if unknown or not kinds:
            raise W2VError(f"{spec}: not a Kaldi rspecifier/wspecifier (expected ark:, scp: or ark,scp:)")
        if "t" in flags:
            raise W2VError(f"{spec}: text archives are not supported; drop the ',t'")
        if kinds == ["ark"]:
            return FeatureSpec("ark", rest)
        if kinds == ["scp"]:
            return FeatureSpec("scp", rest, scp=rest)
        if kinds == ["ark", "scp"]:
            if rest.count(",") != 1:
                raise W2VError(f"{spec}: ark,scp: needs two files, 'ark,scp:f.ark,f.scp'")
            ark, scp = rest.split(",")
            return FeatureSpec("ark", ark, scp=scp)
        raise W2VError(f"{spec}: write 'ark,scp:' (ark first), not {head!r}")
    if spec.lower().endswith(H5_SUFFIXES):
        return FeatureSpec("h5", spec)
    if os.path.isdir(spec) and any(p.suffix == H5CONTEXT_SUFFIX for p in Path(spec).iterdir()):
        return FeatureSpec("h5context", spec)
    if spec.lower().endswith((".scp",)):
        return FeatureSpec("scp", spec, scp=spec)
    if spec.lower().endswith((".ark",)):
        return FeatureSpec("ark", spec)
    raise W2VError(
        f"{spec}: unknown features output; use NAME.h5, ark:FILE, ark,scp:FILE.ark,FILE.scp, ark:- "
        "or a folder with --format h5context"
    )


def output_paths(spec: str, *, format: str | None = None) -> list[str]:
    """The files (or folder) writing ``spec`` creates: what :func:`~w2vtools.fileio.exclusive_output` locks.

    Example:
        >>> output_paths("ark,scp:a.ark,a.scp")
        ['a.ark', 'a.scp']
        >>> output_paths("ark:-")
        []
    """
    fs = parse_spec(spec, format=format)
    return [p for p in (fs.path, fs.scp) if p and p != "-"]


# ---------------------------------------------------------------------------------------------
# Writers


class FeatureWriter(abc.ABC):
    """Base class of feature writers.

    Use as a context manager: leaving the block normally commits the output (renames
    it into place); leaving on an exception keeps the partial state for a resume.
    A writer holds :func:`~w2vtools.fileio.exclusive_output` on its output from its
    construction to the end of the block (or :meth:`discard`).

    Attributes:
        done: utterance ids already complete from an earlier, interrupted run; the
            caller skips them.
        identities: for those, the input identity each was written with (see
            :meth:`write`), so the caller can :meth:`forget` the ones whose audio changed.
        attrs: metadata stored with the output where the format allows it.
        settings: everything else that decides the features (window lengths...): kept
            with the partial state and compared on resume, not stored in the output.
    """

    resumable = True

    def __init__(self, attrs: Mapping[str, object] | None = None, settings: Mapping[str, object] | None = None,
                 lock: Iterable[str] = ()):
        self.attrs = dict(attrs or {})
        self.settings = dict(settings or {})
        self.done: set[str] = set()
        self.identities: dict[str, str] = {}
        self.num_frames: dict[str, int] = {}
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(exclusive_output(*lock))

    def meta(self) -> dict:
        """What a resumed run must match: the attributes and the settings (JSON types)."""
        return {k: _jsonable(v) for k, v in {**self.attrs, **self.settings}.items()}

    def _check_meta(self, old: Mapping, partial: Path) -> None:
        """Refuse to resume partial state written with other settings (settings an older
        version did not record are not compared)."""
        new = {k: v for k, v in self.meta().items() if k in old or k not in self.settings}
        if dict(old) != new:
            raise W2VError(
                f"{partial}: left by an interrupted run with different settings "
                f"({_attr_diff(old, new)}); delete it or rerun with the same options"
            )

    @abc.abstractmethod
    def write(self, uid: str, feats: np.ndarray, identity: str = "") -> None:
        """Store one utterance's (T, D) features; ``identity`` names the input they came from
        (no whitespace; :func:`w2vtools.batching.input_identity`), for resume checks."""

    def forget(self, uids: Iterable[str]) -> set[str]:
        """Drop finished utterances (their input changed) from the partial state; returns every
        id no longer done (a format may have to drop more than asked)."""
        if set(uids) & self.done:
            raise W2VError(f"{type(self).__name__}: cannot redo finished utterances; rerun with --no-resume")
        return set()

    def flush(self) -> None:
        """Make every utterance written so far survive a crash."""

    def commit(self) -> None:
        """Finish: put the complete output in place."""

    def abort(self) -> None:
        """Leave partial state for a later resume (default: just flush)."""
        with contextlib.suppress(Exception):
            self.flush()

    def discard(self) -> None:
        """Remove the partial state and write nothing (every input failed)."""
        self.abort()
        self._lock.close()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.abort()
        finally:
            self._lock.close()


def _check_matrix(uid: str, feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise W2VError(f"{uid}: features must be (frames, dim), got shape {feats.shape}")
    if feats.dtype.kind != "f":
        raise W2VError(f"{uid}: features must be floats, got {feats.dtype}")
    return np.ascontiguousarray(feats)


def _attr_value(v):
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return v


class HDF5Writer(FeatureWriter):
    """Flat HDF5 output, built crash-safe in ``OUT.partial/`` and merged into ``OUT`` at the end.

    Finished utterances go into segment files ``OUT.partial/seg-NNNNN.h5``; a segment
    is written under a temporary name and renamed when closed, so a segment that
    exists is whole. A segment is closed every ``flush_every`` seconds (and at
    :meth:`flush`), which bounds the work a crash can lose. :meth:`commit` copies
    every dataset, in C-sorted id order, into a temporary file renamed to ``OUT``.
    Each segment dataset carries its input identity (attribute ``w2v_input``), which
    the merge leaves out. A failed write (disk full) closes and removes the open
    segment, keeps the closed ones and raises one W2VError.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        attrs: Mapping[str, object] | None = None,
        *,
        dtype: str | None = None,
        flush_every: float = 30.0,
        resume: bool = True,
        settings: Mapping[str, object] | None = None,
    ):
        super().__init__(attrs, settings, lock=[str(path)])
        import h5py

        self._h5py = h5py
        self.path = Path(path)
        self.dtype = np.dtype(dtype) if dtype else None
        self.flush_every = float(flush_every)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._segment = None
        self._segment_tmp: Path | None = None
        self._segment_opened = 0.0
        self._next_segment = 0
        try:
            if self.partial.is_dir() and resume:
                self._resume()
            else:
                if self.partial.exists():
                    shutil.rmtree(self.partial)
                self.partial.mkdir(parents=True)
                self._write_meta()
        except WRITE_ERRORS as e:
            self._lock.close()
            raise write_error(self.partial, e) from None
        except BaseException:
            self._lock.close()
            raise

    def _write_meta(self) -> None:
        with atomic_write(self.partial / "attrs.json") as f:
            json.dump(self.meta(), f, sort_keys=True)

    def _resume(self) -> None:
        """Take over the finished segments of an interrupted run with the same settings."""
        meta_path = self.partial / "attrs.json"
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if old is not None:
            self._check_meta(old, self.partial)
        for seg in sorted(self.partial.glob("seg-*.h5")):
            try:
                with self._h5py.File(seg, "r") as f:
                    for key in f:
                        uid = unescape_key(key)
                        self.done.add(uid)
                        self.num_frames[uid] = f[key].shape[0]
                        self.identities[uid] = _py(f[key].attrs.get("w2v_input", ""))
            except OSError:
                seg.unlink()  # cannot happen for renamed segments, but never trust a torn file
                continue
            self._next_segment = max(self._next_segment, int(seg.stem.split("-")[1]) + 1)
        for tmp in self.partial.glob(".seg-*.tmp"):
            tmp.unlink()  # a segment the crash caught half written
        if old is None:
            self._write_meta()

    def forget(self, uids: Iterable[str]) -> set[str]:
        """Rewrite the segments holding ``uids`` without them (each segment replaced atomically)."""
        drop = {escape_key(u) for u in uids if u in self.done}
        for seg in sorted(self.partial.glob("seg-*.h5")):
            with self._h5py.File(seg, "r") as f:
                if not drop & set(f):
                    continue
                tmp = seg.with_name(f".{seg.stem}.tmp")
                with self._h5py.File(tmp, "w") as g:
                    for key in f:
                        if key not in drop:
                            f.copy(f[key], g, name=key)
            os.replace(tmp, seg)
        gone = {unescape_key(k) for k in drop}
        for uid in gone:
            self.done.discard(uid)
            self.num_frames.pop(uid, None)
            self.identities.pop(uid, None)
        return gone

    def _open_segment(self):
        name = f"seg-{self._next_segment:05d}"
        self._next_segment += 1
        self._segment_tmp = self.partial / f".{name}.tmp"
        self._segment_final = self.partial / f"{name}.h5"
        self._segment = self._h5py.File(self._segment_tmp, "w")
        self._segment_opened = time.monotonic()

    def write(self, uid: str, feats: np.ndarray, identity: str = "") -> None:
        feats = _check_matrix(uid, feats)
        if uid in self.num_frames:
            raise W2VError(f"{self.path}: utterance {uid!r} written twice")
        if self.dtype is not None:
            feats = feats.astype(self.dtype, copy=False)
        try:
            if self._segment is None:
                self._open_segment()
            ds = self._segment.create_dataset(escape_key(uid), data=feats)
            if identity:
                ds.attrs["w2v_input"] = identity
        except WRITE_ERRORS as e:
            self._drop_segment()
            raise write_error(self.path, e, kept=self.partial) from None
        self.num_frames[uid] = feats.shape[0]
        if time.monotonic() - self._segment_opened >= self.flush_every:
            self.flush()

    def _drop_segment(self) -> None:
        """Give up the open segment after a failed write: close it (errors ignored) and remove it."""
        if self._segment is not None:
            with contextlib.suppress(Exception):
                self._segment.close()
            self._segment = None
        if self._segment_tmp is not None:
            with contextlib.suppress(OSError):
                self._segment_tmp.unlink()

    def flush(self) -> None:
        if self._segment is None:
            return
        try:
            self._segment.close()
            with open(self._segment_tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self._segment_tmp, self._segment_final)
        except WRITE_ERRORS as e:
            self._drop_segment()
            raise write_error(self.path, e, kept=self.partial) from None
        _fsync_dir(self.partial)
        self._segment = None

    def commit(self) -> None:
        self.flush()
        segs = sorted(self.partial.glob("seg-*.h5"))
        merge_hdf5(segs, self.path, attrs=self.attrs, kept=self.partial)
        shutil.rmtree(self.partial)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.flush()

    def discard(self) -> None:
        self._drop_segment()
        shutil.rmtree(self.partial, ignore_errors=True)
        self._lock.close()


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _attr_diff(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {_jsonable(new.get(k))!r}" for k in keys if old.get(k) != _jsonable(new.get(k))]
    return ", ".join(diffs[:3])


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def merge_hdf5(inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *, attrs: Mapping | None = None,
               kept: str | os.PathLike | None = None) -> int:
    """Join flat HDF5 feature files into ``out`` (atomic), datasets in C-sorted id order.

    Root attributes come from ``attrs`` or else the first input; inputs whose
    attributes disagree on ``frame_shift``/``model``/``layer``/``output`` are an error,
    as is an id present twice. Returns the number of utterances. A failed write
    (disk full) removes the temporary file and raises one W2VError (naming ``kept``,
    where the inputs wait for a rerun, when given).

    Example:
        >>> merge_hdf5(["feats.1.h5", "feats.2.h5"], "feats.h5")   # doctest: +SKIP
        3000
    """
    import h5py

    inputs = [Path(p) for p in inputs]
    handles = []
    try:
        owner: dict[str, int] = {}
        root_attrs = dict(attrs) if attrs is not None else None
        for i, p in enumerate(inputs):
            try:
                h = h5py.File(p, "r")
            except OSError as e:
                raise W2VError(f"{p}: not a readable HDF5 file ({e})") from None
            handles.append(h)
            a = {k: _py(v) for k, v in h.attrs.items()}
            if root_attrs is None:
                root_attrs = a
            elif attrs is None:
                for k in ("frame_shift", "model", "model_sha256", "layer", "output"):
                    if k in a and k in root_attrs and a[k] != root_attrs[k]:
                        raise W2VError(f"{p}: attribute {k}={a[k]!r} differs from {inputs[0]}'s {root_attrs[k]!r}")
            for key in h:
                if key in owner:
                    raise W2VError(f"{p}: utterance {unescape_key(key)!r} is also in {inputs[owner[key]]}")
                owner[key] = i
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            with h5py.File(tmp, "w") as dst:
                for k, v in sorted((root_attrs or {}).items()):
                    dst.attrs[k] = _attr_value(v)
                for key in sorted(owner, key=lambda k: unescape_key(k).encode("utf-8")):
                    src = handles[owner[key]]
                    src.copy(src[key], dst, name=key)
                    if "w2v_input" in dst[key].attrs:  # resume bookkeeping, not part of the output
                        del dst[key].attrs["w2v_input"]
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out)
        except BaseException as e:
            with contextlib.suppress(OSError):
                tmp.unlink()  # no hidden half-merged file is left behind
            if isinstance(e, WRITE_ERRORS):
                raise write_error(out, e, kept=kept) from None
            raise
        return len(owner)
    finally:
        for h in handles:
            h.close()


def _py(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


class KaldiWriter(FeatureWriter):
    """Kaldi binary matrices via kaldiio: ``ark:-`` (stdout), ``ark:f.ark`` or ``ark,scp:f.ark,f.scp``.

    A file ark is written as ``f.ark.partial`` next to ``f.ark.partial.index`` (a JSON
    line of attributes and settings, then one ``uid start end frames input`` line per
    finished entry, fsync'd at :meth:`flush`). On resume the ark is cut back to the
    last indexed entry. :meth:`commit` renames the ark and then writes the scp
    (C-sorted by id, offsets into the final ark name), so the scp exists only for a
    complete ark.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        attrs: Mapping[str, object] | None = None,
        *,
        flush_every: float = 30.0,
        resume: bool = True,
        settings: Mapping[str, object] | None = None,
    ):
        super().__init__(attrs, settings, lock=[p for p in (spec.path, spec.scp) if p and p != "-"])
        import kaldiio

        self._kaldiio = kaldiio
        self.spec = spec
        self.flush_every = float(flush_every)
        self._last_flush = time.monotonic()
        self.entries: list[tuple[str, int, int]] = []  # uid, start of matrix, end
        if spec.path == "-":
            if spec.scp:
                self._lock.close()
                raise W2VError("ark,scp:-,...: an scp needs a seekable ark file, not stdout")
            self.resumable = False
            self._stream = sys.stdout.buffer
            self._index = None
            return
        self.path = Path(spec.path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.index_path = self.path.with_name(self.path.name + ".partial.index")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.partial.exists() and self.index_path.exists():
                self._read_index()
                self._stream = open(self.partial, "r+b")
            else:
                self._stream = open(self.partial, "wb")
            self._rewrite_index()
        except WRITE_ERRORS as e:
            self._lock.close()
            raise write_error(self.path, e) from None
        except BaseException:
            self._lock.close()
            raise

    def _read_index(self) -> None:
        """Take over the indexed entries of an interrupted run with the same settings."""
        meta, *lines = self.index_path.read_text().splitlines() or ["{}"]
        self._check_meta(json.loads(meta), self.partial)
        size = self.partial.stat().st_size
        for line in lines:
            fields = line.split()
            if len(fields) not in (4, 5):
                break  # a torn last line
            uid, start, end, frames = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
            if end > size:
                break
            self.entries.append((uid, start, end))
            self.done.add(uid)
            self.num_frames[uid] = frames
            self.identities[uid] = fields[4] if len(fields) == 5 and fields[4] != "-" else ""

    def _rewrite_index(self) -> None:
        """Cut the ark after the last entry and write the index of the entries kept (fsync'd)."""
        good_end = self.entries[-1][2] if self.entries else 0
        self._stream.truncate(good_end)
        self._stream.seek(good_end)
        self._index = open(self.index_path, "w")
        self._index.write(json.dumps(self.meta(), sort_keys=True) + "\n")
        for uid, start, end in self.entries:
            self._index.write(f"{uid} {start} {end} {self.num_frames[uid]} {self.identities.get(uid) or '-'}\n")
        self._sync()

    def forget(self, uids: Iterable[str]) -> set[str]:
        """An ark is append-only: cut it before the first entry to forget; every later one goes too."""
        wanted = set(uids)
        first = next((i for i, (uid, _, _) in enumerate(self.entries) if uid in wanted), None)
        if first is None:
            return set()
        gone = {uid for uid, _, _ in self.entries[first:]}
        self.entries = self.entries[:first]
        for uid in gone:
            self.done.discard(uid)
            self.num_frames.pop(uid, None)
            self.identities.pop(uid, None)
        self._index.close()
        self._rewrite_index()
        return gone

    def write(self, uid: str, feats: np.ndarray, identity: str = "") -> None:
        feats = _check_matrix(uid, feats)
        if not uid or any(c.isspace() for c in uid):
            raise W2VError(f"utterance id {uid!r}: Kaldi archive keys cannot be empty or contain whitespace")
        if uid in self.num_frames:
            raise W2VError(f"{self.spec.path}: utterance {uid!r} written twice")
        if feats.dtype not in (np.float32, np.float64):
            # Kaldi has no half-precision matrices.
            feats = feats.astype(np.float32)
        if self._index is None:
            self._kaldiio.save_ark(self._stream, {uid: feats})
            self.num_frames[uid] = feats.shape[0]
            return
        try:
            start = self._stream.tell()
            self._kaldiio.save_ark(self._stream, {uid: feats})
            end = self._stream.tell()
            # The scp offset points just past "uid ", at the binary matrix header.
            self.entries.append((uid, start + len(uid.encode("utf-8")) + 1, end))
            self.num_frames[uid] = feats.shape[0]
            self._index.write(f"{uid} {self.entries[-1][1]} {end} {feats.shape[0]} {identity or '-'}\n")
        except WRITE_ERRORS as e:
            raise write_error(self.path, e, kept=self.partial) from None
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def _sync(self) -> None:
        # ark first, then the index that vouches for it
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._index.flush()
        os.fsync(self._index.fileno())
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        if self._index is None:
            self._stream.flush()
            return
        try:
            self._sync()
        except WRITE_ERRORS as e:
            raise write_error(self.path, e, kept=self.partial) from None

    def commit(self) -> None:
        if self._index is None:
            self._stream.flush()
            return
        self.flush()
        self._stream.close()
        self._index.close()
        os.replace(self.partial, self.path)
        if self.spec.scp:
            offsets = {uid: start for uid, start, _ in self.entries}
            with atomic_write(self.spec.scp) as f:
                for uid in sorted(offsets, key=lambda u: u.encode("utf-8")):
                    f.write(f"{uid} {self.spec.path}:{offsets[uid]}\n")
        os.unlink(self.index_path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.flush()
        if self._index is not None:
            for f in (self._stream, self._index):
                with contextlib.suppress(Exception):
                    f.close()

    def discard(self) -> None:
        self.abort()
        if self._index is not None:
            for p in (self.partial, self.index_path):
                with contextlib.suppress(OSError):
                    p.unlink()
        self._lock.close()


class H5ContextWriter(FeatureWriter):
    """fairseq/wav2letter layout: ``DIR/<escaped uid>.h5context`` per utterance.

    Each file is written to a temporary name and renamed, so a file that exists
    is complete; a rerun skips the ones already there. Each file records its input
    identity (attribute ``w2v_input``; fairseq's reader ignores it).
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, object] | None = None, *, resume: bool = True,
                 settings: Mapping[str, object] | None = None):
        super().__init__(attrs, settings, lock=[str(path)])
        import h5py

        self._h5py = h5py
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            self._lock.close()
            raise W2VError(f"{self.path}: --format h5context writes a folder, and this is a file")
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob(".*.h5context.tmp"):
            tmp.unlink()
        if resume:
            for p in self.path.glob(f"*{H5CONTEXT_SUFFIX}"):
                uid = unescape_key(p.name[: -len(H5CONTEXT_SUFFIX)])
                self.done.add(uid)
                with contextlib.suppress(OSError), h5py.File(p, "r") as f:
                    self.identities[uid] = _py(f.attrs.get("w2v_input", ""))
        fs = float(self.attrs.get("frame_shift") or 0.01)
        self.frames_per_second = round(1.0 / fs)

    def forget(self, uids: Iterable[str]) -> set[str]:
        gone = set(uids) & self.done
        for uid in gone:
            (self.path / (escape_key(uid) + H5CONTEXT_SUFFIX)).unlink()
            self.done.discard(uid)
            self.identities.pop(uid, None)
        return gone

    def write(self, uid: str, feats: np.ndarray, identity: str = "") -> None:
        feats = _check_matrix(uid, feats)
        name = escape_key(uid) + H5CONTEXT_SUFFIX
        tmp = self.path / f".{name}.tmp"
        try:
            with self._h5py.File(tmp, "w") as f:
                f["features"] = feats.reshape(-1)
                f["info"] = np.array([self.frames_per_second, feats.shape[0], feats.shape[1]], dtype=np.float64)
                if identity:
                    f.attrs["w2v_input"] = identity
            os.replace(tmp, self.path / name)
        except WRITE_ERRORS as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise write_error(self.path / name, e, kept=self.path) from None
        self.num_frames[uid] = feats.shape[0]

    def discard(self) -> None:
        if self._created:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()


def open_feature_writer(
    spec: str,
    attrs: Mapping[str, object] | None = None,
    *,
    format: str | None = None,
    dtype: str | None = None,
    flush_every: float = 30.0,
    resume: bool = True,
    settings: Mapping[str, object] | None = None,
) -> FeatureWriter:
    """A writer for ``spec`` (see the module doc for the forms).

    Args:
        spec: ``*.h5``, ``ark:-``, ``ark:f.ark``, ``ark,scp:f.ark,f.scp``, or a folder
            with ``format="h5context"``.
        attrs: metadata (frame_shift, sample_rate, model, model_sha256, output, layer...);
            a resumed run must pass the same attrs.
        dtype: store as this float type (HDF5 only; ``float16`` halves the size).
        flush_every: seconds between crash-safe flushes.
        resume: keep utterances finished by an interrupted run with the same spec.
        settings: what else decides the features (compared on resume, not stored in the output).

    Example:
        >>> w = open_feature_writer("ark,scp:f.ark,f.scp", {"frame_shift": 0.02})  # doctest: +SKIP
    """
    fs = parse_spec(spec, format=format)
    if fs.kind == "h5":
        return HDF5Writer(fs.path, attrs, dtype=dtype, flush_every=flush_every, resume=resume, settings=settings)
    if dtype not in (None, "float32"):
        raise W2VError(f"{spec}: --dtype {dtype} needs an HDF5 output (Kaldi archives hold float32)")
    if fs.kind == "ark":
        return KaldiWriter(fs, attrs, flush_every=flush_every, resume=resume, settings=settings)
    if fs.kind == "h5context":
        return H5ContextWriter(fs.path, attrs, resume=resume, settings=settings)
    raise W2VError(f"{spec}: cannot write to an scp alone; use ark,scp:FILE.ark,FILE.scp")


# ---------------------------------------------------------------------------------------------
# Readers


class FeatureReader(abc.ABC):
    """Read features by id or in order; ``attrs`` holds what the file records.

    Example:
        >>> r = open_features("feats.h5")          # doctest: +SKIP
        >>> r.attrs["frame_shift"], len(r)
        (0.02, 3000)
        >>> x = r["0_jackson_0"]                   # (T, D) numpy
    """

    attrs: dict
    is_stream: bool = False  # True when the features can be read only once, in order (stdin)

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """Utterance ids in file order."""

    @abc.abstractmethod
    def __getitem__(self, uid: str) -> np.ndarray:
        """One utterance's (T, D) features."""

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, uid: str) -> bool:
        return uid in set(self.keys())

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for uid in self.keys():
            yield uid, self[uid]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HDF5Reader(FeatureReader):
    def __init__(self, path: str):
        import h5py

        try:
            self._f = h5py.File(path, "r")
        except FileNotFoundError:
            partial = f"{path}.partial"
            hint = f" ({partial} exists: the run that writes it has not finished)" if os.path.isdir(partial) else ""
            raise W2VError(f"{path}: no such file{hint}") from None
        except OSError as e:
            raise W2VError(f"{path}: not a readable HDF5 file ({e})") from None
        self.path = path
        self.attrs = {k: _py(v) for k, v in self._f.attrs.items()}
        self._keys = {unescape_key(k): k for k in self._f}

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, uid: str) -> bool:
        return uid in self._keys

    def __getitem__(self, uid: str) -> np.ndarray:
        try:
            return self._f[self._keys[uid]][()]
        except KeyError:
            raise W2VError(f"{self.path}: no features for {uid!r}") from None

    def close(self) -> None:
        self._f.close()


class KaldiReader(FeatureReader):
    """``scp:``/``.scp`` (random access), ``ark:f.ark`` or ``ark:-`` (stdin).

    Iterating streams an ark in file order, one matrix at a time, so a pipe
    (``w2v featurize DATA ark:- | w2v decode --features ark:- ...``) keeps memory
    flat. Asking a stream for its ids or one id's matrix reads the rest of it into
    memory; callers that can iterate check :attr:`is_stream` first. Matrices are
    returned writable (kaldiio hands out read-only views of its buffer, which torch
    warns about with an internal path).
    """

    def __init__(self, spec: FeatureSpec):
        import kaldiio

        self.attrs = {}
        self.spec = spec
        self._streamed = False
        if spec.scp:
            if not os.path.exists(spec.scp):
                raise W2VError(f"{spec.scp}: no such file")
            self._table = kaldiio.load_scp(spec.scp)
            self._keys = list(self._table.keys())
        else:
            if spec.path != "-" and not os.path.exists(spec.path):
                raise W2VError(f"{spec.path}: no such file")
            self._table = None
            self._keys = None

    @property
    def is_stream(self) -> bool:
        """True for ``ark:-``: it can be read once, in order."""
        return self.spec.path == "-" and not self.spec.scp

    def keys(self) -> list[str]:
        if self._keys is None:
            self._load_ark()
        return list(self._keys)

    def _source(self):
        if self.spec.path != "-":
            return self.spec.path
        if self._streamed:
            raise W2VError("ark:- (stdin) was read already; a stream can be read once: write the features "
                           "to a file (ark,scp:f.ark,f.scp or f.h5)")
        self._streamed = True
        return sys.stdin.buffer

    def _load_ark(self):
        import kaldiio

        self._table = {uid: _writable(x) for uid, x in kaldiio.load_ark(self._source())}
        self._keys = list(self._table)

    def __iter__(self):
        import kaldiio

        if self._keys is None:
            # stream the ark without holding it all
            for uid, x in kaldiio.load_ark(self._source()):
                yield uid, _writable(x)
            return
        yield from super().__iter__()

    def __getitem__(self, uid: str) -> np.ndarray:
        if self._table is None:
            self._load_ark()
        try:
            return _writable(self._table[uid])
        except KeyError:
            raise W2VError(f"{self.spec.scp or self.spec.path}: no features for {uid!r}") from None


def _writable(x) -> np.ndarray:
    """``x`` as a writable array: a copy only when kaldiio handed out a read-only buffer view."""
    return np.require(np.asarray(x), requirements="W")


class H5ContextReader(FeatureReader):
    def __init__(self, path: str):
        import h5py

        self._h5py = h5py
        self.path = Path(path)
        self._files = {
            unescape_key(p.name[: -len(H5CONTEXT_SUFFIX)]): p for p in sorted(self.path.glob(f"*{H5CONTEXT_SUFFIX}"))
        }
        self.attrs = {}

    def keys(self) -> list[str]:
        return list(self._files)

    def __getitem__(self, uid: str) -> np.ndarray:
        with self._h5py.File(self._files[uid], "r") as f:
            info = f["info"][()]
            return f["features"][()].reshape(int(info[1]), int(info[2]))


def open_features(spec: str) -> FeatureReader:
    """A reader for a features file: ``*.h5``, ``ark:f.ark``, ``scp:f.scp``, ``f.scp``, ``ark,scp:...``, h5context folder.

    Example:
        >>> with open_features("scp:data/train/feats.scp") as r:   # doctest: +SKIP
        ...     for uid, x in r: print(uid, x.shape)
    """
    fs = parse_spec(spec)
    if fs.kind == "h5":
        return HDF5Reader(fs.path)
    if fs.kind in ("ark", "scp"):
        return KaldiReader(fs)
    return H5ContextReader(fs.path)


# ---------------------------------------------------------------------------------------------
# Merge


def merge_features(inputs: list[str], out: str, *, format: str | None = None) -> int:
    """Join shard outputs into one: HDF5 files into one HDF5, any readable specs into any writable spec.

    HDF5 -> HDF5 copies datasets without decoding them; scp files -> a plain ``.scp``
    path concatenates the index (the arks stay where they are). Every id must occur once.

    Example:
        >>> merge_features(["feats.1.h5", "feats.2.h5"], "feats.h5")   # doctest: +SKIP
    """
    if not inputs:
        raise W2VError("merge: no input files given")
    in_specs = [parse_spec(s) for s in inputs]
    out_spec = parse_spec(out, format=format)
    if out_spec.kind == "h5" and all(s.kind == "h5" for s in in_specs):
        for s in in_specs:
            if not os.path.exists(s.path):
                raise W2VError(f"{s.path}: no such file")
        return merge_hdf5([s.path for s in in_specs], out_spec.path)
    if out_spec.kind == "scp" and all(s.kind == "scp" or (s.kind == "ark" and s.scp) for s in in_specs):
        from w2vtools.formats.kaldi import read_kaldi_table, write_kaldi_table

        table: dict[str, str] = {}
        for s in in_specs:
            for uid, loc in read_kaldi_table(s.scp).items():
                if uid in table:
                    raise W2VError(f"{s.scp}: utterance {uid!r} occurs in more than one input")
                table[uid] = loc
        write_kaldi_table(out_spec.path, table)
        return len(table)
    seen: set[str] = set()
    attrs = None
    readers = [open_features(s) for s in inputs]
    try:
        attrs = next((r.attrs for r in readers if r.attrs), {})
        with open_feature_writer(out, attrs, format=format, resume=False) as w:
            for name, r in zip(inputs, readers):
                for uid, x in r:
                    if uid in seen:
                        raise W2VError(f"{name}: utterance {uid!r} occurs in more than one input")
                    seen.add(uid)
                    w.write(uid, x)
    finally:
        for r in readers:
            r.close()
    return len(seen)
