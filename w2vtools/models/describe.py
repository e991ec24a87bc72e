"""What a model is (architecture, size, frame rate, dictionary), and conversion between formats.

:func:`inspect_model` and :func:`format_description` are ``w2v checkpoint inspect``;
:func:`convert_model` is ``w2v checkpoint convert``. Description works on models
built on the meta device, so a preset architecture is described without memory.

Example:
    >>> describe_model(preset_model("wav2vec2-base"))["layers"]
    12
"""

from __future__ import annotations

import torch

from w2vtools.errors import W2VError
from w2vtools.models.checkpoint import LoadedModel, save_model
from w2vtools.models.huggingface import export_huggingface
from w2vtools.models.loading import load_model
from w2vtools.models.presets import get_preset, split_preset_name
from w2vtools.models.registry import build_model, class_path, model_class_for


def _wav2vec2_architecture(cfg) -> str:
    convs = cfg.conv_feature_layers
    parts, prev, count = [], None, 0
    for layer in convs + [None]:
        if layer == prev:
            count += 1
            continue
        if prev is not None:
            parts.append(f"({prev[0]},{prev[1]},{prev[2]})" + (f"x{count}" if count > 1 else ""))
        prev, count = layer, 1
    norm = "group norm in the first layer" if cfg.extractor_mode == "default" else "layer norm in every layer"
    text = (
        f"wav2vec 2.0: conv feature encoder {len(convs)} layers [(dim,kernel,stride): {' + '.join(parts)}], "
        f"{norm}{', conv bias' if cfg.conv_bias else ''}; "
        f"Transformer {cfg.encoder_layers} x {cfg.encoder_embed_dim} (FFN {cfg.encoder_ffn_embed_dim}, "
        f"{cfg.encoder_attention_heads} heads, {'pre-LN' if cfg.layer_norm_first else 'post-LN'}); "
        f"positional conv kernel {cfg.conv_pos}, {cfg.conv_pos_groups} groups"
    )
    if cfg.quantize_targets:
        text += f"; quantizer G={cfg.latent_groups} V={cfg.latent_vars}, final dim {cfg.final_dim}"
    return text


def describe_model(loaded: LoadedModel) -> dict:
    """A summary of a model: architecture, parameter count, frame rate, dictionary.

    Works on models built on the meta device (nothing is run).

    Example:
        >>> info = describe_model(load_model("ckpt.pt"))   # doctest: +SKIP
        >>> info["frame_rate_hz"]                          # doctest: +SKIP
        50.0
    """
    model = loaded.model
    cfg = loaded.config
    encoder = getattr(model, "encoder", None) if loaded.task == "ctc" else model
    enc_cfg = getattr(encoder, "cfg", cfg) if encoder is not None else cfg
    info: dict = {
        "source": loaded.source,
        "family": loaded.family,
        "task": loaded.task,
        "model_class": class_path(model),
    }
    if loaded.family == "wav2vec2" and hasattr(enc_cfg, "conv_feature_layers") and hasattr(enc_cfg, "encoder_layers"):
        info["architecture"] = _wav2vec2_architecture(enc_cfg)
        info["layers"] = enc_cfg.encoder_layers
        info["dim"] = enc_cfg.encoder_embed_dim
        info["input_normalization"] = bool(enc_cfg.normalize)
    else:
        info["architecture"] = f"{type(model).__name__} ({loaded.family})"
    info["parameters"] = sum(p.numel() for p in model.parameters())
    if loaded.task == "ctc" and encoder is not None:
        info["encoder_parameters"] = sum(p.numel() for p in encoder.parameters())
    shift = getattr(model, "frame_shift", None)
    if shift:
        info["frame_shift_s"] = float(shift)
        info["frame_rate_hz"] = round(1.0 / float(shift), 6)
    rf = getattr(encoder, "receptive_field", None) if encoder is not None else None
    if isinstance(rf, (int, float)):
        info["receptive_field_s"] = float(rf)
    sr = getattr(model, "sample_rate", None)
    if sr:
        info["sample_rate"] = int(sr)
    if loaded.task == "lm":
        info["unit"] = (loaded.extra or {}).get("unit")
    if loaded.dictionary is not None:
        info["dictionary_size"] = len(loaded.dictionary)
        info["dictionary"] = list(loaded.dictionary)
    return info


def format_description(info: dict) -> str:
    """Human-readable lines for :func:`describe_model`'s dict."""
    lines = []
    for key in ("source", "family", "task", "architecture"):
        if key in info:
            lines.append(f"{key}: {info[key]}")
    params = f"parameters: {info['parameters']:,} ({info['parameters'] / 1e6:.1f} M)"
    if "encoder_parameters" in info:
        params += f", encoder {info['encoder_parameters']:,}"
    lines.append(params)
    if "frame_rate_hz" in info:
        text = f"frame rate: {info['frame_rate_hz']:g} Hz ({info['frame_shift_s'] * 1000:g} ms shift"
        if "receptive_field_s" in info:
            text += f", {info['receptive_field_s'] * 1000:g} ms receptive field"
        lines.append(text + ")")
    if "sample_rate" in info:
        lines.append(f"sample rate: {info['sample_rate']}")
    if "input_normalization" in info:
        lines.append(f"input normalization: {'per-utterance zero mean, unit variance' if info['input_normalization'] else 'none'}")
    if "dictionary" in info and info.get("task") == "lm":
        # a language model's vocabulary runs to thousands of words: its unit and first entries
        shown = info["dictionary"][:20]
        more = f" ... ({info['dictionary_size'] - len(shown)} more)" if info["dictionary_size"] > len(shown) else ""
        lines.append(f"vocabulary: {info['dictionary_size']} tokens ({info.get('unit', '?')} units, fairseq "
                     f"order): {' '.join(shown)}{more}")
    elif "dictionary" in info:
        lines.append(f"dictionary: {info['dictionary_size']} tokens (index 0 = CTC blank): {' '.join(info['dictionary'])}")
    else:
        lines.append("dictionary: none")
    return "\n".join(lines)


def preset_model(name: str) -> LoadedModel:
    """A preset architecture built on the meta device (no memory; for inspection only).

    Example:
        >>> describe_model(preset_model("wav2vec2-base"))["parameters"] // 10**6
        95
    """
    try:
        family, short = split_preset_name(name)
        cfg = get_preset(family, short)
    except KeyError as e:
        raise W2VError(str(e).strip("'\"")) from e
    with torch.device("meta"):
        model = build_model(model_class_for(family), cfg)
    return LoadedModel(family, "pretrain", model, cfg, None, source="preset")


def inspect_model(spec: str | None = None, *, preset: str | None = None) -> dict:
    """:func:`describe_model` of a checkpoint/folder/name, or of a preset architecture."""
    if (spec is None) == (preset is None):
        raise W2VError("give a checkpoint or --preset, not both")
    loaded = preset_model(preset) if preset is not None else load_model(spec)
    return describe_model(loaded)


def convert_model(src: str, dst: str, *, to: str = "w2v", architecture: str | None = None) -> LoadedModel:
    """Load ``src`` (any :func:`load_model` spec) and write it to ``dst``.

    Args:
        src: our checkpoint, a fairseq .pt, a Hugging Face folder or a model name.
        dst: a file (``to="w2v"``) or a folder (``to="huggingface"``).
        to: "w2v" (our format) or "huggingface" (config.json + model.safetensors).
        architecture: Hugging Face class to export as (Wav2Vec2Model,
            Wav2Vec2ForPreTraining, Wav2Vec2ForCTC); default from the task.

    Example:
        >>> convert_model("wav2vec_small.pt", "base.pt")                       # doctest: +SKIP
        >>> convert_model("base.pt", "hf_base/", to="huggingface")             # doctest: +SKIP
    """
    loaded = load_model(src)
    if to == "w2v":
        if architecture is not None:
            raise W2VError("--architecture applies only to --to huggingface")
        save_model(dst, loaded, extra={"converted_from": str(src), "original_source": loaded.source})
    elif to == "huggingface":
        export_huggingface(loaded, dst, architecture=architecture)
    else:
        raise W2VError(f"unknown target format {to!r} (w2v or huggingface)")
    return loaded
