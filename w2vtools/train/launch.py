"""The one launch path of ``w2v pretrain`` and ``w2v finetune``: from a resolved config to a finished run.

Both commands do the same around their own model and data:

1. :func:`start_run`: refuse to overwrite a run or to resume nothing, join the
   process group torchrun describes, and set the process-wide state once
   (:func:`set_process_state`: torch threads, glibc malloc);
2. :meth:`TrainingRun.write_config`: print the resolved configuration and save it
   as ``SAVE_DIR/config.yaml`` (rank 0);
3. :meth:`TrainingRun.train`: run the :class:`~w2vtools.train.trainer.Trainer`,
   saving checkpoints in our model format, then leave the process group.

:func:`check_model_overrides` is the one check of ``model.*`` settings against the
model config they override.

Example:
    >>> run = start_run(cfg, Path("exp/tiny"), resume=False, device="cpu")     # doctest: +SKIP
    >>> run.write_config(print_config=True)
    >>> summary = run.train(model, PretrainObjective(), train_set=train_set, valid_set=None,
    ...                     family="wav2vec2", task="pretrain")
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import torch

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.malloc import keep_freed_memory
from w2vtools.models.checkpoint import LoadedModel, save_model
from w2vtools.train.checkpoints import check_save_dir, load_training_checkpoint
from w2vtools.train.config import TrainConfig
from w2vtools.train.distributed import DistInfo, init_distributed, shutdown_distributed
from w2vtools.train.objectives import Objective
from w2vtools.train.trainer import Trainer


def set_process_state(threads: int, device: torch.device) -> None:
    """Process-wide settings of a training process; call once, before the model is built.

    Args:
        threads: torch intra-op threads (0 leaves torch's default).
        device: on a CPU, glibc keeps freed memory for reuse (why: :mod:`w2vtools.malloc`;
            the gain: BENCHMARKS.md).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()


@dataclass
class TrainingRun:
    """A started run: its config, directory, process layout and what it resumes.

    Attributes:
        cfg: the resolved configuration.
        save_dir: the run directory.
        dist_info: this process's place in the layout.
        last: ``SAVE_DIR/checkpoint_last.pt``.
        resume: continue ``last`` exactly where it stopped.
    """

    cfg: TrainConfig
    save_dir: Path
    dist_info: DistInfo
    last: Path
    resume: bool

    def write_config(self, *, print_config: bool) -> None:
        """Print the resolved configuration on stdout (optional) and save it as ``SAVE_DIR/config.yaml`` (rank 0)."""
        if not self.dist_info.is_main:
            return
        yaml_text = self.cfg.to_yaml()
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if print_config:
            sys.stdout.write(yaml_text)
            sys.stdout.flush()
        with atomic_write(self.save_dir / "config.yaml") as f:
            f.write(yaml_text)

    def train(self, model: torch.nn.Module, objective: Objective, *, train_set, valid_set, family: str, task: str,
              dictionary: Sequence[str] | None = None,
              feature_encoder_prefix: str = "feature_extractor.", model_extra: dict | None = None) -> dict[str, Any]:
        """Train ``model``; checkpoints are our format (``family``, ``task``, ``dictionary``, ``model_extra``:
        what a user of the model needs besides its weights, e.g. a language model's units); the trainer's summary."""

        def save(path: str, core: torch.nn.Module, extra: dict) -> None:
            loaded = LoadedModel(family=family, task=task, model=core, config=core.cfg,
                                 dictionary=None if dictionary is None else list(dictionary),
                                 extra=dict(model_extra or {}))
            save_model(path, loaded, extra=extra)

        trainer = Trainer(model, objective, self.cfg, train_set=train_set, valid_set=valid_set,
                          save_dir=self.save_dir, save_fn=save, load_fn=load_training_checkpoint,
                          dist_info=self.dist_info, feature_encoder_prefix=feature_encoder_prefix)
        try:
            return trainer.train(resume=str(self.last) if self.resume else None)
        finally:
            shutdown_distributed(self.dist_info)


def start_run(cfg: TrainConfig, save_dir: str | Path, *, resume: bool, device: str | None) -> TrainingRun:
    """Check the run directory, join the process group and set the process-wide state.

    Raises:
        W2VError: ``resume`` without ``checkpoint_last.pt``, or a finished run without
            ``resume``, or a CUDA device asked for on a machine without one.
    """
    save_dir = Path(save_dir)
    last = check_save_dir(save_dir, resume)
    dist_info = init_distributed(device)
    set_process_state(cfg.run.threads, dist_info.device)
    return TrainingRun(cfg=cfg, save_dir=save_dir, dist_info=dist_info, last=last, resume=resume)


def check_model_overrides(config_class: type, overrides: Mapping[str, Any], *,
                          reserved: Collection[str] = (), hints: Mapping[str, str] | None = None) -> None:
    """Refuse ``model.*`` settings that are not fields of ``config_class`` or that the command sets itself.

    Args:
        config_class: the model config dataclass the overrides replace fields of.
        overrides: ``cfg.model.overrides``.
        reserved: fields the command derives itself (e.g. ``vocab_size``).
        hints: for a reserved field, what to set instead (appended to the message).

    Example:
        >>> check_model_overrides(CTCConfig, {"mask_prob": 0.5}, reserved={"vocab_size"})   # doctest: +SKIP
    """
    names = {f.name for f in dataclasses.fields(config_class)} - set(reserved)
    for key in overrides:
        if key in reserved:
            hint = (hints or {}).get(key)
            raise W2VError(f"model.{key} is set by the command itself" + (f" (use {hint})" if hint else ""))
        if key not in names:
            raise W2VError(f"model.{key}: not a {config_class.__name__} field (known: {', '.join(sorted(names))})")
