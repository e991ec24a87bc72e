"""Learning-rate schedules as pure functions of the update number.

A schedule maps ``num_updates`` (updates already done) to the learning rate of
the next update. It holds no state of its own, so resuming a run needs only the
update counter, and the curve can be printed or plotted before training starts.

The four schedules are fairseq's:

* ``polynomial``: linear warm-up from 0 to ``lr`` over ``warmup_updates``, then
  polynomial decay (``power`` 1 = linear) to ``end_lr`` at ``total_updates``
  (wav2vec 2.0 pretraining).
* ``tri_stage``: warm-up from ``init_lr_scale * lr`` to ``lr`` over the first
  ``phase_ratio[0]`` of the run, hold ``lr`` for ``phase_ratio[1]``, then decay
  exponentially to ``final_lr_scale * lr`` over ``phase_ratio[2]`` and stay there
  (wav2vec 2.0 fine-tuning: 10 % / 40 % / 50 %, 0.01 and 0.05).
* ``fixed``: ``lr`` after an optional linear warm-up from 0.
* ``cosine``: linear warm-up from ``warmup_init_lr`` to ``lr``, then half a cosine
  down to ``end_lr`` at ``total_updates`` (wav2vec, vq-wav2vec).

Example:
    >>> s = make_schedule("polynomial", lr=5e-4, warmup_updates=100, total_updates=1000)
    >>> s(0), s(50), s(100), round(s(550), 7), s(1000)
    (0.0, 0.00025, 0.0005, 0.00025, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

SCHEDULES = ("polynomial", "tri_stage", "fixed", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A learning-rate curve; call it with the number of updates done so far."""

    name: str
    fn: Callable[[int], float]

    def __call__(self, num_updates: int) -> float:
        return float(self.fn(max(0, int(num_updates))))


def make_schedule(
    name: str,
    *,
    lr: float,
    total_updates: int,
    warmup_updates: int = 0,
    warmup_init_lr: float = 0.0,
    end_lr: float = 0.0,
    power: float = 1.0,
    phase_ratio: Sequence[float] = (0.1, 0.4, 0.5),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> Schedule:
    """Build a schedule by name (see the module docstring for the shapes).

    Args:
        name: one of ``polynomial``, ``tri_stage``, ``fixed``, ``cosine``.
        lr: the peak learning rate.
        total_updates: the length of the run (``max_update``).
        warmup_updates: linear warm-up length (all but ``tri_stage``).
        warmup_init_lr: the learning rate at update 0 for ``cosine``.
        end_lr: the final learning rate of ``polynomial`` and ``cosine``.
        power: the exponent of ``polynomial`` decay.
        phase_ratio: warm-up / hold / decay fractions of ``tri_stage``.
        init_lr_scale, final_lr_scale: ``tri_stage`` start and end, relative to ``lr``.

    Raises:
        ValueError: an unknown name or inconsistent lengths.

    Example:
        >>> s = make_schedule("tri_stage", lr=1.0, total_updates=100)
        >>> s(0), s(10), s(49), round(s(100), 4)
        (0.01, 1.0, 1.0, 0.05)
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if total_updates <= 0:
        raise ValueError(f"total_updates must be positive, got {total_updates}")
    warmup = max(0, int(warmup_updates))

    if name == "polynomial":
        if warmup >= total_updates:
            raise ValueError(f"warmup_updates ({warmup}) must be below total_updates ({total_updates})")

        def poly(n: int) -> float:
            if warmup and n < warmup:
                return lr * n / warmup
            if n >= total_updates:
                return end_lr
            remaining = 1.0 - (n - warmup) / (total_updates - warmup)
            return (lr - end_lr) * remaining**power + end_lr

        return Schedule(name, poly)

    if name == "fixed":

        def fixed(n: int) -> float:
            if warmup and n < warmup:
                return lr * n / warmup
            return lr

        return Schedule(name, fixed)

    if name == "cosine":
        if warmup >= total_updates:
            raise ValueError(f"warmup_updates ({warmup}) must be below total_updates ({total_updates})")

        def cosine(n: int) -> float:
            if warmup and n < warmup:
                return warmup_init_lr + (lr - warmup_init_lr) * n / warmup
            t = min(1.0, (n - warmup) / (total_updates - warmup))
            return end_lr + 0.5 * (lr - end_lr) * (1.0 + math.cos(math.pi * t))

        return Schedule(name, cosine)

    # tri_stage
    if len(phase_ratio) != 3 or abs(sum(phase_ratio) - 1.0) > 1e-6:
        raise ValueError(f"tri_stage phase_ratio must be three fractions summing to 1, got {list(phase_ratio)}")
    warm = int(total_updates * phase_ratio[0])
    hold = int(total_updates * phase_ratio[1])
    decay = int(total_updates * phase_ratio[2])
    init_lr = init_lr_scale * lr
    final_lr = final_lr_scale * lr
    decay_rate = -math.log(final_lr_scale) / decay if decay > 0 else 0.0

    def tri_stage(n: int) -> float:
        if n < warm:
            return init_lr + (lr - init_lr) * n / warm
        n -= warm
        if n < hold:
            return lr
        n -= hold
        if n <= decay:
            return lr * math.exp(-decay_rate * n)
        return final_lr

    return Schedule(name, tri_stage)
