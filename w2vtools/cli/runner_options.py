"""The options of every command that runs a model over a corpus (decode, align): one definition."""

from __future__ import annotations

import click

RUNNER_OPTIONS = [
    click.option("--batch-seconds", type=float, default=None,
                 help="Padded audio per model batch (with --model) [default: 5 on a CPU, 200 on a GPU]."),
    click.option("--chunk-seconds", type=float, default=60.0, show_default=True,
                 help="With --model: longer recordings run in windows of this length (memory bounded by the window)."),
    click.option("--chunk-overlap", type=float, default=2.0, show_default=True,
                 help="Seconds of context on each side of a window, dropped when the frames are stitched."),
]


def runner_options(command):
    """Add --batch-seconds, --chunk-seconds and --chunk-overlap to a click command function."""
    for option in reversed(RUNNER_OPTIONS):
        command = option(command)
    return command
