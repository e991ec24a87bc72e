"""The options ``w2v pretrain`` and ``w2v finetune`` share, and how they become ``--set`` items.

:func:`training_options` adds them to a command and hands the command ``config_file``,
``sets`` (the ``--set`` items, then one item per option given, ``data.verify=true`` for
``--verify``), ``save_dir``,
``resume`` and ``device``. An option given on the command line wins over the same
setting in ``--set`` or ``--config``.

Example:
    >>> @click.command()
    ... @training_options
    ... def command(config_file, sets, save_dir, resume, device):
    ...     ...
"""

from __future__ import annotations

import functools

import click

# (option, type, the config setting it sets, help), in the order they are applied
SETTINGS: tuple[tuple[str, type, str, str], ...] = (
    ("--update-freq", int, "optim.update_freq", "Accumulate this many batches per update (emulates more GPUs)."),
    ("--max-update", int, "optim.max_update", "Length of the run (and of the lr schedule)."),
    ("--stop-at-update", int, "run.stop_at_update",
     "Stop after this update without shortening the schedule (resume later)."),
    ("--valid-interval", int, "run.valid_interval", "Validate every N updates."),
    ("--lr", float, "optim.lr", "Peak learning rate (optim.lr)."),
    ("--seed", int, "run.seed", "Seed of batches, crops, masks, negatives, dropout."),
    ("--threads", int, "run.threads",
     "torch threads per process (default: $OMP_NUM_THREADS, else torch's: one per physical core; give a "
     "number beside other jobs. Fixed, not load-dependent: --resume must repeat the same arithmetic)."),
)


def _parameter(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def settings_as_sets(sets: tuple[str, ...] | list[str], values: dict) -> list[str]:
    """``sets`` followed by ``SECTION.KEY=VALUE`` for each option of :data:`SETTINGS` given in ``values``.

    Example:
        >>> settings_as_sets(["optim.lr=1e-4"], {"max_update": 300, "seed": None})
        ['optim.lr=1e-4', 'optim.max_update=300']
    """
    extra = list(sets)
    for option, _, key, _ in SETTINGS:
        value = values.get(_parameter(option))
        if value is not None:
            extra.append(f"{key}={value}")
    return extra


def training_options(command):
    """Add the shared training options to a click command function (see the module docstring)."""

    @functools.wraps(command)
    def wrapper(*args, sets, verify, **kwargs):
        # `--resume exp/x/checkpoint_last.pt` (an old hint's form) leaves the path as TRAIN
        given = kwargs.get("train")
        if kwargs.get("resume") and given and given.endswith((".pt", ".pth", ".ckpt")):
            raise click.UsageError(f"--resume takes no value: it continues from SAVE_DIR/checkpoint_last.pt; "
                                   f"drop {given!r} and give the run's own TRAIN and --save-dir")
        values = {_parameter(option): kwargs.pop(_parameter(option)) for option, _, _, _ in SETTINGS}
        extra = settings_as_sets(sets, values) + (["data.verify=true"] if verify else [])
        return command(*args, sets=extra, **kwargs)

    options = [
        click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
                     help="YAML with sections model/data/optim/run, applied over the preset."),
        click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one setting (repeatable), e.g. --set optim.lr=1e-4 --set model.mask_prob=0.5."),
        click.option("--save-dir", required=True,
                     help="Checkpoints, config.yaml, log.jsonl and tensorboard/ go here (finetune: also dict.ltr.txt)."),
        *[click.option(option, type=kind, default=None, help=text) for option, kind, _, text in SETTINGS],
        click.option("--verify", is_flag=True,
                     help="Before the first update, decode every recording in full (NaN samples, corrupt bodies) "
                          "instead of reading headers only; bad ones are named and left out (data.verify)."),
        click.option("--resume", is_flag=True, help="Continue exactly from SAVE_DIR/checkpoint_last.pt."),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
