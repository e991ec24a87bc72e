"""The one training loop, for pretraining and fine-tuning alike: the model, objective and data differ.

What it does, per update:

1. reads ``update_freq`` micro-batches of this rank (ranks read disjoint batches,
   see :class:`~w2vtools.train.data.BatchSampler`);
2. before each forward, seeds torch/numpy/python from (seed, epoch, global batch
   index): masks, negatives, Gumbel noise, layer drop and dropout of a batch are
   then the same whichever rank or micro-step reads it, so N processes x
   update_freq 1 == 1 process x update_freq N, and a resumed run repeats exactly
   what the uninterrupted one would have done;
3. forward under autocast (bf16, or fp16 with a dynamic loss scaler) when asked,
   backward of the *summed* loss, with DDP's gradient all-reduce only on the last
   micro-step (``no_sync``);
4. all-reduces the sample size and stats, scales gradients by world_size / total
   sample size, clips, and steps the optimizer with the scheduled learning rate,
   unless the gradient is not finite: that update is skipped and counted, and the
   run stops with a clear message after ``max_nonfinite`` in a row;
5. every ``log_interval`` updates one line on stderr, the same numbers in
   ``log.jsonl`` and TensorBoard; every ``valid_interval`` a validation pass; every
   ``save_interval`` a checkpoint. Only rank 0 writes files; all files are written
   atomically (temporary file, then rename).

Checkpoints hold the model in :func:`w2vtools.models.checkpoint.save_model`'s
format plus a ``trainer`` entry (optimizer, scaler, update counter, data position,
every rank's RNG states, best metric, config), tensors and plain types only.

Fine-tuning hooks: the objective is injected (e.g. CTC); parameter groups can be
given (per-group ``lr_scale``); the feature encoder can be frozen and the whole
model but named heads frozen for the first N updates; ``best_metric`` with its
direction picks ``checkpoint_best.pt`` from the validation metrics (e.g. ``wer``).

Example:
    >>> trainer = Trainer(model, PretrainObjective(), cfg, train_set=train, valid_set=valid,
    ...                   save_dir="exp/w2v2")                # doctest: +SKIP
    >>> summary = trainer.train()
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from w2vtools.errors import W2VError
from w2vtools.train.config import TrainConfig
from w2vtools.train.data import AudioDataset, BatchSampler, make_loader, stable_seed
from w2vtools.train.objectives import Objective
from w2vtools.train.schedules import make_schedule

log = logging.getLogger("w2v.train")

TRAINER_STATE_VERSION = 1
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


# ---------------------------------------------------------------------------------------------
# Distributed setup


@dataclass(frozen=True)
class DistInfo:
    """The process layout: from torchrun's environment, or a single process."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_*``).

    NCCL when CUDA is available (one GPU per local rank), gloo on CPU. Without
    torchrun's variables this is a single process. Calling it twice is harmless.

    Args:
        device: ``cpu`` or ``cuda`` to force; None picks CUDA when available.

    Example:
        >>> init_distributed("cpu").world_size   # outside torchrun
        1
    """
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise W2VError("a CUDA device was asked for but none is available")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(world_size=world_size, rank=rank, local_rank=local_rank, device=dev)


def _all_reduce_sum(values: list[float], dist_info: DistInfo) -> list[float]:
    if not dist_info.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=dist_info.device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# RNG state as tensors and lists (weights_only-safe)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA generator states, as tensors/lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(x) for x in py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((str(npst[0]), npst[1].numpy().astype(np.uint32), int(npst[2]), int(npst[3]), float(npst[4])))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one 63-bit number."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Checkpoint I/O hooks


def default_save(path: str, model: torch.nn.Module, extra: dict[str, Any]) -> None:
    """Write ``{"model": state_dict, **extra}`` atomically (for models without a saver)."""
    from w2vtools.fileio import atomic_write

    with atomic_write(path, "wb") as f:
        torch.save({"model": model.state_dict(), **extra}, f)


def default_load(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state_dict, trainer state) of a checkpoint written by :func:`default_save`."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return raw["model"], find_trainer_state(raw, path)


def find_trainer_state(raw: dict, path: str) -> dict[str, Any]:
    """The ``trainer`` entry of a checkpoint dict (top level or under ``extra``)."""
    for container in (raw, raw.get("extra") or {}):
        if isinstance(container, dict) and isinstance(container.get("trainer"), dict):
            return container["trainer"]
    raise W2VError(f"{path}: has no trainer state to resume from (a model-only checkpoint?)")


def check_save_dir(save_dir: Path, resume: bool) -> Path:
    """The ``checkpoint_last.pt`` of ``save_dir``; refuse to resume nothing or to overwrite a run."""
    last = save_dir / LAST
    if resume and not last.is_file():
        raise W2VError(f"--resume: {last} does not exist (nothing to resume)")
    if not resume and last.is_file():
        raise W2VError(f"{save_dir} already holds {LAST}; pass --resume to continue it, or use another --save-dir")
    return last


def write_run_config(yaml_text: str, save_dir: Path, *, print_config: bool) -> None:
    """Print the resolved configuration on stdout (optional) and save it as ``SAVE_DIR/config.yaml`` (rank 0 only)."""
    from w2vtools.fileio import atomic_write

    save_dir.mkdir(parents=True, exist_ok=True)
    if print_config:
        sys.stdout.write(yaml_text)
        sys.stdout.flush()
    with atomic_write(save_dir / "config.yaml") as f:
        f.write(yaml_text)


def load_training_checkpoint(path: str) -> tuple[dict, dict]:
    """(model state dict, trainer state) of a checkpoint written by a w2v training run."""
    from w2vtools.models.checkpoint import read_checkpoint

    data = read_checkpoint(path)
    if data is None:
        raise W2VError(f"{path}: not a w2v checkpoint")
    return data["state_dict"], find_trainer_state(data, path)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------------


class _Meter:
    """Stats summed over the updates since the last log line."""

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


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if not math.isfinite(value) or abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


class Trainer:
    """The training loop (see the module docstring).

    Args:
        model: the model, on CPU; moved to the device and wrapped in DDP here.
        objective: maps (model, batch) to (loss_sum, sample_size, stats).
        cfg: the resolved configuration (``data``, ``optim`` and ``run`` are used).
        train_set, valid_set: datasets of :mod:`w2vtools.train.data`.
        save_dir: checkpoints, ``log.jsonl``, ``tensorboard/`` go here.
        save_fn: ``(path, model, extra)`` writes a checkpoint atomically
            (default :func:`default_save`; pretrain passes ``save_model``).
        load_fn: ``path -> (model state_dict, trainer state)`` for ``resume``.
        param_groups: optional ``model -> [{"params": [...], "name": str,
            "lr_scale": float, "weight_decay": float}, ...]``.
        feature_encoder_prefix: parameter-name prefix of the CNN encoder
            (for ``run.freeze_feature_encoder``).
        dist_info: the process layout (default: :func:`init_distributed`).
        on_validation: called with (num_updates, metrics) after each validation on rank 0.

    Example:
        >>> Trainer(model, objective, cfg, train_set=ds, save_dir="exp").train()   # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        cfg: TrainConfig,
        *,
        train_set: AudioDataset,
        valid_set: AudioDataset | None = None,
        save_dir: str | os.PathLike,
        save_fn: Callable[[str, torch.nn.Module, dict], None] = default_save,
        load_fn: Callable[[str], tuple[dict, dict]] = default_load,
        param_groups: Callable[[torch.nn.Module], list[dict]] | None = None,
        feature_encoder_prefix: str = "feature_extractor.",
        dist_info: DistInfo | None = None,
        on_validation: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.objective = objective
        self.dist = dist_info or init_distributed()
        self.device = self.dist.device
        self.save_dir = Path(save_dir)
        self.save_fn = save_fn
        self.load_fn = load_fn
        self.train_set = train_set
        self.valid_set = valid_set
        self.on_validation = on_validation
        self.feature_encoder_prefix = feature_encoder_prefix
        run, optim = cfg.run, cfg.optim
        if run.threads > 0:
            torch.set_num_threads(run.threads)
        if self.device.type == "cpu":
            from w2vtools.malloc import keep_freed_memory

            keep_freed_memory()  # 1.3x on a CPU step: see w2vtools/malloc.py

        self.amp_dtype: torch.dtype | None = None
        if run.amp == "bf16":
            self.amp_dtype = torch.bfloat16
        elif run.amp == "fp16":
            if self.device.type == "cuda":
                self.amp_dtype = torch.float16
            else:
                log.warning("run.amp=fp16 needs a GPU; training in float32 on %s", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16, init_scale=128.0)

        self.core = model.to(self.device)
        self.model: torch.nn.Module = self.core
        if self.dist.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.core,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # layer drop and frozen heads leave parameters unused
                broadcast_buffers=False,
            )

        groups = param_groups(self.core) if param_groups else [{"params": [p for p in self.core.parameters()]}]
        opt_groups = []
        for g in groups:
            params = [p for p in g["params"] if p.requires_grad]
            if not params:
                continue
            opt_groups.append({
                "params": params,
                "name": str(g.get("name", f"group{len(opt_groups)}")),
                "lr_scale": float(g.get("lr_scale", 1.0)),
                "weight_decay": float(g.get("weight_decay", optim.weight_decay)),
            })
        self.optimizer = torch.optim.AdamW(
            opt_groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay,
            foreach=True,
        )
        self.params = [p for g in opt_groups for p in g["params"]]
        self.names = {p: n for n, p in self.core.named_parameters()}
        self.schedule = make_schedule(
            optim.schedule, lr=optim.lr, total_updates=optim.max_update, warmup_updates=optim.warmup_updates,
            warmup_init_lr=optim.warmup_init_lr, end_lr=optim.end_lr, power=optim.power,
            phase_ratio=tuple(optim.phase_ratio), init_lr_scale=optim.init_lr_scale,
            final_lr_scale=optim.final_lr_scale,
        )

        data = cfg.data
        self.update_freq = optim.update_freq
        self.sampler = BatchSampler(
            train_set.sizes_for_batching, max_samples=data.max_samples_per_batch, max_batch_size=data.max_batch_size,
            seed=run.seed, world_size=self.dist.world_size, rank=self.dist.rank, update_freq=self.update_freq,
        )
        pin = self.device.type == "cuda"
        self.loader = make_loader(train_set, self.sampler, num_workers=data.num_workers, pin_memory=pin)
        self.valid_loader = None
        if valid_set is not None:
            vs = BatchSampler(
                valid_set.sizes_for_batching, max_samples=data.max_samples_per_batch,
                max_batch_size=data.max_batch_size, seed=run.seed, shuffle=False,
                world_size=self.dist.world_size, rank=self.dist.rank, drop_remainder=False,
            )
            self.valid_loader = make_loader(valid_set, vs, num_workers=min(1, data.num_workers), pin_memory=pin)

        # Progress and bookkeeping (all part of the checkpoint)
        self.num_updates = 0
        self.epoch = 0
        self.batch_position = 0  # next global batch of self.epoch
        self.best_value: float | None = None
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.overflows = 0
        self.guard_strikes = {"chance": 0, "codes": 0}
        self._stop_signal = False
        self._writer = None
        self._meter = _Meter()
        self.guard_info = objective.guard(self.core)
        self.history: list[dict[str, Any]] = []  # every log record of this process (tests read it)
        self.last_valid: dict[str, float] = {}
        self._validated_at = -1
        self._saved_at = -1
        self._last_step_updated = False

    # -----------------------------------------------------------------------------------------
    # Public API

    def train(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Run until ``optim.max_update`` (or ``max_epoch``, ``run.stop_at_update``, SIGTERM).

        Returns a summary: updates done, last validation metrics, best value, non-finite count.
        """
        run, optim = self.cfg.run, self.cfg.optim
        if resume is not None:
            self.load_checkpoint(resume)
        if self.dist.is_main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            if resume is not None:
                self._truncate_log()
        self._set_num_updates(self.num_updates)
        self._announce()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        stop_at = run.stop_at_update or optim.max_update
        end = min(stop_at, optim.max_update)
        try:
            self._meter.reset()
            while self.num_updates < end and not self._stop_signal:
                if optim.max_epoch and self.epoch >= optim.max_epoch:
                    break
                finished_epoch = self._train_epoch(end)
                if finished_epoch:
                    self.epoch += 1
                    self.batch_position = 0
            if self._meter.updates:
                self._log_train()
            if self.valid_loader is not None and self._validated_at != self.num_updates:
                self.validate()
            if self._saved_at != self.num_updates:
                self.save_checkpoint(periodic=False)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if self._writer is not None:
                self._writer.close()
        if self._stop_signal:
            log.warning("stopped by SIGTERM after update %d; resume with --resume %s", self.num_updates,
                        self.save_dir / LAST)
        return {
            "num_updates": self.num_updates,
            "epoch": self.epoch,
            "valid": self.last_valid,
            "best": self.best_value,
            "nonfinite": self.nonfinite_total,
        }

    # -----------------------------------------------------------------------------------------
    # The loop

    def _train_epoch(self, end: int) -> bool:
        """Train from the current data position; True when the epoch's batches ran out."""
        run = self.cfg.run
        per_update = self.dist.world_size * self.update_freq
        self.sampler.set_epoch(self.epoch, self.batch_position)
        micro: list[dict] = []
        for batch in self.loader:
            micro.append(batch)
            if len(micro) < self.update_freq:
                continue
            self._update(micro)
            micro = []
            self.batch_position += per_update
            if self.num_updates and self._meter.updates and self.num_updates % run.log_interval == 0:
                self._log_train()
            if self.valid_loader is not None and run.valid_interval and self.num_updates % run.valid_interval == 0 \
                    and self._last_step_updated:
                self.validate()
                if self._stop_signal:
                    return False
            if run.save_interval and self.num_updates % run.save_interval == 0 and self._last_step_updated:
                self.save_checkpoint(periodic=True)
            if self.num_updates >= end or self._stop_signal:
                return self.batch_position >= self.sampler.num_batches(self.epoch)
        return True

    def _seed_batch(self, batch: dict, kind: str) -> None:
        seed_everything(stable_seed(self.cfg.run.seed, kind, batch["epoch"], batch["index"]))

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        out = dict(batch)
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(self.device, non_blocking=True)
        return out

    def _frozen(self) -> set[torch.nn.Parameter]:
        run = self.cfg.run
        frozen: set[torch.nn.Parameter] = set()
        for p in self.params:
            name = self.names.get(p, "")
            if run.freeze_feature_encoder and name.startswith(self.feature_encoder_prefix):
                frozen.add(p)
            elif self.num_updates < run.freeze_updates and not any(
                name.startswith(prefix) for prefix in run.train_during_freeze
            ):
                frozen.add(p)
        return frozen

    def _update(self, micro: list[dict]) -> None:
        self.model.train()
        stats_sum: dict[str, float] = {}
        samples = 0.0
        for step, batch in enumerate(micro):
            self._seed_batch(batch, "train")
            batch = self._to_device(batch)
            last = step == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.dist.distributed else self.model.no_sync()
            with sync:
                with self._autocast():
                    loss_sum, sample_size, stats = self.objective(self.model, batch)
                self.scaler.scale(loss_sum.float()).backward()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v
            stats_sum["_batches"] = stats_sum.get("_batches", 0.0) + 1
            samples += batch["num_samples"]
        keys = sorted(stats_sum)
        reduced = _all_reduce_sum([stats_sum[k] for k in keys] + [samples, float(self._stop_signal)], self.dist)
        stats_sum = dict(zip(keys, reduced[: len(keys)]))
        samples = reduced[len(keys)]
        if reduced[-1] > 0:
            self._stop_signal = True
        sample_size = stats_sum.get("sample_size", 0.0)

        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        # DDP averaged over ranks: undo that and divide by the total sample size instead.
        factor = self.dist.world_size / sample_size if sample_size > 0 else 0.0
        frozen = self._frozen()
        grads = []
        for p in self.params:
            if p.grad is None:
                continue
            if p in frozen:
                p.grad = None
            else:
                grads.append(p.grad)
        if grads:
            torch._foreach_mul_(grads, factor)
        clip = self.cfg.optim.clip_norm
        gnorm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.params if p.grad is not None], clip if clip > 0 else float("inf")
        )
        gnorm_value = float(gnorm)
        loss_value = stats_sum.get("loss", 0.0)
        finite = math.isfinite(gnorm_value) and math.isfinite(loss_value)
        self._last_step_updated = False
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                # fp16 overflow: the scaler lowers the scale and the update is skipped.
                self.scaler.update()
                self.overflows += 1
                if self.scaler.get_scale() < 1e-4:
                    raise W2VError(
                        f"fp16 loss scale fell below 1e-4 after {self.overflows} overflows at update "
                        f"{self.num_updates}: the loss diverges (lower optim.lr, or use run.amp=bf16)"
                    )
                return
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            log.warning(
                "update %d: non-finite %s, update skipped (%d in a row, %d in total)",
                self.num_updates + 1, "loss" if not math.isfinite(loss_value) else "gradient",
                self.nonfinite_in_a_row, self.nonfinite_total,
            )
            if self.nonfinite_in_a_row >= self.cfg.run.max_nonfinite:
                raise W2VError(
                    f"stopping: {self.nonfinite_in_a_row} non-finite losses/gradients in a row at update "
                    f"{self.num_updates} (run.max_nonfinite={self.cfg.run.max_nonfinite}); lower optim.lr, "
                    "set optim.clip_norm, or check the data"
                )
            return
        self.nonfinite_in_a_row = 0
        lr = self.schedule(self.num_updates + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._last_step_updated = True
        self._set_num_updates(self.num_updates + 1)
        stats_sum["lr"] = lr
        self._meter.add(stats_sum, gnorm_value, samples)

    def _set_num_updates(self, n: int) -> None:
        self.num_updates = n
        setter = getattr(self.core, "set_num_updates", None)
        if callable(setter):
            setter(n)

    # -----------------------------------------------------------------------------------------
    # Validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """One pass over the validation set (split over ranks); returns the metrics.

        Each batch is seeded from (seed, batch index), so validation at any update
        sees the same masks and negatives.
        """
        assert self.valid_loader is not None
        self.core.eval()
        stats_sum: dict[str, float] = {}
        start = time.perf_counter()
        for batch in self.valid_loader:
            self._seed_batch(batch, "valid")
            batch = self._to_device(batch)
            with self._autocast():
                _, _, stats = self.objective(self.core, batch)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v
            stats_sum["_batches"] = stats_sum.get("_batches", 0.0) + 1
        self.core.train()
        keys = sorted(stats_sum)
        if self.dist.distributed:
            # ranks may hold different key sets only if one rank had no batch: share the names
            import torch.distributed as dist

            all_keys: list[list[str]] = [[] for _ in range(self.dist.world_size)]
            dist.all_gather_object(all_keys, keys)
            keys = sorted(set().union(*all_keys))
        reduced = _all_reduce_sum([stats_sum.get(k, 0.0) for k in keys], self.dist)
        stats_sum = dict(zip(keys, reduced))
        metrics = self.objective.metrics(stats_sum)
        metrics["nsentences"] = stats_sum.get("nsentences", 0.0)
        name = self.cfg.run.best_metric
        value = metrics.get(name)
        is_best = False
        if value is not None and math.isfinite(value):
            better = (
                self.best_value is None
                or (value > self.best_value if self.cfg.run.maximize_best else value < self.best_value)
            )
            if better:
                self.best_value = value
                is_best = True
        elif name not in metrics:
            log.warning("valid: metric %r (run.best_metric) not among %s", name, ", ".join(sorted(metrics)))
        record = {"kind": "valid", "update": self.num_updates, "epoch": self.epoch, **metrics,
                  f"best_{name}": self.best_value, "seconds": time.perf_counter() - start}
        self._emit(record, "valid")
        self.last_valid = metrics
        self._validated_at = self.num_updates
        self._meter.start += time.perf_counter() - start  # throughput counts training time only
        if is_best:
            self.save_checkpoint(periodic=False, best=True)
        if self.on_validation is not None and self.dist.is_main:
            self.on_validation(self.num_updates, metrics)
        return metrics

    # -----------------------------------------------------------------------------------------
    # Logging

    def _announce(self) -> None:
        if not self.dist.is_main:
            return
        n_params = sum(p.numel() for p in self.core.parameters())
        n_train = sum(p.numel() for p in self.params)
        per_update = self.dist.world_size * self.update_freq
        log.info(
            "model: %.2f M parameters (%.2f M trained); %d process(es) x update_freq %d; device %s; amp %s",
            n_params / 1e6, n_train / 1e6, self.dist.world_size, self.update_freq, self.device,
            self.amp_dtype or "off",
        )
        log.info(
            "data: %d batches per epoch (%d updates of %d micro-batches of <= %d samples); starting at update %d, "
            "epoch %d, batch %d",
            self.sampler.num_batches(self.epoch), self.sampler.updates_per_epoch(self.epoch), per_update,
            self.cfg.data.max_samples_per_batch, self.num_updates, self.epoch, self.batch_position,
        )

    def _log_train(self) -> None:
        m = self._meter
        elapsed = max(1e-9, time.perf_counter() - m.start)
        metrics = self.objective.metrics(m.stats)
        record: dict[str, Any] = {"kind": "train", "update": self.num_updates, "epoch": self.epoch}
        record.update(metrics)
        record["lr"] = m.stats.get("lr", 0.0) / max(1, m.updates)
        record["gnorm"] = m.gnorm / max(1, m.updates)
        record["audio_s_per_s"] = m.samples / self.cfg.data.sample_rate / elapsed
        record["mem_mb"] = _memory_mb(self.device)
        record["nonfinite"] = self.nonfinite_total
        if self.scaler.is_enabled():
            record["loss_scale"] = self.scaler.get_scale()
        self._emit(record, "train")
        self._check_collapse(record)
        m.reset()

    _ORDER = ("loss", "accuracy", "code_perplexity", "prob_perplexity", "temp", "wer", "uer", "lr", "gnorm",
              "audio_s_per_s", "mem_mb")
    _SHORT = {"accuracy": "acc", "code_perplexity": "code_ppl", "prob_perplexity": "prob_ppl",
              "audio_s_per_s": "audio_s/s", "mem_mb": "mem_MB"}

    def _emit(self, record: dict[str, Any], kind: str) -> None:
        self.history.append(record)
        if not self.dist.is_main:
            return
        skip = {"kind", "update", "epoch", "nsentences", "seconds"}
        parts = [f"{kind} | update {record['update']}"]
        first = [k for k in self._ORDER if k in record]
        for k in first + [k for k in record if k not in self._ORDER]:
            v = record[k]
            if k in skip or v is None or not isinstance(v, (int, float)):
                continue
            parts.append(f"{self._SHORT.get(k, k)} {_fmt(float(v))}")
        log.info(" | ".join(parts))
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with open(self.save_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({k: v for k, v in record.items()}, allow_nan=True) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for k, v in record.items():
                if k not in ("kind", "update", "epoch") and isinstance(v, (int, float)) and v is not None:
                    writer.add_scalar(f"{kind}/{k}", float(v), record["update"])
            writer.flush()

    def _truncate_log(self) -> None:
        """Drop log records past the resumed update (written after the checkpoint, then lost)."""
        path = self.save_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("update", 0) <= self.num_updates:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
        from w2vtools.fileio import atomic_write

        with atomic_write(path) as f:
            f.write("".join(line + "\n" for line in kept))

    def _tensorboard(self):
        if not self.cfg.run.tensorboard or not self.dist.is_main:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; logging to log.jsonl only")
                self.cfg.run.tensorboard = False
                return None
            self._writer = SummaryWriter(str(self.save_dir / "tensorboard"))
        return self._writer

    def _check_collapse(self, record: dict[str, Any]) -> None:
        """Warn when the contrastive loss sits at chance or the code book collapses."""
        after = self.cfg.run.collapse_warn_after or self.cfg.optim.warmup_updates
        if self.num_updates < after:
            return
        g = self.guard_info
        contrastive = next(
            (record[k] for k in ("contrastive_loss", "loss_contrastive", "loss_0", "loss") if k in record), None
        )
        if g.chance_bits and contrastive is not None:
            if contrastive > 0.97 * g.chance_bits:
                self.guard_strikes["chance"] += 1
                if self.guard_strikes["chance"] == 3:
                    log.warning(
                        "update %d: the contrastive loss (%.3f bits) sits near chance log2(K+1) = %.3f bits "
                        "for 3 log intervals: the model is not learning (learning rate? masking? data?)",
                        self.num_updates, contrastive, g.chance_bits,
                    )
            else:
                self.guard_strikes["chance"] = 0
        ppl = record.get("code_perplexity")
        floor = g.code_floor
        if floor is not None and ppl is not None:
            if ppl < floor:
                self.guard_strikes["codes"] += 1
                if self.guard_strikes["codes"] == 3:
                    log.warning(
                        "update %d: code perplexity %.1f of %d codes for 3 log intervals: the code book has "
                        "collapsed (raise the diversity loss weight or the Gumbel temperature)",
                        self.num_updates, ppl, g.num_codes,
                    )
            else:
                self.guard_strikes["codes"] = 0

    # -----------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The trainer entry of a checkpoint (collective: every rank must call it)."""
        states = [rng_state()]
        if self.dist.distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, _cpu(states[0]))
            states = gathered
        return {
            "version": TRAINER_STATE_VERSION,
            "num_updates": self.num_updates,
            "epoch": self.epoch,
            "batch_position": self.batch_position,
            "world_size": self.dist.world_size,
            "update_freq": self.update_freq,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": [_cpu(s) for s in states],
            "best": {"metric": self.cfg.run.best_metric, "value": self.best_value,
                     "maximize": self.cfg.run.maximize_best},
            "nonfinite": {"total": self.nonfinite_total, "in_a_row": self.nonfinite_in_a_row,
                          "overflows": self.overflows},
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, *, periodic: bool, best: bool = False) -> None:
        """Write ``checkpoint_last.pt`` (and ``_best``, ``_<update>``) from rank 0; prune old ones."""
        paused = time.perf_counter()
        state = self.state_dict()
        if not self.dist.is_main:
            self._saved_at = self.num_updates
            self._barrier()
            self._meter.start += time.perf_counter() - paused
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        last = self.save_dir / LAST
        self.save_fn(str(last), self.core, {"trainer": state})
        if best:
            _copy_atomic(last, self.save_dir / BEST)
        if periodic:
            _copy_atomic(last, self.save_dir / f"checkpoint_{self.num_updates}.pt")
            self._prune()
        self._saved_at = self.num_updates
        log.info("saved %s%s%s (update %d)", last, " + best" if best else "",
                 f" + checkpoint_{self.num_updates}.pt" if periodic else "", self.num_updates)
        self._barrier()
        self._meter.start += time.perf_counter() - paused

    def _prune(self) -> None:
        keep = self.cfg.run.keep_last
        if keep <= 0:
            return
        numbered = []
        for p in self.save_dir.glob("checkpoint_*.pt"):
            stem = p.stem.split("_", 1)[1]
            if stem.isdigit():
                numbered.append((int(stem), p))
        for _, p in sorted(numbered)[:-keep]:
            p.unlink(missing_ok=True)

    def _barrier(self) -> None:
        if self.dist.distributed:
            import torch.distributed as dist

            dist.barrier()

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scaler, counters, data position and this rank's RNG state."""
        path = str(path)
        if not os.path.exists(path):
            raise W2VError(f"{path}: no such checkpoint to resume from")
        model_state, st = self.load_fn(path)
        missing, unexpected = self.core.load_state_dict(model_state, strict=False)
        if missing or unexpected:
            raise W2VError(
                f"{path}: does not fit this model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
            )
        if int(st.get("version", 0)) != TRAINER_STATE_VERSION:
            raise W2VError(f"{path}: trainer state version {st.get('version')} is not {TRAINER_STATE_VERSION}")
        if st["world_size"] * st["update_freq"] != self.dist.world_size * self.update_freq:
            raise W2VError(
                f"{path}: saved with {st['world_size']} process(es) x update_freq {st['update_freq']}; "
                f"resume with the same product (now {self.dist.world_size} x {self.update_freq})"
            )
        opt_state = dict(st["optimizer"])
        # checkpoint writers may store dict keys as strings: the optimizer indexes its state by int
        opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
        self.optimizer.load_state_dict(opt_state)
        if st.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(st["scaler"])
        self.num_updates = int(st["num_updates"])
        self.epoch = int(st["epoch"])
        self.batch_position = int(st["batch_position"])
        if self.batch_position >= self.sampler.num_batches(self.epoch):
            self.epoch += 1
            self.batch_position = 0
        best = st.get("best") or {}
        self.best_value = best.get("value") if best.get("metric") == self.cfg.run.best_metric else None
        nf = st.get("nonfinite") or {}
        self.nonfinite_total = int(nf.get("total", 0))
        self.nonfinite_in_a_row = int(nf.get("in_a_row", 0))
        self.overflows = int(nf.get("overflows", 0))
        rngs = st.get("rng") or []
        if st["world_size"] == self.dist.world_size and len(rngs) > self.dist.rank:
            set_rng_state(rngs[self.dist.rank])
        log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.num_updates, self.epoch,
                 self.batch_position)

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = True


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_cpu(v) for v in obj]
    return obj


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
