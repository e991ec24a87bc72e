"""Training checkpoints: the files of a run directory, the trainer entry they carry, and resuming.

A training checkpoint is a model checkpoint (written by the run's ``save_fn``, e.g.
:func:`w2vtools.models.checkpoint.save_model`) with a ``trainer`` entry: optimizer,
scaler, update counter, data position, every rank's RNG states, best metric,
guard counters and the config, tensors and plain types only (``weights_only``-safe).

Files in ``save_dir``: ``checkpoint_last.pt`` (every save), ``checkpoint_best.pt``
(best validation metric) and ``checkpoint_<update>.pt`` (every ``save_interval``;
the newest ``keep_last`` kept). All are written atomically (temporary file, rename).

Example:
    >>> last = check_save_dir(Path("exp/new"), resume=False)       # doctest: +SKIP
    >>> model_state, trainer_state = load_training_checkpoint(last)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from w2vtools.errors import W2VError
from w2vtools.models.checkpoint import read_checkpoint

log = logging.getLogger("w2v.train")

TRAINER_STATE_VERSION = 1
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"

#: ``(path, model, extra)``: writes the model with ``extra`` (holding ``trainer``) atomically.
SaveFn = Callable[[str, torch.nn.Module, dict], None]
#: ``path -> (model state_dict, trainer state)``.
LoadFn = Callable[[str], "tuple[dict, dict]"]


TRAINING_COMMANDS = ("pretrain", "finetune")


def resume_hint(save_dir: str | os.PathLike, argv: list[str] | None = None) -> str:
    """How to continue a stopped run, ready to paste: the command line that started it plus ``--resume``.

    ``--resume`` is a flag (it continues from ``SAVE_DIR/checkpoint_last.pt``), so the
    hint repeats the run's own options; outside the ``w2v`` command line (a library
    call) it says so in words.

    Args:
        save_dir: the run directory.
        argv: the process's arguments after the program name (default: ``sys.argv[1:]``).

    Example:
        >>> resume_hint("exp/blstm", ["finetune", "--features", "f.h5", "--save-dir", "exp/blstm"])
        'run: w2v finetune --features f.h5 --save-dir exp/blstm --resume'
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in TRAINING_COMMANDS for a in args):
        return "run: " + shlex.join(["w2v"] + [a for a in args if a != "--resume"] + ["--resume"])
    return f"rerun the same training with resume (--resume on the command line); it continues from {Path(save_dir) / LAST}"


def check_save_dir(save_dir: Path, resume: bool) -> Path:
    """The ``checkpoint_last.pt`` of ``save_dir``; refuse to resume nothing or to overwrite a run."""
    last = save_dir / LAST
    if resume and not last.is_file():
        raise W2VError(f"--resume: {last} does not exist (nothing to resume)")
    if not resume and last.is_file():
        raise W2VError(f"{save_dir} already holds {LAST}; pass --resume to continue it, or use another --save-dir")
    return last


def find_trainer_state(raw: dict, path: str) -> dict[str, Any]:
    """The ``trainer`` entry of a checkpoint dict (top level or under ``extra``)."""
    for container in (raw, raw.get("extra") or {}):
        if isinstance(container, dict) and isinstance(container.get("trainer"), dict):
            return container["trainer"]
    raise W2VError(f"{path}: has no trainer state to resume from (a model-only checkpoint?)")


def load_training_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(model state dict, trainer state) of a checkpoint written by a w2v training run."""
    data = read_checkpoint(path)
    if data is None:
        raise W2VError(f"{path}: not a w2v checkpoint")
    return data["state_dict"], find_trainer_state(data, str(path))


def write_checkpoints(save_fn: SaveFn, model: torch.nn.Module, state: dict[str, Any], save_dir: Path, *,
                      num_updates: int, periodic: bool, best: bool, keep_last: int) -> None:
    """Write ``checkpoint_last.pt``, copy it to ``_best`` and ``_<update>`` when asked, prune old ones."""
    save_dir.mkdir(parents=True, exist_ok=True)
    last = save_dir / LAST
    save_fn(str(last), model, {"trainer": state})
    if best:
        _copy_atomic(last, save_dir / BEST)
    if periodic:
        _copy_atomic(last, save_dir / f"checkpoint_{num_updates}.pt")
        _prune(save_dir, keep_last)
    log.info("saved %s%s%s (update %d)", last, " + best" if best else "",
             f" + checkpoint_{num_updates}.pt" if periodic else "", num_updates)


def read_resume_state(load_fn: LoadFn, path: str | os.PathLike, model: torch.nn.Module, *,
                      world_size: int, update_freq: int) -> dict[str, Any]:
    """Load the weights of ``path`` into ``model`` and return its trainer state, once checked.

    Args:
        world_size, update_freq: this run's; their product must be the saved
            run's (the batch of an update is then the same).

    Raises:
        W2VError: no such file, weights that do not fit, another state version, or
            another world size x update_freq.
    """
    path = str(path)
    if not os.path.exists(path):
        raise W2VError(f"{path}: no such checkpoint to resume from")
    model_state, st = load_fn(path)
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise W2VError(
            f"{path}: does not fit this model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    if int(st.get("version", 0)) != TRAINER_STATE_VERSION:
        raise W2VError(f"{path}: trainer state version {st.get('version')} is not {TRAINER_STATE_VERSION}")
    if st["world_size"] * st["update_freq"] != world_size * update_freq:
        raise W2VError(
            f"{path}: saved with {st['world_size']} process(es) x update_freq {st['update_freq']}; "
            f"resume with the same product (now {world_size} x {update_freq})"
        )
    return st


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _prune(save_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``checkpoint_<update>.pt`` (0 keeps all)."""
    if keep <= 0:
        return
    numbered = []
    for p in save_dir.glob("checkpoint_*.pt"):
        stem = p.stem.split("_", 1)[1]
        if stem.isdigit():
            numbered.append((int(stem), p))
    for _, p in sorted(numbered)[:-keep]:
        p.unlink(missing_ok=True)
