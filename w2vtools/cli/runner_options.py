"""The options of every command that runs a model over a corpus (decode, align; featurize takes
--int8 from here too): one definition."""

from __future__ import annotations

import click

INT8_OPTION = click.option(
    "--int8", is_flag=True,
    help="With --model on a CPU: run the model's linear and convolution layers in int8 (dynamic quantization; "
         "faster, features within a few % of float32: BENCHMARKS.md). Not with --device cuda or --amp. On a "
         "CPU with AMX tiles --amp (bf16) is faster still, and closer to float32.")

RUNNER_OPTIONS = [
    INT8_OPTION,
    click.option("--batch-seconds", type=float, default=None,
                 help="Padded audio per model batch (with --model) [default: 5 on a CPU, 200 on a GPU]."),
    click.option("--chunk-seconds", type=float, default=60.0, show_default=True,
                 help="With --model: longer recordings run in windows of this length (memory bounded by the window)."),
    click.option("--chunk-overlap", type=float, default=2.0, show_default=True,
                 help="Seconds of context on each side of a window, dropped when the frames are stitched."),
]


def runner_options(command):
    """Add --int8, --batch-seconds, --chunk-seconds and --chunk-overlap to a click command function."""
    for option in reversed(RUNNER_OPTIONS):
        command = option(command)
    return command
