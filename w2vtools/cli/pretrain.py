"""``w2v pretrain``: self-supervised pretraining of wav2vec, vq-wav2vec, wav2vec 2.0 and BERT on units."""

from __future__ import annotations

import click

from w2vtools.cli.training_options import training_options


def _list_presets(ctx: click.Context) -> None:
    from w2vtools.train.config import PRESETS

    for arch, table in PRESETS.items():
        for name, body in table.items():
            o = body["optim"]
            d = body["data"]
            click.echo(
                f"{arch:<11} {name:<12} model={body['model']['model_preset']:<12} lr={o['lr']:g} "
                f"schedule={o['schedule']} max_update={o['max_update']} "
                f"batch={d['max_samples_per_batch']} crop={d['max_sample_size']}"
            )
    ctx.exit(0)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("train")
@click.option("--valid", default=None,
              help="Validation corpus (TSV, Kaldi data dir or wav.scp); unit-bert: a unit file.")
@click.option("--arch", type=click.Choice(["wav2vec", "vq-wav2vec", "wav2vec2", "unit-bert"]), required=True,
              help="Model family (unit-bert: vq-wav2vec's BERT on unit files).")
@click.option("--preset", required=True,
              help="Training recipe: wav2vec2 base|large|tiny, wav2vec large|tiny, "
                   "vq-wav2vec gumbel|kmeans|tiny|kmeans-tiny, unit-bert base|tiny (see --list-presets).")
@click.option("--list-presets", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, p, v: _list_presets(ctx) if v else None, help="List the recipes and exit.")
@training_options
def command(train, valid, arch, preset, config_file, sets, save_dir, resume, device):
    """Pretrain a model on the audio of TRAIN (TSV manifest, Kaldi data dir or wav.scp).

    With --arch unit-bert, TRAIN and --valid are unit files (w2v quantize output,
    'uid unit unit ...'): BERT learns to predict masked spans of units (10 units from
    each start, 5 % of units start one, as vq-wav2vec's BERT); its vocabulary is
    the training units' (SAVE_DIR/dict.txt); validation logs the masked-unit
    accuracy and the most-frequent-unit baseline's (baseline_accuracy).

    The resolved configuration is printed (YAML, stdout) and saved as
    SAVE_DIR/config.yaml. Every log interval one line on stderr (loss in bits,
    contrastive accuracy, code/softmax perplexity, temperature, lr, gradient norm,
    audio-seconds/s, memory), the same in SAVE_DIR/log.jsonl and TensorBoard;
    validation at an interval. Checkpoints checkpoint_last.pt, checkpoint_best.pt
    and checkpoint_<update>.pt load anywhere a model is taken (--model PATH).
    Every logged name (and the time and elapsed of each log.jsonl record) is
    explained in docs/training_logs.md.

    Multi-GPU / multi-node: launch with torchrun; NCCL on GPUs, gloo on CPU. Ranks
    read disjoint batches; N processes with --update-freq 1 train like one with
    --update-freq N. --resume repeats exactly what an uninterrupted run would do.

    \b
    Examples:
      w2v pretrain data/train.tsv --valid data/valid.tsv --arch wav2vec2 --preset tiny \\
          --save-dir exp/tiny --set optim.max_update=300
      torchrun --nproc_per_node=8 -m w2vtools pretrain data/train.tsv --valid data/valid.tsv \\
          --arch wav2vec2 --preset base --update-freq 8 --save-dir exp/base
      w2v plot exp/tiny/log.jsonl -o curves.png
      w2v quantize data/train.tsv units_train.txt --model vq-wav2vec
      w2v quantize data/valid.tsv units_valid.txt --model vq-wav2vec
      w2v pretrain units_train.txt --valid units_valid.txt --arch unit-bert --preset tiny --save-dir exp/bert
    """
    from w2vtools.pretrain import pretrain

    pretrain(train, valid, arch=arch, preset=preset, save_dir=save_dir, config_file=config_file, sets=sets,
             resume=resume, device=device)
