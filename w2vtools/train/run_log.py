"""The run's log: one line on stderr, the same record in ``log.jsonl`` and TensorBoard.

Every record is a flat dict with ``kind`` (``train``, ``valid``, or ``warning``: a
guard's message, logged as a warning and kept out of TensorBoard), ``update`` and
``epoch`` plus numbers, and when it was written: ``time`` (wall clock, ISO 8601 UTC,
``2026-12-01T07:46:06.123Z``) and ``elapsed`` (seconds of running since the run
started; a resumed run continues from the last record it kept, so time spent stopped
is not counted). Every process keeps its records in :attr:`RunLog.history` (tests
read it); only the main process writes. Every key is explained in
``docs/training_logs.md``.

Example:
    >>> run_log = RunLog(Path("exp/tiny"), is_main=True, tensorboard=False)      # doctest: +SKIP
    >>> run_log.write({"kind": "train", "update": 10, "epoch": 0, "loss": 4.1})
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from w2vtools.fileio import atomic_write

log = logging.getLogger("w2v.train")

# the stderr line shows these first, in this order, then whatever else the record has
_ORDER = ("loss", "accuracy", "ppl", "word_ppl", "code_perplexity", "prob_perplexity", "temp", "wer", "uer", "lr",
          "gnorm",
          "audio_s_per_s", "mem_mb")
_SHORT = {"accuracy": "acc", "code_perplexity": "code_ppl", "prob_perplexity": "prob_ppl",
          "audio_s_per_s": "audio_s/s", "mem_mb": "mem_MB"}
_NOT_ON_THE_LINE = {"kind", "update", "epoch", "nsentences", "seconds", "time", "elapsed"}


class Meter:
    """Stats summed over the updates since the last train record."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.stats: dict[str, float] = {}
        self.updates = 0
        self.gnorm = 0.0
        self.samples = 0.0
        self.start = time.perf_counter()

    def add(self, stats: dict[str, float], gnorm: float, samples: float) -> None:
        for k, v in stats.items():
            self.stats[k] = self.stats.get(k, 0.0) + v
        self.updates += 1
        self.gnorm += gnorm
        self.samples += samples

    def pause(self, since: float) -> None:
        """Leave the time since ``since`` (validation, saving) out of the throughput."""
        self.start += time.perf_counter() - since

    def rates(self, sample_rate: float) -> dict[str, float]:
        """Mean lr and gradient norm per update, and audio seconds per second."""
        elapsed = max(1e-9, time.perf_counter() - self.start)
        n = max(1, self.updates)
        return {"lr": self.stats.get("lr", 0.0) / n, "gnorm": self.gnorm / n,
                "audio_s_per_s": self.samples / sample_rate / elapsed}


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated on the GPU, or resident on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timestamp() -> dict[str, str]:
    """``{"time": now}``, wall-clock UTC in ISO 8601 with milliseconds and ``Z``.

    Example:
        >>> timestamp()   # doctest: +SKIP
        {'time': '2026-12-01T07:46:06.123Z'}
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


def format_number(value: float) -> str:
    """A number for the stderr line: 4 significant digits, or exponent notation when tiny or huge.

    Example:
        >>> format_number(0.000123), format_number(3.14159), format_number(0)
        ('1.230e-04', '3.142', '0')
    """
    if value == 0:
        return "0"
    if not math.isfinite(value) or abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


class RunLog:
    """Writes records to stderr (logging), ``save_dir/log.jsonl`` and ``save_dir/tensorboard/``.

    Args:
        save_dir: the run directory.
        is_main: only the main process writes; every process keeps :attr:`history`.
        tensorboard: also write TensorBoard event files.
    """

    def __init__(self, save_dir: Path, *, is_main: bool, tensorboard: bool) -> None:
        self.save_dir = Path(save_dir)
        self.is_main = is_main
        self.tensorboard = tensorboard
        self.history: list[dict[str, Any]] = []
        self._writer: SummaryWriter | None = None
        self._start = time.monotonic()
        self._elapsed_before = 0.0  # a resumed run's elapsed time when it stopped

    def write(self, record: dict[str, Any]) -> None:
        """Stamp ``record`` with ``time`` and ``elapsed``, keep it and, on the main process, write it to all
        three outputs."""
        record.update(timestamp(), elapsed=round(self._elapsed_before + time.monotonic() - self._start, 3))
        self.history.append(record)
        if not self.is_main:
            return
        if record["kind"] == "warning":
            log.warning("update %d: %s", record["update"], record["message"])
        else:
            log.info(self._line(record))
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with open(self.save_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self.tensorboard and record["kind"] != "warning":
            if self._writer is None:
                self._writer = SummaryWriter(str(self.save_dir / "tensorboard"))
            for k, v in record.items():
                if k not in ("kind", "update", "epoch", "elapsed") and isinstance(v, (int, float)):
                    self._writer.add_scalar(f"{record['kind']}/{k}", float(v), record["update"])
            self._writer.flush()

    @staticmethod
    def _line(record: dict[str, Any]) -> str:
        parts = [f"{record['kind']} | update {record['update']}"]
        first = [k for k in _ORDER if k in record]
        for k in first + [k for k in record if k not in _ORDER]:
            v = record[k]
            if k in _NOT_ON_THE_LINE or not isinstance(v, (int, float)):
                continue
            parts.append(f"{_SHORT.get(k, k)} {format_number(float(v))}")
        return " | ".join(parts)

    def truncate_after(self, update: int) -> None:
        """Drop ``log.jsonl`` records past ``update`` (written after the resumed checkpoint, then lost)."""
        path = self.save_dir / "log.jsonl"
        if not self.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if rec.get("update", 0) <= update:
                kept.append(line)
                self._elapsed_before = float(rec.get("elapsed", self._elapsed_before))
        with atomic_write(path) as f:
            f.write("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
