"""``w2v checkpoint``: inspect and convert model checkpoints (ours, fairseq, Hugging Face)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """Inspect and convert model checkpoints.

    A MODEL is our checkpoint file, a fairseq .pt, a Hugging Face folder
    (config.json + model.safetensors or pytorch_model.bin) or a named model.

    \b
    Examples:
      w2v checkpoint inspect exp/finetune/checkpoint_best.pt
      w2v checkpoint inspect --preset wav2vec2-large
      w2v checkpoint convert wav2vec_small_960h.pt base_960h.pt
      w2v checkpoint convert base_960h.pt hf_base_960h/ --to huggingface
    """


@command.command("inspect")
@click.argument("model", required=False)
@click.option("--preset", default=None, metavar="NAME",
              help="Describe a preset architecture instead (wav2vec2-base, wav2vec2-large, xls-r-1b, "
                   "wav2vec-large, vq-wav2vec-gumbel, ...); built without allocating weights.")
@click.option("--list-presets", is_flag=True, help="List the preset names and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect_cmd(model, preset, list_presets, as_json):
    """Print a model's architecture, parameter count, frame rate and dictionary.

    \b
    Example:
      $ w2v checkpoint inspect --preset wav2vec2-base
      source: preset
      family: wav2vec2
      task: pretrain
      architecture: wav2vec 2.0: conv feature encoder 7 layers [...]
      parameters: 95,044,608 (95.0 M)
      frame rate: 50 Hz (20 ms shift, 25 ms receptive field)
      ...
    """
    import json

    from w2vtools.errors import W2VError

    if list_presets:
        from w2vtools.models.presets import list_presets as _list

        for family, name in _list():
            click.echo(f"{family}-{name}")
        return
    if model is None and preset is None:
        raise W2VError("give a MODEL or --preset NAME (see --list-presets)")
    from w2vtools.models.describe import format_description, inspect_model

    info = inspect_model(model, preset=preset)
    click.echo(json.dumps(info) if as_json else format_description(info))


@command.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option("--to", "to", type=click.Choice(["w2v", "huggingface"]), default="w2v", show_default=True,
              help="w2v: our single-file format (DST is a file); huggingface: a folder that "
                   "transformers' from_pretrained loads (config.json, model.safetensors, "
                   "preprocessor_config.json, and vocab.json for CTC models).")
@click.option("--architecture", type=click.Choice(["Wav2Vec2Model", "Wav2Vec2ForPreTraining", "Wav2Vec2ForCTC"]),
              default=None, help="Hugging Face class to export as (default: ForPreTraining, or ForCTC for CTC models).")
def convert_cmd(src, dst, to, architecture):
    """Convert SRC (ours, fairseq .pt, Hugging Face folder or a name) to DST.

    Our format holds config, weights and (CTC) dictionary in one file that loads
    with torch.load(weights_only=True): nothing but data is unpickled.

    \b
    Examples:
      w2v checkpoint convert wav2vec_small_960h.pt base_960h.pt
      w2v checkpoint convert facebook-wav2vec2-base-960h/ base_960h.pt
      w2v checkpoint convert base_960h.pt hf/ --to huggingface
    """
    import logging

    from w2vtools.models.describe import convert_model

    loaded = convert_model(src, dst, to=to, architecture=architecture)
    logging.getLogger("w2v.checkpoint").info(
        "wrote %s (%s %s model from %s, %s)", dst, loaded.family, loaded.task, src,
        "our format" if to == "w2v" else "Hugging Face layout",
    )
