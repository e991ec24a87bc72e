"""Guards that watch a training run: non-finite updates and a collapsing contrastive model.

:class:`NonfiniteGuard` decides what happens when an update's loss or gradient is
not finite: fp16 overflows lower the loss scale (stopping when it falls below
1e-4), other non-finite updates are skipped and counted, and the run stops after
``run.max_nonfinite`` in a row. Its counters are part of the checkpoint.

:class:`CollapseGuard` warns (never stops) when, for 3 log intervals in a row, the
contrastive loss sits at chance or the code perplexity below the objective's floor.

Example:
    >>> guard = NonfiniteGuard(max_in_a_row=3)
    >>> guard.skip(update=5, loss_is_finite=False)     # logs a warning
    >>> guard.total, guard.in_a_row
    (1, 1)
"""

from __future__ import annotations

import logging
from typing import Any

from w2vtools.errors import W2VError
from w2vtools.train.objectives import Guard

log = logging.getLogger("w2v.train")

_STRIKES = 3  # log intervals in a row before a collapse warning


class NonfiniteGuard:
    """Counts non-finite updates; raises when training cannot go on.

    Args:
        max_in_a_row: stop after this many non-finite (non-overflow) updates in a row.
    """

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.total = 0
        self.in_a_row = 0
        self.overflows = 0

    def ok(self) -> None:
        """The update was finite."""
        self.in_a_row = 0

    def overflow(self, *, update: int, loss_scale: float) -> None:
        """An fp16 overflow (the scaler has lowered ``loss_scale``); raises when the scale is spent."""
        self.overflows += 1
        if loss_scale < 1e-4:
            raise W2VError(
                f"fp16 loss scale fell below 1e-4 after {self.overflows} overflows at update "
                f"{update}: the loss diverges (lower optim.lr, or use run.amp=bf16)"
            )

    def skip(self, *, update: int, loss_is_finite: bool) -> None:
        """A skipped update (``update`` is the number it would have had); raises after too many in a row."""
        self.total += 1
        self.in_a_row += 1
        log.warning("update %d: non-finite %s, update skipped (%d in a row, %d in total)",
                    update, "gradient" if loss_is_finite else "loss", self.in_a_row, self.total)
        if self.in_a_row >= self.max_in_a_row:
            raise W2VError(
                f"stopping: {self.in_a_row} non-finite losses/gradients in a row at update "
                f"{update - 1} (run.max_nonfinite={self.max_in_a_row}); lower optim.lr, "
                "set optim.clip_norm, or check the data"
            )

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "in_a_row": self.in_a_row, "overflows": self.overflows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = int(state.get("total", 0))
        self.in_a_row = int(state.get("in_a_row", 0))
        self.overflows = int(state.get("overflows", 0))


class CollapseGuard:
    """Warns when the contrastive loss sits at chance or the code book collapses.

    Args:
        info: what collapse looks like for this model (:meth:`Objective.guard`).
        after: stay quiet before this update (the warm-up).
    """

    def __init__(self, info: Guard, *, after: int) -> None:
        self.info = info
        self.after = after
        self.strikes = {"chance": 0, "codes": 0}

    def check(self, record: dict[str, Any]) -> None:
        """Look at one train record (with ``update`` and the objective's metrics)."""
        update = record["update"]
        if update < self.after:
            return
        g = self.info
        contrastive = next(
            (record[k] for k in ("contrastive_loss", "loss_contrastive", "loss_0", "loss") if k in record), None
        )
        if g.chance_bits and contrastive is not None:
            if self._strike("chance", contrastive > 0.97 * g.chance_bits):
                log.warning(
                    "update %d: the contrastive loss (%.3f bits) sits near chance log2(K+1) = %.3f bits "
                    "for 3 log intervals: the model is not learning (learning rate? masking? data?)",
                    update, contrastive, g.chance_bits,
                )
        ppl = record.get("code_perplexity")
        if g.code_floor is not None and ppl is not None:
            if self._strike("codes", ppl < g.code_floor):
                log.warning(
                    "update %d: code perplexity %.1f of %d codes for 3 log intervals: the code book has "
                    "collapsed (raise the diversity loss weight or the Gumbel temperature)",
                    update, ppl, g.num_codes,
                )

    def _strike(self, what: str, bad: bool) -> bool:
        """Count a bad interval (or reset the count); True on the interval that makes it 3."""
        self.strikes[what] = self.strikes[what] + 1 if bad else 0
        return self.strikes[what] == _STRIKES
