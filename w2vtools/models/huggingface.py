"""Hugging Face ``transformers`` wav2vec 2.0 folders: import and export.

Import reads a folder with ``config.json`` and ``model.safetensors`` (or sharded
safetensors, or ``pytorch_model.bin`` loaded with ``torch.load(weights_only=True)``)
of a ``Wav2Vec2Model``, ``Wav2Vec2ForPreTraining`` or ``Wav2Vec2ForCTC``, without
importing transformers. Export writes ``config.json``, ``model.safetensors`` and
``preprocessor_config.json`` (plus ``vocab.json`` and tokenizer files for CTC
models) that ``transformers``' ``from_pretrained`` loads.

The key mapping lives in one place (:data:`_LAYER_MAP` and :func:`hf_to_ours_key`):
our names are fairseq's; Hugging Face's differ only by module names.

Example:
    >>> loaded = load_huggingface("wav2vec2-base-960h/")     # doctest: +SKIP
    >>> export_huggingface(loaded, "exported/")              # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.formats.labels import SPECIAL_SYMBOLS
from w2vtools.models.checkpoint import LoadedModel
from w2vtools.models.ctc import CTCConfig, CTCModel
from w2vtools.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

log = logging.getLogger("w2v.huggingface")

HF_ARCHITECTURES = {
    "pretrain": "Wav2Vec2ForPreTraining",
    "ctc": "Wav2Vec2ForCTC",
    "encoder": "Wav2Vec2Model",
}

# Hugging Face <-> our (fairseq) names inside one Transformer layer.
_LAYER_MAP = {
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attention.out_proj": "self_attn.out_proj",
    "layer_norm": "self_attn_layer_norm",
    "feed_forward.intermediate_dense": "fc1",
    "feed_forward.output_dense": "fc2",
    "final_layer_norm": "final_layer_norm",
}

# HF fairseq-converted CTC vocabularies name index 0 "<pad>" (their blank) and 1 "<s>".
_HF_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


# --------------------------------------------------------------------------- configs


# the config.json fields config_from_hf reads, by the kind of value each must hold
_HF_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "proj_codevector_dim", "codevector_dim",
            "num_codevectors_per_group", "num_codevector_groups", "num_negatives", "mask_time_length",
            "mask_time_min_masks", "mask_feature_length", "pad_token_id", "vocab_size")
_HF_FLOATS = ("hidden_dropout", "attention_dropout", "activation_dropout", "layerdrop", "feat_proj_dropout",
              "feat_quantizer_dropout", "contrastive_logits_temperature", "diversity_loss_weight",
              "mask_time_prob", "mask_feature_prob", "final_dropout")
_HF_INT_LISTS = ("conv_dim", "conv_kernel", "conv_stride")
_HF_STRINGS = ("model_type", "feat_extract_norm", "hidden_act", "feat_extract_activation")


def check_hf_fields(hf: object) -> None:
    """Refuse a ``config.json`` whose fields have the wrong kind of value, naming the field.

    Missing fields take the ``transformers`` defaults; present ones must be what
    ``transformers`` writes (a JSON ``null`` counts as missing only where
    ``transformers`` allows it: ``pad_token_id``, ``vocab_size``).

    Raises:
        W2VError: the first bad field and what it holds.

    Example:
        >>> check_hf_fields({"hidden_size": "768"})
        Traceback (most recent call last):
        ...
        w2vtools.errors.W2VError: field hidden_size: expected a whole number, got '768'
    """
    if not isinstance(hf, dict):
        raise W2VError(f"expected a JSON object, got {type(hf).__name__}")

    def bad(key: str, what: str):
        return W2VError(f"field {key}: expected {what}, got {hf[key]!r}"[:300])

    for key in _HF_INTS:
        value = hf.get(key)
        if key in hf and not (isinstance(value, int) and not isinstance(value, bool)):
            if value is None and key in ("pad_token_id", "vocab_size"):
                continue
            raise bad(key, "a whole number")
        if isinstance(value, int) and value < 0:
            raise bad(key, "a number >= 0")
    for key in _HF_FLOATS:
        if key in hf and (isinstance(hf[key], bool) or not isinstance(hf[key], (int, float))):
            raise bad(key, "a number")
    for key in _HF_STRINGS:
        if key in hf and not isinstance(hf[key], str):
            raise bad(key, "a string")
    for key in _HF_INT_LISTS:
        value = hf.get(key)
        if key in hf and not (isinstance(value, list) and value
                              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise bad(key, "a list of positive whole numbers")
    lengths = {key: len(hf[key]) for key in _HF_INT_LISTS if key in hf}
    if len(set(lengths.values())) > 1:
        raise W2VError("fields conv_dim, conv_kernel, conv_stride: expected lists of one length, got lengths "
                       + ", ".join(f"{k}={n}" for k, n in lengths.items()))
    archs = hf.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise bad("architectures", "a list of class names")


def config_from_hf(hf: dict, normalize: bool | None = None) -> Wav2Vec2Config:
    """Our :class:`Wav2Vec2Config` from a Hugging Face ``config.json`` dict.

    Args:
        hf: the parsed config.json (model_type "wav2vec2").
        normalize: input normalization; None = the layer-norm models' convention
            (True for ``feat_extract_norm == "layer"``).

    Example:
        >>> config_from_hf({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16}).encoder_embed_dim
        1024
    """
    check_hf_fields(hf)
    model_type = hf.get("model_type", "wav2vec2")
    if model_type != "wav2vec2":
        raise W2VError(f"Hugging Face model_type {model_type!r} is not supported (only wav2vec2)")
    if hf.get("add_adapter"):
        raise W2VError("Hugging Face wav2vec2 models with an adapter (add_adapter) are not supported")
    if hf.get("use_weighted_layer_sum"):
        log.warning("use_weighted_layer_sum is ignored (that belongs to sequence classification heads)")
    conv_dim = hf.get("conv_dim", [512] * 7)
    conv_kernel = hf.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])
    conv_stride = hf.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])
    norm = hf.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise W2VError(f"unsupported feat_extract_norm {norm!r}")
    act = hf.get("hidden_act", "gelu")
    if act not in ("gelu", "relu", "gelu_new"):
        raise W2VError(f"unsupported hidden_act {act!r}")
    if hf.get("feat_extract_activation", "gelu") != "gelu":
        raise W2VError(f"unsupported feat_extract_activation {hf.get('feat_extract_activation')!r}")
    hidden = hf.get("hidden_size", 768)
    proj_dim = hf.get("proj_codevector_dim", 256)
    codevector_dim = hf.get("codevector_dim", 256)
    if normalize is None:
        normalize = norm == "layer"
    return Wav2Vec2Config(
        extractor_mode="default" if norm == "group" else "layer_norm",
        conv_feature_layers=list(zip(conv_dim, conv_kernel, conv_stride)),
        conv_bias=bool(hf.get("conv_bias", False)),
        normalize=bool(normalize),
        encoder_layers=hf.get("num_hidden_layers", 12),
        encoder_embed_dim=hidden,
        encoder_ffn_embed_dim=hf.get("intermediate_size", 3072),
        encoder_attention_heads=hf.get("num_attention_heads", 12),
        activation_fn=act,
        layer_norm_first=bool(hf.get("do_stable_layer_norm", False)),
        conv_pos=hf.get("num_conv_pos_embeddings", 128),
        conv_pos_groups=hf.get("num_conv_pos_embedding_groups", 16),
        dropout=hf.get("hidden_dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.1),
        activation_dropout=hf.get("activation_dropout", 0.1),
        encoder_layerdrop=hf.get("layerdrop", 0.1),
        dropout_input=hf.get("feat_proj_dropout", 0.0),
        dropout_features=hf.get("feat_quantizer_dropout", 0.0),
        final_dim=proj_dim,
        latent_vars=hf.get("num_codevectors_per_group", 320),
        latent_groups=hf.get("num_codevector_groups", 2),
        latent_dim=codevector_dim if codevector_dim != proj_dim else 0,
        logit_temp=hf.get("contrastive_logits_temperature", 0.1),
        num_negatives=hf.get("num_negatives", 100),
        diversity_weight=hf.get("diversity_loss_weight", 0.1),
        mask_prob=hf.get("mask_time_prob", 0.05) if hf.get("apply_spec_augment", True) else 0.0,
        mask_length=hf.get("mask_time_length", 10),
        mask_min_masks=hf.get("mask_time_min_masks", 2),
        mask_channel_prob=hf.get("mask_feature_prob", 0.0) if hf.get("apply_spec_augment", True) else 0.0,
        mask_channel_length=hf.get("mask_feature_length", 10),
    )


def config_to_hf(cfg: Wav2Vec2Config, task: str = "pretrain", vocab_size: int | None = None, final_dropout: float = 0.0) -> dict:
    """A Hugging Face ``config.json`` dict for our config.

    Example:
        >>> config_to_hf(Wav2Vec2Config())["feat_extract_norm"]
        'group'
    """
    vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else cfg.final_dim
    out = {
        "architectures": [HF_ARCHITECTURES[task]],
        "model_type": "wav2vec2",
        "hidden_size": cfg.encoder_embed_dim,
        "num_hidden_layers": cfg.encoder_layers,
        "num_attention_heads": cfg.encoder_attention_heads,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "hidden_act": cfg.activation_fn,
        "hidden_dropout": cfg.dropout,
        "activation_dropout": cfg.activation_dropout,
        "attention_dropout": cfg.attention_dropout,
        "feat_proj_dropout": cfg.dropout_input,
        "feat_quantizer_dropout": cfg.dropout_features,
        "final_dropout": final_dropout,
        "layerdrop": cfg.encoder_layerdrop,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "feat_extract_norm": "group" if cfg.extractor_mode == "default" else "layer",
        "feat_extract_activation": "gelu",
        "conv_dim": [c[0] for c in cfg.conv_feature_layers],
        "conv_kernel": [c[1] for c in cfg.conv_feature_layers],
        "conv_stride": [c[2] for c in cfg.conv_feature_layers],
        "conv_bias": cfg.conv_bias,
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "do_stable_layer_norm": cfg.layer_norm_first,
        "apply_spec_augment": True,
        "mask_time_prob": cfg.mask_prob,
        "mask_time_length": cfg.mask_length,
        "mask_time_min_masks": cfg.mask_min_masks,
        "mask_feature_prob": cfg.mask_channel_prob,
        "mask_feature_length": cfg.mask_channel_length,
        "mask_feature_min_masks": 0,
        "num_codevectors_per_group": cfg.latent_vars,
        "num_codevector_groups": cfg.latent_groups,
        "contrastive_logits_temperature": cfg.logit_temp,
        "num_negatives": cfg.num_negatives,
        "codevector_dim": vq_dim,
        "proj_codevector_dim": cfg.final_dim,
        "diversity_loss_weight": cfg.diversity_weight,
        "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": False,
        "use_weighted_layer_sum": False,
        "add_adapter": False,
        "vocab_size": vocab_size if vocab_size is not None else 32,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    return out


# --------------------------------------------------------------------------- state dicts


def hf_to_ours_key(key: str) -> str | None:
    """Our name for a Hugging Face parameter name (prefix ``wav2vec2.`` removed), or None.

    Example:
        >>> hf_to_ours_key("encoder.layers.3.feed_forward.intermediate_dense.weight")
        'encoder.layers.3.fc1.weight'
    """
    m = re.match(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)$", key)
    if m:
        i, mod, p = m.groups()
        return f"feature_extractor.conv_layers.{i}.0.{p}" if mod == "conv" else f"feature_extractor.conv_layers.{i}.2.{p}"
    m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
    if m:
        i, mod, p = m.groups()
        if mod in _LAYER_MAP:
            return f"encoder.layers.{i}.{_LAYER_MAP[mod]}.{p}"
        return None
    simple = {
        "feature_projection.layer_norm.weight": "layer_norm.weight",
        "feature_projection.layer_norm.bias": "layer_norm.bias",
        "feature_projection.projection.weight": "post_extract_proj.weight",
        "feature_projection.projection.bias": "post_extract_proj.bias",
        "masked_spec_embed": "mask_emb",
        "encoder.layer_norm.weight": "encoder.layer_norm.weight",
        "encoder.layer_norm.bias": "encoder.layer_norm.bias",
        "encoder.pos_conv_embed.conv.bias": "encoder.pos_conv.0.bias",
        "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
        # Wav2Vec2ForPreTraining heads (outside the "wav2vec2." prefix)
        "quantizer.codevectors": "quantizer.vars",
        "quantizer.weight_proj.weight": "quantizer.weight_proj.weight",
        "quantizer.weight_proj.bias": "quantizer.weight_proj.bias",
        "project_q.weight": "project_q.weight",
        "project_q.bias": "project_q.bias",
        "project_hid.weight": "final_proj.weight",
        "project_hid.bias": "final_proj.bias",
    }
    return simple.get(key)


def _layer_norm_fix(ours: str, cfg: Wav2Vec2Config) -> str:
    # In layer-norm feature encoders our block is Sequential(TransposeLast, LayerNorm, TransposeLast).
    m = re.match(r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$", ours)
    if m and cfg.extractor_mode == "layer_norm":
        return f"feature_extractor.conv_layers.{m.group(1)}.2.1.{m.group(2)}"
    return ours


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> tuple[dict, dict, list[str]]:
    """Split a Hugging Face state dict into (encoder state, CTC head state, ignored keys).

    Encoder keys get our names; ``lm_head.*`` becomes ``proj.*`` in the head state.
    """
    enc, head, ignored = {}, {}, []
    for key, value in hf_state.items():
        k = key[len("wav2vec2."):] if key.startswith("wav2vec2.") else key
        if k.startswith("lm_head."):
            head["proj." + k[len("lm_head."):]] = value
            continue
        ours = hf_to_ours_key(k)
        if ours is None:
            ignored.append(key)
            continue
        enc[_layer_norm_fix(ours, cfg)] = value
    if cfg.conv_feature_layers[-1][0] == cfg.encoder_embed_dim and "post_extract_proj.weight" in enc:
        # fairseq (and we) have no projection when the dims agree; HF always has one.
        w, b = enc.pop("post_extract_proj.weight"), enc.pop("post_extract_proj.bias", None)
        identity = torch.equal(w, torch.eye(w.size(0), dtype=w.dtype, device=w.device))
        if not identity or (b is not None and bool(b.any())):
            raise W2VError("feature projection between equal dimensions is not the identity: "
                           "this model cannot be represented in fairseq's layout")
    return enc, head, ignored


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config, task: str) -> dict[str, torch.Tensor]:
    """Hugging Face names for our encoder (``task`` "encoder"/"pretrain") or CTC state dict."""
    reverse = {}
    probe_keys = list(state)
    out = {}
    prefix = "" if task == "encoder" else "wav2vec2."
    for key in probe_keys:
        value = state[key]
        k = key
        if task == "ctc":
            if key.startswith("proj."):
                out["lm_head." + key[len("proj."):]] = value
                continue
            if not key.startswith("encoder."):
                continue
            k = key[len("encoder."):]
        hf_key = _ours_to_hf_key(k, cfg, reverse)
        if hf_key is None:
            continue
        top_level = hf_key.startswith(("quantizer.", "project_q.", "project_hid."))
        if top_level and task != "pretrain":
            continue
        out[(hf_key if top_level else prefix + hf_key)] = value.detach().contiguous()
    dim = cfg.conv_feature_layers[-1][0]
    if dim == cfg.encoder_embed_dim:
        # HF always has the feature projection; ours (like fairseq's) is absent when the
        # dims agree, which is the identity.
        out[prefix + "feature_projection.projection.weight"] = torch.eye(dim)
        out[prefix + "feature_projection.projection.bias"] = torch.zeros(dim)
    return out


def _ours_to_hf_key(k: str, cfg: Wav2Vec2Config, cache: dict) -> str | None:
    m = re.match(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)$", k)
    if m:
        i, mod, p = m.groups()
        return f"feature_extractor.conv_layers.{i}.{'conv' if mod == '0' else 'layer_norm'}.{p}"
    m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
    if m:
        i, mod, p = m.groups()
        inv = {v: kk for kk, v in _LAYER_MAP.items()}
        return f"encoder.layers.{i}.{inv[mod]}.{p}" if mod in inv else None
    simple = {
        "layer_norm.weight": "feature_projection.layer_norm.weight",
        "layer_norm.bias": "feature_projection.layer_norm.bias",
        "post_extract_proj.weight": "feature_projection.projection.weight",
        "post_extract_proj.bias": "feature_projection.projection.bias",
        "mask_emb": "masked_spec_embed",
        "encoder.layer_norm.weight": "encoder.layer_norm.weight",
        "encoder.layer_norm.bias": "encoder.layer_norm.bias",
        "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
        "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
        "quantizer.vars": "quantizer.codevectors",
        "quantizer.weight_proj.weight": "quantizer.weight_proj.weight",
        "quantizer.weight_proj.bias": "quantizer.weight_proj.bias",
        "project_q.weight": "project_q.weight",
        "project_q.bias": "project_q.bias",
        "final_proj.weight": "project_hid.weight",
        "final_proj.bias": "project_hid.bias",
    }
    return simple.get(k)


# --------------------------------------------------------------------------- folders


def _read_weights(folder: Path, map_location) -> tuple[dict[str, torch.Tensor], Path]:
    """(the folder's weights, the file read), every failure one W2VError naming the file."""
    st = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    binf = folder / "pytorch_model.bin"
    device = str(map_location) if map_location else "cpu"
    if st.is_file():
        return _read_safetensors(st, device), st
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise W2VError(f"{index}: no readable weight_map ({_one_line(e)})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors(folder / str(shard), device))
        return state, index
    if binf.is_file():
        try:
            state = torch.load(binf, map_location=map_location, weights_only=True)
        except Exception as e:
            raise W2VError(f"{binf}: cannot read weights safely ({_one_line(e)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise W2VError(f"{binf}: not a state dict of tensors")
        return state, binf
    raise W2VError(f"{folder}: no model.safetensors or pytorch_model.bin next to config.json")


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise W2VError(f"{path}: no such file (named in model.safetensors.index.json)") from None
    except Exception as e:  # SafetensorError (truncated, bad header), OSError, ...
        raise W2VError(f"{path}: not readable safetensors ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + " ...") if len(text) > 200 else text or type(e).__name__


def _check_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], weights: Path,
                  file_keys: dict[str, str]) -> None:
    """Refuse weights whose shape differs from the model config.json describes, naming the first by its key in the file."""
    for key, ours in model.state_dict().items():
        theirs = state.get(key)
        if theirs is not None and tuple(theirs.shape) != tuple(ours.shape):
            raise W2VError(f"{weights}: weight {file_keys.get(key, key)} has shape {list(theirs.shape)}, "
                           f"config.json describes {list(ours.shape)}")


def _file_keys(hf_state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict[str, str]:
    """Our parameter name -> the Hugging Face key it came from (for messages)."""
    names = {}
    for key in hf_state:
        ours = hf_to_ours_key(key[len("wav2vec2."):] if key.startswith("wav2vec2.") else key)
        if ours is not None:
            names[_layer_norm_fix(ours, cfg)] = key
    return names


def _read_dictionary(folder: Path, hf: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens in our order with the blank first, row order into lm_head)."""
    vocab_file = folder / "vocab.json"
    blank = int(hf.get("pad_token_id", 0) or 0)
    if vocab_file.is_file():
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise W2VError(f"{vocab_file}: not readable JSON ({_one_line(e)})") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, (int, dict)) for v in vocab.values()):
            raise W2VError(f"{vocab_file}: expected an object of token: index")
        if vocab and all(isinstance(v, dict) for v in vocab.values()):
            raise W2VError(f"{vocab_file}: multilingual vocabularies are not supported; keep one language's")
        tokens = [None] * vocab_size
        for tok, idx in vocab.items():
            if 0 <= int(idx) < vocab_size:
                tokens[int(idx)] = tok
        tokens = [t if t is not None else f"<extra_{i}>" for i, t in enumerate(tokens)]
    else:
        log.warning("%s: no vocab.json; CTC outputs get placeholder names", folder)
        tokens = [f"<{i}>" for i in range(vocab_size)]
    order = [blank] + [i for i in range(vocab_size) if i != blank]
    tokens = [tokens[i] for i in order]
    if tokens[:4] == _HF_SPECIALS:
        tokens[:4] = list(SPECIAL_SYMBOLS)
    return tokens, order


def load_huggingface(folder: str | os.PathLike, map_location="cpu"):
    """Load a Hugging Face wav2vec 2.0 folder as a :class:`LoadedModel`.

    ``Wav2Vec2ForCTC`` becomes a CTC model (dictionary from ``vocab.json``, the blank
    ``pad_token_id`` moved to index 0); ``Wav2Vec2Model``/``Wav2Vec2ForPreTraining``
    become pretraining models (a bare encoder keeps the quantizer at its random init:
    ``quantize`` is then meaningless, features are exact).

    Raises:
        W2VError: unsupported architecture, unreadable or mismatched weights.

    Example:
        >>> loaded = load_huggingface("wav2vec2-base-960h")   # doctest: +SKIP
        >>> loaded.task, loaded.dictionary[:5]                # doctest: +SKIP
        ('ctc', ['<s>', '<pad>', '</s>', '<unk>', '|'])
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise W2VError(f"{config_path}: not readable JSON ({_one_line(e)})") from None
    try:
        check_hf_fields(hf)
    except W2VError as e:
        raise W2VError(f"{config_path}: {e}") from None
    archs = hf.get("architectures") or ["Wav2Vec2Model"]
    arch = archs[0]
    if arch not in HF_ARCHITECTURES.values():
        raise W2VError(f"{config_path}: field architectures: {arch} is not supported (use one of {', '.join(HF_ARCHITECTURES.values())})")
    normalize = None
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            normalize = bool(json.loads(pre.read_text()).get("do_normalize", True))
        except (OSError, json.JSONDecodeError):
            normalize = None
    try:
        cfg = config_from_hf(hf, normalize=normalize)
        encoder = Wav2Vec2Model(cfg)
    except W2VError as e:
        raise W2VError(f"{config_path}: {e}") from None
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:  # e.g. heads that do not divide the width
        raise W2VError(f"{config_path}: describes no buildable model ({_one_line(e)})") from None
    state, weights = _read_weights(folder, map_location)
    try:
        enc_state, head_state, ignored = state_dict_from_hf(state, cfg)
    except W2VError as e:
        raise W2VError(f"{weights}: {e}") from None
    if ignored:
        log.warning("%s: ignoring %d weights: %s", folder, len(ignored), ", ".join(ignored[:4]))
    _check_shapes(encoder, enc_state, weights, _file_keys(state, cfg))
    missing, unexpected = encoder.load_state_dict(enc_state, strict=False)
    allowed_missing = {"mask_emb", "quantizer.vars", "quantizer.weight_proj.weight", "quantizer.weight_proj.bias",
                       "project_q.weight", "project_q.bias", "final_proj.weight", "final_proj.bias"}
    real_missing = [k for k in missing if k not in allowed_missing]
    if real_missing or unexpected:
        raise W2VError(f"{weights}: weights do not match config.json (missing {real_missing[:4]}, unexpected {unexpected[:4]})")
    if arch == "Wav2Vec2ForCTC":
        if "proj.weight" not in head_state:
            raise W2VError(f"{folder}: Wav2Vec2ForCTC without lm_head weights")
        head_w, head_b = head_state["proj.weight"], head_state.get("proj.bias", torch.empty(0))
        if head_w.dim() != 2 or head_w.size(1) != cfg.encoder_embed_dim or tuple(head_b.shape) != (head_w.size(0),):
            raise W2VError(f"{weights}: weights lm_head.weight {list(head_w.shape)} and lm_head.bias "
                           f"{list(head_b.shape)} do not fit hidden_size {cfg.encoder_embed_dim}")
        vocab_size = head_w.size(0)
        dictionary, order = _read_dictionary(folder, hf, vocab_size)
        ctc_cfg = CTCConfig(
            vocab_size=vocab_size,
            final_dropout=hf.get("final_dropout", 0.0),
            mask_prob=cfg.mask_prob,
            mask_length=cfg.mask_length,
            mask_channel_prob=cfg.mask_channel_prob,
            mask_channel_length=cfg.mask_channel_length,
            layerdrop=cfg.encoder_layerdrop,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
            dropout_input=cfg.dropout_input,
        )
        model = CTCModel(encoder, vocab_size, ctc_cfg)
        idx = torch.tensor(order)
        model.proj.load_state_dict({"weight": head_state["proj.weight"][idx], "bias": head_state["proj.bias"][idx]})
        model.eval()
        return LoadedModel("wav2vec2", "ctc", model, model.cfg, dictionary, source="huggingface")
    encoder.eval()
    return LoadedModel("wav2vec2", "pretrain", encoder, cfg, None, source="huggingface")


def export_huggingface(loaded, folder: str | os.PathLike, *, architecture: str | None = None) -> Path:
    """Write ``loaded`` as a Hugging Face folder ``from_pretrained`` can load.

    Args:
        loaded: a wav2vec 2.0 :class:`LoadedModel` (task pretrain or ctc).
        folder: output folder (created; existing files of the same names replaced).
        architecture: "Wav2Vec2ForPreTraining" (default for pretrain), "Wav2Vec2Model",
            or "Wav2Vec2ForCTC" (default for ctc).

    Returns:
        The folder path.

    Example:
        >>> export_huggingface(load_model("ckpt.pt"), "hf/")   # doctest: +SKIP
    """
    from safetensors.torch import save as save_safetensors

    if loaded.family != "wav2vec2":
        raise W2VError(f"Hugging Face has no {loaded.family} model class; only wav2vec2 can be exported")
    task = loaded.task
    if task == "ctc":
        enc_cfg = loaded.model.encoder.cfg
        hf_task = "ctc"
    elif task == "pretrain":
        enc_cfg = loaded.config
        hf_task = "pretrain"
    else:
        raise W2VError(f"cannot export a {task} model to Hugging Face")
    if architecture is not None:
        inv = {v: k for k, v in HF_ARCHITECTURES.items()}
        if architecture not in inv:
            raise W2VError(f"unknown architecture {architecture!r} (use {', '.join(inv)})")
        hf_task = inv[architecture]
        if hf_task == "ctc" and task != "ctc":
            raise W2VError("only a CTC model can be exported as Wav2Vec2ForCTC")
        if hf_task == "pretrain" and task != "pretrain":
            raise W2VError("a CTC model has no quantizer: export it as Wav2Vec2ForCTC or Wav2Vec2Model")
    state = loaded.model.state_dict()
    if task == "ctc" and hf_task == "encoder":
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    vocab_size = None
    final_dropout = 0.0
    if hf_task == "ctc":
        vocab_size = loaded.model.proj.out_features
        final_dropout = loaded.model.cfg.final_dropout
    hf_cfg = config_to_hf(enc_cfg, hf_task, vocab_size=vocab_size, final_dropout=final_dropout)
    hf_state = state_dict_to_hf(state, enc_cfg, hf_task)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "config.json") as f:
        json.dump(hf_cfg, f, indent=2)
        f.write("\n")
    # atomic_write, not save_file to a temporary name: the file then gets the umask's mode like any output
    # (and a full disk is one line naming it), at the cost of the weights held once more as bytes
    with atomic_write(folder / "model.safetensors", "wb") as f:
        f.write(save_safetensors({k: v.detach().cpu().contiguous() for k, v in hf_state.items()},
                                 metadata={"format": "pt"}))
    pre = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": bool(enc_cfg.normalize),
        "return_attention_mask": enc_cfg.extractor_mode == "layer_norm",
    }
    if hf_task == "ctc":
        pre["processor_class"] = "Wav2Vec2Processor"
    with atomic_write(folder / "preprocessor_config.json") as f:
        json.dump(pre, f, indent=2)
        f.write("\n")
    if hf_task == "ctc" and loaded.dictionary:
        tokens = list(loaded.dictionary)
        if tuple(tokens[:4]) == SPECIAL_SYMBOLS:
            tokens[:4] = _HF_SPECIALS
        with atomic_write(folder / "vocab.json") as f:
            json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False, indent=1)
            f.write("\n")
        tok_cfg = {
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "processor_class": "Wav2Vec2Processor",
            "unk_token": "<unk>",
            "pad_token": tokens[0],
            "bos_token": "<s>",
            "eos_token": "</s>",
            "word_delimiter_token": "|",
            "do_lower_case": False,
        }
        with atomic_write(folder / "tokenizer_config.json") as f:
            json.dump(tok_cfg, f, indent=2)
            f.write("\n")
        with atomic_write(folder / "special_tokens_map.json") as f:
            json.dump({k: tok_cfg[k] for k in ("unk_token", "pad_token", "bos_token", "eos_token")}, f, indent=2)
            f.write("\n")
    return folder
