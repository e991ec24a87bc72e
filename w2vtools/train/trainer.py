"""The one training loop, for pretraining and fine-tuning alike: the model, objective and data differ.

What it does, per update (:meth:`Trainer._update`):

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
   unless the gradient is not finite (:class:`~w2vtools.train.guards.NonfiniteGuard`);
5. every ``log_interval`` updates a record (:class:`~w2vtools.train.run_log.RunLog`);
   every ``valid_interval`` a validation pass; every ``save_interval`` a checkpoint
   (:mod:`w2vtools.train.checkpoints`). Only rank 0 writes files.

The trainer owns the freeze rule (``run.freeze_feature_encoder``, ``run.freeze_params``,
``run.freeze_updates`` with ``run.train_during_freeze``): see :meth:`Trainer._freeze`.
``best_metric`` with its direction picks ``checkpoint_best.pt`` from the validation metrics (e.g. ``wer``).
Process-wide settings (threads, malloc) belong to the launch
(:func:`w2vtools.train.launch.set_process_state`), not to the trainer.

Example:
    >>> trainer = Trainer(model, PretrainObjective(), cfg, train_set=train, valid_set=valid,
    ...                   save_dir="exp/w2v2", save_fn=save, load_fn=load_training_checkpoint)  # doctest: +SKIP
    >>> summary = trainer.train()
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd.graph import increment_version

from w2vtools.autocast import warn_if_bf16_is_slow
from w2vtools.errors import W2VError
from w2vtools.train.checkpoints import (
    TRAINER_STATE_VERSION, LoadFn, SaveFn, read_resume_state, resume_hint, write_checkpoints,
)
from w2vtools.train.config import DataConfig, OptimConfig, TrainConfig
from w2vtools.train.data import AudioDataset, BatchSampler, make_loader, stable_seed
from w2vtools.train.distributed import (
    DistInfo, all_gather, all_reduce_sum, barrier, init_distributed, wrap_model,
)
from w2vtools.train.guards import CollapseGuard, NonfiniteGuard
from w2vtools.train.objectives import Objective
from w2vtools.train.rng import rng_state, seed_everything, set_rng_state
from w2vtools.train.run_log import Meter, RunLog, format_number, memory_mb
from w2vtools.train.schedules import make_schedule

log = logging.getLogger("w2v.train")


class Trainer:
    """The training loop (see the module docstring).

    Args:
        model: the model, on CPU; moved to the device and wrapped in DDP here.
        objective: maps (model, batch) to (loss_sum, sample_size, stats).
        cfg: the resolved configuration (``data``, ``optim`` and ``run`` are used).
        train_set, valid_set: datasets of :mod:`w2vtools.train.data`.
        save_dir: checkpoints, ``log.jsonl``, ``tensorboard/`` go here.
        save_fn: ``(path, model, extra)`` writes a checkpoint atomically (the
            commands pass :func:`~w2vtools.models.checkpoint.save_model`).
        load_fn: ``path -> (model state_dict, trainer state)`` for ``resume``
            (the commands pass :func:`~w2vtools.train.checkpoints.load_training_checkpoint`).
        feature_encoder_prefix: parameter-name prefix of the CNN encoder
            (for ``run.freeze_feature_encoder``).
        dist_info: the process layout (default: :func:`init_distributed`).

    Example:
        >>> Trainer(model, objective, cfg, train_set=ds, save_dir="exp", save_fn=save,
        ...         load_fn=load_training_checkpoint).train()   # doctest: +SKIP
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
        save_fn: SaveFn,
        load_fn: LoadFn,
        feature_encoder_prefix: str = "feature_extractor.",
        dist_info: DistInfo | None = None,
    ) -> None:
        run = cfg.run
        self.cfg, self.objective = cfg, objective
        self.dist = dist_info or init_distributed()
        self.device = self.dist.device
        self.save_dir = Path(save_dir)
        self.save_fn, self.load_fn = save_fn, load_fn
        self.train_set, self.valid_set = train_set, valid_set
        self.amp_dtype = _amp_dtype(run.amp, self.device)
        if self.amp_dtype == torch.bfloat16:
            warn_if_bf16_is_slow(self.device, "run.amp=bf16")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16, init_scale=128.0)

        self.core = model.to(self.device)
        self.model = wrap_model(self.core, self.dist)
        self.params = [p for p in self.core.parameters() if p.requires_grad]
        self.names = {p: n for n, p in self.core.named_parameters()}
        for prefix in run.freeze_params:  # a misspelt prefix would otherwise freeze nothing, silently
            if not any(n.startswith(prefix) for n in self.names.values()):
                raise W2VError(f"run.freeze_params: no parameter of the model starts with {prefix!r}")
        # parameter-name prefixes never updated in this run
        self.never_updated = tuple(run.freeze_params) + ((feature_encoder_prefix,) if run.freeze_feature_encoder else ())
        self.optimizer = _optimizer(self.params, cfg.optim)
        self.schedule = _schedule(cfg.optim)
        self.update_freq = cfg.optim.update_freq
        self.sampler, self.loader, self.valid_loader = _loaders(train_set, valid_set, cfg, self.dist)

        # progress: all of it is in the checkpoint
        self.num_updates = 0
        self.epoch = 0
        self.batch_position = 0  # next global batch of self.epoch
        self.best_value: float | None = None
        self.best_tie_value: float | None = None  # run.tie_break_metric at the best validation
        self.valid_since_best = 0  # validations since the last new best (run.patience)
        self.nonfinite = NonfiniteGuard(run.max_nonfinite)
        self.skipped = 0  # utterances left out of training batches because they failed to load, all ranks
        self._skipped_here = 0  # the same, this rank only (its own warnings)
        self._skipped_named: set[tuple[str, str]] = set()  # (train|valid, uid) named once

        self.collapse = CollapseGuard(objective.guard(self.core),
                                      after=run.collapse_warn_after or cfg.optim.warmup_updates,
                                      code_fraction=run.collapse_code_fraction,
                                      peak_fraction=run.collapse_peak_fraction)
        self.run_log = RunLog(self.save_dir, is_main=self.dist.is_main, tensorboard=run.tensorboard)
        self.meter = Meter()
        self.last_valid: dict[str, float] = {}
        self._validated_at = self._saved_at = -1
        self._last_step_updated = False
        self._stop_signal = False

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every log record of this process."""
        return self.run_log.history

    # -----------------------------------------------------------------------------------------
    # The loop

    def train(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Run until ``optim.max_update`` (or ``max_epoch``, ``run.stop_at_update``, SIGTERM).

        Returns a summary: updates done, last validation metrics, best value, non-finite count.
        """
        optim = self.cfg.optim
        if resume is not None:
            self.load_checkpoint(resume)
            self.run_log.truncate_after(self.num_updates)
        self._set_num_updates(self.num_updates)
        self._announce()
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if on_main_thread else None
        end = min(self.cfg.run.stop_at_update or optim.max_update, optim.max_update)
        try:
            self.meter.reset()
            while self.num_updates < end and not self._stop_signal and not self._patience_ran_out():
                if optim.max_epoch and self.epoch >= optim.max_epoch:
                    break
                if self._train_epoch(end):
                    self.epoch += 1
                    self.batch_position = 0
            if self.meter.updates:
                self._log_train()
            if self.valid_loader is not None and self._validated_at != self.num_updates:
                self.validate()
            if self._saved_at != self.num_updates:
                self.save_checkpoint(periodic=False)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.run_log.close()
            self._unfreeze()
        if self._stop_signal:
            log.warning("stopped by SIGTERM after update %d; to continue, %s", self.num_updates,
                        resume_hint(self.save_dir))
        if self.skipped:
            log.warning("train: %d times an utterance that failed to load was left out of its batch (%d distinct%s)",
                        self.skipped, len({u for k, u in self._skipped_named if k == "train"}),
                        " on this rank" if self.dist.distributed else "")
        return {"num_updates": self.num_updates, "epoch": self.epoch, "valid": self.last_valid,
                "best": self.best_value, "nonfinite": self.nonfinite.total, "skipped": self.skipped}

    def _train_epoch(self, end: int) -> bool:
        """Train from the current data position; True when the epoch's batches ran out."""
        run = self.cfg.run
        self.sampler.set_epoch(self.epoch, self.batch_position)
        micro: list[dict] = []
        for batch in self.loader:
            micro.append(batch)
            if len(micro) < self.update_freq:
                continue
            self._update(micro)
            micro = []
            self.batch_position += self.dist.world_size * self.update_freq
            if self.num_updates and self.meter.updates and self.num_updates % run.log_interval == 0:
                self._log_train()
            if self._last_step_updated and _every(self.num_updates, run.valid_interval) \
                    and self.valid_loader is not None:
                self.validate()
                if self._stop_signal:
                    return False
            if self._last_step_updated and _every(self.num_updates, run.save_interval):
                self.save_checkpoint(periodic=True)
            if self.num_updates >= end or self._stop_signal or self._patience_ran_out():
                return self.batch_position >= self.sampler.num_batches(self.epoch)
        return True

    def _update(self, micro: list[dict]) -> None:
        """One optimizer update from the micro-batches of this rank (see the module docstring)."""
        self.model.train()
        frozen = self._freeze()
        stats, samples = self._forward_backward(micro)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        # DDP averaged over ranks: undo that and divide by the total sample size instead.
        sample_size = stats.get("sample_size", 0.0)
        gnorm = self._scale_and_clip(frozen, self.dist.world_size / sample_size if sample_size > 0 else 0.0)
        loss = stats.get("loss", 0.0)
        self._last_step_updated = False
        if not (math.isfinite(gnorm) and math.isfinite(loss)):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():  # fp16 overflow: the scaler lowers the scale, the update is skipped
                self.scaler.update()
                self.nonfinite.overflow(update=self.num_updates, loss_scale=self.scaler.get_scale())
            else:
                self.nonfinite.skip(update=self.num_updates + 1, loss_is_finite=math.isfinite(loss))
            return
        self.nonfinite.ok()
        lr = self.schedule(self.num_updates + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        # The fused Adam kernel writes the parameters without bumping their version counters, and
        # the models' no-grad caches (folded weight norm, concatenated q/k/v) are keyed on them:
        # bump them here, or validation would run on weights cached before this update.
        increment_version(self.params)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._last_step_updated = True
        self._set_num_updates(self.num_updates + 1)
        self.meter.add({**stats, "lr": lr}, gnorm, samples)

    def _forward_backward(self, micro: list[dict]) -> tuple[dict[str, float], float]:
        """Backward of each micro-batch's summed loss; (stats, samples) summed over micro-batches and ranks.

        A SIGTERM on any rank travels with the sums, so every rank stops after the same update.
        """
        stats: dict[str, float] = {}
        samples = 0.0
        skipped = 0
        for step, batch in enumerate(micro):
            skipped += self._note_skipped(batch, "train")
            self._seed_batch(batch, "train")
            batch = self._to_device(batch)
            last = step == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.dist.distributed else self.model.no_sync()
            with sync:
                with self._autocast():
                    loss_sum, _, batch_stats = self.objective(self.model, batch)
                self.scaler.scale(loss_sum.float()).backward()
            _add(stats, batch_stats)
            samples += batch["num_samples"]
        keys = sorted(stats)
        reduced = all_reduce_sum([stats[k] for k in keys] + [samples, float(skipped), float(self._stop_signal)],
                                 self.dist)
        self.skipped += int(reduced[-2])  # log.jsonl and checkpoints count every rank's skips
        if reduced[-1] > 0:
            self._stop_signal = True
        return dict(zip(keys, reduced[: len(keys)])), reduced[len(keys)]

    def _note_skipped(self, batch: dict, kind: str) -> int:
        """Name each utterance the loader left out of ``batch`` once; returns how many it left out."""
        entries = batch.get("skipped") or ()
        for entry in entries:
            uid = entry.split(": ", 1)[0]
            if kind == "train":
                self._skipped_here += 1
            if (kind, uid) in self._skipped_named:
                continue
            self._skipped_named.add((kind, uid))
            where = f" on rank {self.dist.rank}" if self.dist.distributed else ""
            log.warning("%s: skipped at update %d: %s (left out of its batch; %d training utterances skipped "
                        "so far%s)", kind, self.num_updates + 1, entry, self._skipped_here, where)
        return len(entries)

    def _scale_and_clip(self, frozen: set[torch.nn.Parameter], factor: float) -> float:
        """Drop frozen parameters' gradients, multiply the others by ``factor``, clip; the gradient norm."""
        grads = []
        for p in self.params:
            if p.grad is None:
                continue
            if p in frozen:
                p.grad = None  # DDP may still hand a frozen parameter a (zero) gradient
            else:
                grads.append(p.grad)
        if grads:
            torch._foreach_mul_(grads, factor)
        clip = self.cfg.optim.clip_norm
        gnorm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.params if p.grad is not None], clip if clip > 0 else float("inf")
        )
        return float(gnorm)

    def _freeze(self) -> set[torch.nn.Parameter]:
        """The parameters this update leaves alone; they stop requiring gradients until they thaw.

        The one owner of freezing (models have none of their own): which parameters
        freeze and until when is a decision of the training run (``run.*``), the same
        for every model, and turning off ``requires_grad`` (rather than discarding
        gradients afterwards) lets autograd skip the frozen part's backward, as a
        ``no_grad`` encoder would.
        """
        run = self.cfg.run
        frozen: set[torch.nn.Parameter] = set()
        for p in self.params:
            name = self.names.get(p, "")
            if name.startswith(self.never_updated):
                frozen.add(p)
            elif self.num_updates < run.freeze_updates and not name.startswith(tuple(run.train_during_freeze)):
                frozen.add(p)
        for p in self.params:
            p.requires_grad_(p not in frozen)
        return frozen

    def _unfreeze(self) -> None:
        """Give the model back with every trained parameter requiring gradients, as it came."""
        for p in self.params:
            p.requires_grad_(True)

    def _seed_batch(self, batch: dict, kind: str) -> None:
        seed_everything(stable_seed(self.cfg.run.seed, kind, batch["epoch"], batch["index"]))

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _set_num_updates(self, n: int) -> None:
        self.num_updates = n
        setter = getattr(self.core, "set_num_updates", None)
        if callable(setter):
            setter(n)

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = True

    # -----------------------------------------------------------------------------------------
    # Validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """One pass over the validation set (split over ranks); returns the metrics.

        Each batch is seeded from (seed, batch index), so validation at any update
        sees the same masks and negatives.
        """
        assert self.valid_loader is not None
        start = time.perf_counter()
        stats = self._valid_stats()
        metrics = {**self.objective.metrics(stats), "nsentences": stats.get("nsentences", 0.0)}
        name = self.cfg.run.best_metric
        value = metrics.get(name)
        tie_value = metrics.get(self.cfg.run.tie_break_metric) if self.cfg.run.tie_break_metric else None
        is_best = value is not None and math.isfinite(value) and (
            self.best_value is None
            or self._better(value, self.best_value)
            or (value == self.best_value and tie_value is not None and math.isfinite(tie_value)
                and (self.best_tie_value is None or self._better(tie_value, self.best_tie_value)))
        )
        if is_best:
            self.best_value = value
            self.best_tie_value = tie_value
            self.valid_since_best = 0
        else:
            self.valid_since_best += 1
        if value is None:
            log.warning("valid: metric %r (run.best_metric) not among %s", name, ", ".join(sorted(metrics)))
        self.run_log.write({"kind": "valid", "update": self.num_updates, "epoch": self.epoch, **metrics,
                            f"best_{name}": self.best_value, "valid_since_best": self.valid_since_best,
                            "seconds": time.perf_counter() - start})
        if self._patience_ran_out():
            log.info("valid: no better %s in %d validations (run.patience): stopping at update %d; "
                     "checkpoint_best.pt has %s %s", name, self.valid_since_best, self.num_updates, name,
                     format_number(self.best_value) if self.best_value is not None else None)
        self.last_valid = metrics
        self._validated_at = self.num_updates
        self.meter.pause(start)  # throughput counts training time only
        if is_best:
            self.save_checkpoint(periodic=False, best=True)
        return metrics

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.cfg.run.maximize_best else a < b

    def _patience_ran_out(self) -> bool:
        """Early stopping: ``run.patience`` validations in a row without a new best."""
        return 0 < self.cfg.run.patience <= self.valid_since_best

    def _valid_stats(self) -> dict[str, float]:
        """The objective's stats summed over the validation batches of every rank."""
        self.core.eval()
        stats: dict[str, float] = {}
        for batch in self.valid_loader:
            self._note_skipped(batch, "valid")
            self._seed_batch(batch, "valid")
            batch = self._to_device(batch)
            with self._autocast():
                _, _, batch_stats = self.objective(self.core, batch)
            _add(stats, batch_stats)
        self.core.train()
        # a rank without a batch has no keys: share the names
        keys = sorted(set().union(*all_gather(sorted(stats), self.dist)))
        return dict(zip(keys, all_reduce_sum([stats.get(k, 0.0) for k in keys], self.dist)))

    # -----------------------------------------------------------------------------------------
    # Logging

    def _announce(self) -> None:
        if not self.dist.is_main:
            return
        n_params = sum(p.numel() for p in self.core.parameters())
        n_train = sum(p.numel() for p in self.params)
        log.info(
            "model: %.2f M parameters (%.2f M trained); %d process(es) x update_freq %d; device %s; amp %s",
            n_params / 1e6, n_train / 1e6, self.dist.world_size, self.update_freq, self.device,
            self.amp_dtype or "off",
        )
        log.info(
            "data: %d batches per epoch (%d updates of %d micro-batches of <= %d samples); starting at update %d, "
            "epoch %d, batch %d",
            self.sampler.num_batches(self.epoch), self.sampler.updates_per_epoch(self.epoch),
            self.dist.world_size * self.update_freq, self.cfg.data.max_samples_per_batch, self.num_updates,
            self.epoch, self.batch_position,
        )

    def _log_train(self) -> None:
        record: dict[str, Any] = {"kind": "train", "update": self.num_updates, "epoch": self.epoch,
                                  **self.objective.metrics(self.meter.stats),
                                  **self.meter.rates(self.cfg.data.sample_rate),
                                  "mem_mb": memory_mb(self.device), "nonfinite": self.nonfinite.total}
        if self.skipped:
            record["skipped"] = self.skipped
        if self.scaler.is_enabled():
            record["loss_scale"] = self.scaler.get_scale()
        self.run_log.write(record)
        for warning in self.collapse.check(record):
            self.run_log.write(warning)
        self.meter.reset()

    # -----------------------------------------------------------------------------------------
    # Checkpoints (the files and checks: w2vtools.train.checkpoints)

    def state_dict(self) -> dict[str, Any]:
        """The trainer entry of a checkpoint (collective: every rank must call it)."""
        return {
            "version": TRAINER_STATE_VERSION,
            "num_updates": self.num_updates,
            "epoch": self.epoch,
            "batch_position": self.batch_position,
            "world_size": self.dist.world_size,
            "update_freq": self.update_freq,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": all_gather(rng_state(), self.dist),
            "best": {"metric": self.cfg.run.best_metric, "value": self.best_value, "tie_value": self.best_tie_value,
                     "maximize": self.cfg.run.maximize_best, "valid_since_best": self.valid_since_best},
            "nonfinite": self.nonfinite.state_dict(),
            "collapse": self.collapse.state_dict(),
            "skipped": self.skipped,
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, *, periodic: bool, best: bool = False) -> None:
        """Write ``checkpoint_last.pt`` (and ``_best``, ``_<update>``) from rank 0; prune old ones."""
        paused = time.perf_counter()
        state = self.state_dict()
        if self.dist.is_main:
            write_checkpoints(self.save_fn, self.core, state, self.save_dir, num_updates=self.num_updates,
                              periodic=periodic, best=best, keep_last=self.cfg.run.keep_last)
        self._saved_at = self.num_updates
        barrier(self.dist)
        self.meter.pause(paused)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scaler, counters, data position and this rank's RNG state."""
        st = read_resume_state(self.load_fn, path, self.core, world_size=self.dist.world_size,
                               update_freq=self.update_freq)
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
        same_metric = best.get("metric") == self.cfg.run.best_metric
        self.best_value = best.get("value") if same_metric else None
        self.best_tie_value = best.get("tie_value") if same_metric else None
        self.valid_since_best = int(best.get("valid_since_best", 0)) if same_metric else 0
        self.nonfinite.load_state_dict(st.get("nonfinite") or {})
        self.collapse.load_state_dict(st.get("collapse") or {})
        self.skipped = int(st.get("skipped", 0))
        rngs = st.get("rng") or []
        if st["world_size"] == self.dist.world_size and len(rngs) > self.dist.rank:
            set_rng_state(rngs[self.dist.rank])
        log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.num_updates, self.epoch,
                 self.batch_position)


# ---------------------------------------------------------------------------------------------
# Building blocks of the trainer


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``run.amp`` on ``device`` (None: float32)."""
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type == "cuda":
            return torch.float16
        log.warning("run.amp=fp16 needs a GPU; training in float32 on %s", device)
    return None


def _optimizer(params: list[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay over ``params`` (fairseq's ``adam``).

    PyTorch's fused kernel where it has one (CPU and CUDA): one pass over each tensor instead of
    the foreach path's chain of whole-tensor ops, which on the CPU was slower even than the
    per-tensor loop (BENCHMARKS.md, "Optimizer step"). The fused kernel leaves the parameters'
    version counters alone; :meth:`Trainer._update` bumps them after each step.
    """
    devices = {p.device.type for p in params}
    fused = bool(params) and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay, **({"fused": True} if fused else {}))


def _schedule(optim: OptimConfig):
    """The learning rate by update number (:mod:`w2vtools.train.schedules`)."""
    return make_schedule(
        optim.schedule, lr=optim.lr, total_updates=optim.max_update, warmup_updates=optim.warmup_updates,
        warmup_init_lr=optim.warmup_init_lr, end_lr=optim.end_lr, power=optim.power,
        phase_ratio=tuple(optim.phase_ratio), init_lr_scale=optim.init_lr_scale,
        final_lr_scale=optim.final_lr_scale,
    )


def _loaders(train_set, valid_set, cfg: TrainConfig, dist_info: DistInfo):
    """(train sampler, train loader, valid loader or None): this rank's share of the batches."""
    data: DataConfig = cfg.data
    pin = dist_info.device.type == "cuda"
    sampler = BatchSampler(
        train_set.sizes_for_batching, max_samples=data.max_samples_per_batch, max_batch_size=data.max_batch_size,
        seed=cfg.run.seed, world_size=dist_info.world_size, rank=dist_info.rank, update_freq=cfg.optim.update_freq,
    )
    loader = make_loader(train_set, sampler, num_workers=data.num_workers, pin_memory=pin)
    if valid_set is None:
        return sampler, loader, None
    valid_sampler = BatchSampler(
        valid_set.sizes_for_batching, max_samples=data.max_samples_per_batch, max_batch_size=data.max_batch_size,
        seed=cfg.run.seed, shuffle=False, world_size=dist_info.world_size, rank=dist_info.rank,
        drop_remainder=False,
    )
    return sampler, loader, make_loader(valid_set, valid_sampler, num_workers=min(1, data.num_workers),
                                        pin_memory=pin)


def _every(n: int, interval: int) -> bool:
    """True when ``interval`` is set (> 0) and divides ``n``."""
    return bool(interval) and n % interval == 0


def _add(total: dict[str, float], stats: dict[str, float]) -> None:
    """Sum ``stats`` of one batch into ``total``, counting the batch in ``_batches``."""
    for k, v in stats.items():
        total[k] = total.get(k, 0.0) + v
    total["_batches"] = total.get("_batches", 0.0) + 1
