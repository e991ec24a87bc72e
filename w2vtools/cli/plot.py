"""``w2v plot``: training curves from log.jsonl to PNG."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("logs", nargs=-1, required=True, metavar="LOG.jsonl...")
@click.option("-o", "--output", required=True, help="The PNG to write.")
@click.option("--metric", "metrics", multiple=True,
              help="A metric to draw (repeatable; default: loss, accuracy, perplexities, lr, ... as present).")
@click.option("--title", default=None, help="Figure title (default: the log paths).")
def command(logs, output, metrics, title):
    """Plot the training and validation curves of one or more training logs.

    LOG.jsonl is the log.jsonl that `w2v pretrain` and `w2v finetune` write in
    their save dir; several logs are drawn in one figure to compare runs.

    \b
    Examples:
      w2v plot exp/tiny/log.jsonl -o curves.png
      w2v plot exp/a/log.jsonl exp/b/log.jsonl -o ab.png --metric loss --metric accuracy
    """
    import logging

    from w2vtools.plot import plot_logs

    drawn = plot_logs(list(logs), output, metrics=list(metrics) or None, title=title)
    logging.getLogger("w2v.plot").info("wrote %s (%s)", output, ", ".join(drawn))
