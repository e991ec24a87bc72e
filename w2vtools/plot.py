"""Training curves from a ``log.jsonl`` written by the trainer, to a PNG.

One panel per metric (loss, accuracy, code perplexity, learning rate, ...), the
training curve against updates and the validation points on top of it. Several
logs can be drawn together (one colour per run) to compare runs.

Example:
    >>> plot_logs(["exp/tiny/log.jsonl"], "curves.png")   # doctest: +SKIP
    ['loss', 'accuracy', 'code_perplexity', 'lr']
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

from w2vtools.errors import W2VError

DEFAULT_METRICS = ("loss", "accuracy", "code_perplexity", "prob_perplexity", "temp", "wer", "uer", "lr", "gnorm",
                   "audio_s_per_s")


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL training log; a line that is not JSON is an error naming its number."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise W2VError(f"{path}:{lineno}: not a JSON line") from None
                if not isinstance(rec, dict) or "update" not in rec:
                    raise W2VError(f"{path}:{lineno}: not a training log record (no 'update')")
                records.append(rec)
    except FileNotFoundError:
        raise W2VError(f"{path}: no such file") from None
    if not records:
        raise W2VError(f"{path}: empty log")
    return records


def plot_logs(
    logs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> list[str]:
    """Draw ``logs`` into ``out`` (PNG); returns the metrics drawn.

    Args:
        logs: one or more ``log.jsonl`` files.
        out: the PNG to write (atomically).
        metrics: which keys to draw; default: those of :data:`DEFAULT_METRICS` present.
        title: figure title (default: the log paths).

    Raises:
        W2VError: unreadable log, or none of the metrics present.
    """
    try:
        import matplotlib
    except ImportError:
        raise W2VError("w2v plot needs matplotlib: pip install matplotlib") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from w2vtools.fileio import atomic_write

    runs = [(str(p), read_log(p)) for p in logs]
    present = {k for _, recs in runs for r in recs for k, v in r.items() if isinstance(v, (int, float))}
    wanted = list(metrics) if metrics else [m for m in DEFAULT_METRICS if m in present]
    missing = [m for m in wanted if m not in present]
    if metrics and missing:
        raise W2VError(f"metric {missing[0]!r} is in none of the logs (present: {', '.join(sorted(present))})")
    if not wanted:
        raise W2VError("none of the known metrics is in the logs")
    cols = min(3, len(wanted))
    rows = math.ceil(len(wanted) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, metric in enumerate(wanted):
        ax = axes[i // cols][i % cols]
        for j, (name, recs) in enumerate(runs):
            color = colors[j % len(colors)]
            label = Path(name).parent.name or name
            for kind, style in (("train", "-"), ("valid", "o--")):
                pts = [(r["update"], r[metric]) for r in recs
                       if r.get("kind", "train") == kind and isinstance(r.get(metric), (int, float))
                       and math.isfinite(r[metric])]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, style, color=color, markersize=3, linewidth=1.2,
                            label=f"{label} {kind}" if len(runs) > 1 else kind)
        ax.set_title(metric + (" (bits)" if metric == "loss" else ""))
        ax.set_xlabel("update")
        if metric == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for k in range(len(wanted), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(title or ", ".join(name for name, _ in runs), fontsize=9)
    fig.tight_layout()
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return wanted
