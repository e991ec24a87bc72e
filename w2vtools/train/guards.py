"""Guards that watch a training run: non-finite updates and a collapsing contrastive model.

:class:`NonfiniteGuard` decides what happens when an update's loss or gradient is
not finite: fp16 overflows lower the loss scale (stopping when it falls below
1e-4), other non-finite updates are skipped and counted, and the run stops after
``run.max_nonfinite`` in a row. Its counters are part of the checkpoint.

:class:`CollapseGuard` warns (never stops) when, for 3 log intervals in a row, the
contrastive loss sits at chance, the code perplexity is a small part of the code book, or
it has fallen far below its peak (a partial collapse that a climbing accuracy hides).

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
    """Warns (never stops) when the contrastive loss sits at chance or the code book collapses.

    Three conditions, each reported once when it has held for 3 log intervals in a row
    (and again only after it has cleared):

    * ``chance``: the contrastive loss above 97 % of chance, log2(K+1) bits;
    * ``codes_few``: code perplexity below ``max(2 x groups, code_fraction x codes)``,
      i.e. only a small part of the code book in use (a total or partial collapse);
    * ``codes_fell``: code perplexity below ``peak_fraction`` x the highest value seen
      since ``after``, a code book that was in use and has stopped being so. This is the
      collapse that hides behind a climbing accuracy: with fewer codes in play the
      contrastive task gets easier while the targets carry less.

    Each warning is returned as a ``kind: warning`` record for ``log.jsonl``
    (docs/training_logs.md). The peak is part of the checkpoint (:meth:`state_dict`).

    Args:
        info: what collapse looks like for this model (:meth:`Objective.guard`).
        after: stay quiet, and do not track the peak, before this update (the warm-up).
        code_fraction: fraction of the code book below which perplexity counts as too few
            codes in use (0 = only the 2-per-group floor).
        peak_fraction: fraction of the peak code perplexity below which it counts as fallen
            (0 = off).

    Example:
        >>> guard = CollapseGuard(Guard(num_codes=640, groups=2), after=0)
        >>> [guard.check({"update": u, "code_perplexity": p}) for u, p in [(1, 300.0), (2, 60.0), (3, 60.0)]]
        [[], [], []]
        >>> guard.check({"update": 4, "code_perplexity": 60.0})[0]["warning"]
        'codes_fell'
    """

    def __init__(self, info: Guard, *, after: int, code_fraction: float = 0.05, peak_fraction: float = 0.25) -> None:
        self.info = info
        self.after = after
        self.code_fraction = code_fraction
        self.peak_fraction = peak_fraction
        self.peak: float | None = None  # highest code perplexity since `after`
        self.peak_update: int | None = None
        self.strikes = {"chance": 0, "codes_few": 0, "codes_fell": 0}

    @property
    def code_threshold(self) -> float | None:
        """Code perplexity below which too few codes are in use (None without a code book)."""
        g = self.info
        if not g.num_codes:
            return None
        return max(2.0 * g.groups, self.code_fraction * g.num_codes)

    def check(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Look at one train record (with ``update`` and the objective's metrics).

        Returns:
            the warning records to log (usually none), each with ``kind: warning``,
            ``update``, ``warning`` (``chance``, ``codes_few`` or ``codes_fell``), ``message``
            and the numbers it is about; the message also goes to the ``w2v.train`` logger
            when the caller writes the record.
        """
        update = record["update"]
        if update < self.after:
            return []
        g = self.info
        warnings: list[dict[str, Any]] = []
        contrastive = next(
            (record[k] for k in ("contrastive_loss", "loss_contrastive", "loss_0", "loss") if k in record), None
        )
        if g.chance_bits and contrastive is not None:
            if self._strike("chance", contrastive > 0.97 * g.chance_bits):
                warnings.append(_warning(
                    record, "chance",
                    f"the contrastive loss ({contrastive:.3f} bits) sits near chance log2(K+1) = "
                    f"{g.chance_bits:.3f} bits for 3 log intervals: the model is not learning "
                    "(learning rate? masking? data?)",
                    contrastive_loss=contrastive, chance_bits=g.chance_bits,
                ))
        ppl = record.get("code_perplexity")
        threshold = self.code_threshold
        if threshold is None or ppl is None:
            return warnings
        if self._strike("codes_few", ppl < threshold):
            warnings.append(_warning(
                record, "codes_few",
                f"code perplexity {ppl:.1f} of {g.num_codes} codes for 3 log intervals (below "
                f"{threshold:.1f}, run.collapse_code_fraction={self.code_fraction:g}): the code book has "
                f"collapsed{_accuracy_note(record)} (raise model.diversity_weight or the Gumbel "
                "temperature floor, model.latent_temp)",
                code_perplexity=ppl, threshold=threshold, num_codes=g.num_codes,
            ))
        if self.peak is not None and self.peak_fraction > 0:
            fell_below = self.peak_fraction * self.peak
            if self._strike("codes_fell", ppl < fell_below):
                warnings.append(_warning(
                    record, "codes_fell",
                    f"code perplexity {ppl:.1f} of {g.num_codes} codes for 3 log intervals, down from its "
                    f"peak {self.peak:.1f} at update {self.peak_update} (below "
                    f"run.collapse_peak_fraction={self.peak_fraction:g} of it): the code book is "
                    f"collapsing{_accuracy_note(record)} (raise model.diversity_weight or the Gumbel "
                    "temperature floor, model.latent_temp)",
                    code_perplexity=ppl, threshold=fell_below, peak=self.peak, peak_update=self.peak_update,
                    num_codes=g.num_codes,
                ))
        if self.peak is None or ppl > self.peak:
            self.peak, self.peak_update = float(ppl), update
        return warnings

    def _strike(self, what: str, bad: bool) -> bool:
        """Count a bad interval (or reset the count); True on the interval that makes it 3."""
        self.strikes[what] = self.strikes[what] + 1 if bad else 0
        return self.strikes[what] == _STRIKES

    def state_dict(self) -> dict[str, Any]:
        return {"peak": self.peak, "peak_update": self.peak_update, "strikes": dict(self.strikes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peak = state.get("peak")
        self.peak_update = state.get("peak_update")
        self.strikes.update({k: int(v) for k, v in (state.get("strikes") or {}).items() if k in self.strikes})


def _accuracy_note(record: dict[str, Any]) -> str:
    # a partial collapse makes the contrastive task easier: say so when the accuracy looks fine
    acc = record.get("accuracy")
    temp = record.get("temp")
    note = ""
    if temp is not None:
        note += f" at Gumbel temperature {temp:.3g}"
    if acc is not None:
        note += f", with accuracy {acc:.3f} (a rising accuracy does not clear this: fewer codes make the task easier)"
    return note


def _warning(record: dict[str, Any], what: str, message: str, **numbers: Any) -> dict[str, Any]:
    out = {"kind": "warning", "update": record["update"], "warning": what, "message": message, **numbers}
    if "epoch" in record:
        out["epoch"] = record["epoch"]
    return out
