"""``w2v finetune``: CTC fine-tuning of a pretrained model, or a CTC acoustic model on stored features."""

from __future__ import annotations

import click

from w2vtools.cli.training_options import training_options


def _list_presets(ctx: click.Context) -> None:
    from w2vtools.train.config import FINETUNE_PRESETS

    for route, table in FINETUNE_PRESETS.items():
        for name, body in table.items():
            o, r, m = body["optim"], body["run"], body["model"]["overrides"]
            masks = (f"mask_prob={m['mask_prob']} mask_channel_prob={m['mask_channel_prob']} "
                     f"layerdrop={m['layerdrop']} freeze={r.get('freeze_updates', 0)}") if m else \
                f"model={body['model']['model_preset']}"
            click.echo(f"{route:<8} {name:<5} lr={o['lr']:g} max_update={o['max_update']} "
                       f"update_freq={o['update_freq']} batch={body['data']['max_samples_per_batch']} {masks}")
    ctx.exit(0)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("train", required=False)
@click.option("--labels", default=None,
              help="Training labels: an extension beside the TSV (ltr, wrd -> letters), a .ltr/.wrd file "
                   "aligned with it, or a transcript file keyed by utterance id (Kaldi text, *.trans.txt, "
                   "metadata.csv). Default: ltr for a TSV, the data dir's text for a Kaldi dir.")
@click.option("--valid", default=None, help="Validation audio list (TSV, Kaldi data dir, wav.scp).")
@click.option("--valid-labels", default=None,
              help="Validation labels (default: the same extension, the valid data dir's text, or the same "
                   "transcript file).")
@click.option("--dict", "dict_path", default=None, type=click.Path(dir_okay=False),
              help="dict.ltr.txt (default: the --init model's, else dict.ltr.txt beside TRAIN, else counted).")
@click.option("--init", default=None,
              help="Checkpoint to start from: ours, fairseq .pt, Hugging Face folder or a named model "
                   "(pretrained or CTC); with --features, a downstream model to continue.")
@click.option("--preset", default=None,
              help="Audio: 10m|1h|10h|100h|960h (published BASE table) or tiny (CPU). "
                   "Features: base or tiny. See --list-presets.")
@click.option("--features", default=None,
              help="Train on stored features instead of audio (*.h5, scp:feats.scp, ark:f.ark).")
@click.option("--valid-features", default=None, help="Validation features (feature route).")
@click.option("--arch", type=click.Choice(["blstm", "conv"]), default=None,
              help="Feature route: BiLSTM (default) or wav2letter-style convolutions.")
@click.option("--freeze-updates", type=int, default=None,
              help="Train only the output layer for this many updates (run.freeze_updates).")
@click.option("--list-presets", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, p, v: _list_presets(ctx) if v else None, help="List the recipes and exit.")
@training_options
def command(train, labels, valid, valid_labels, dict_path, init, preset, features, valid_features, arch,
            freeze_updates, config_file, sets, save_dir, resume, device):
    """Fine-tune a CTC model on the labelled audio of TRAIN, or train one on stored features.

    Audio route (--init): the pretrained model (ours, fairseq, Hugging Face) gets a
    linear CTC layer over the letters; its feature encoder stays frozen, the
    Transformer is frozen for the first run.freeze_updates updates, time and channel
    masking and layer drop regularize it; Adam with the tri-stage schedule. The
    presets carry fairseq's published BASE fine-tuning table.

    Feature route (--features): a BiLSTM or wav2letter-style convolutional CTC model on
    frozen stored features (w2v featurize output: wav2vec c/z, a wav2vec 2.0 layer,
    fbank/MFCC), input normalized with the training features' mean and variance.

    Validation every --valid-interval updates on --valid (--valid-features with
    --valid-labels): loss, greedy WER and UER (letter error rate);
    checkpoint_best.pt has the lowest WER. Checkpoints hold the weights, dictionary and
    configuration: w2v decode --model SAVE_DIR/checkpoint_best.pt decodes with them.
    The resolved configuration is printed (YAML, stdout) and saved as config.yaml;
    every log interval one line on stderr, the same in log.jsonl and TensorBoard
    (every name, uer = unit/letter error rate included: docs/training_logs.md).
    Multi-GPU: launch with torchrun. --resume repeats what an uninterrupted run does.

    \b
    Examples:
      w2v finetune data/train_10h.tsv --labels ltr --valid data/dev_other.tsv \\
          --init exp/pretrain/checkpoint_best.pt --preset 10h --save-dir exp/ft10h
      w2v finetune data/train_1h.tsv --valid data/dev.tsv --init wav2vec2-base --preset 1h \\
          --update-freq 8 --save-dir exp/ft1h            # 1 GPU standing in for 8
      w2v finetune data/train_1h.tsv --valid data/dev.tsv --preset 1h --update-freq 8 \\
          --save-dir exp/ft1h --resume                   # after an interruption
      w2v featurize data/train.tsv feats/train.h5 --model fbank
      w2v finetune --features feats/train.h5 --labels data/text --valid-features feats/test.h5 \\
          --valid-labels data/text --arch blstm --preset tiny --save-dir exp/blstm
      w2v decode data/test.tsv --model exp/ft10h/checkpoint_best.pt > hyp.txt
      w2v decode --model exp/blstm/checkpoint_best.pt --features feats/test.h5 > hyp_blstm.txt
    """
    from w2vtools.errors import W2VError
    from w2vtools.finetune import finetune

    if preset is None:
        preset = "tiny" if features is not None else None
        if preset is None:
            raise W2VError("--preset is needed: 10m, 1h, 10h, 100h, 960h or tiny (see --list-presets)")
    if labels is None and train is not None and features is None and train.endswith(".tsv"):
        labels = "ltr"
    if freeze_updates is not None:
        sets = [*sets, f"run.freeze_updates={freeze_updates}"]
    finetune(train, save_dir=save_dir, preset=preset, valid=valid, labels=labels, valid_labels=valid_labels,
             dict_path=dict_path, init=init, features=features, valid_features=valid_features, arch=arch,
             config_file=config_file, sets=sets, resume=resume, device=device)
