"""Named architectures: every model preset, one table per kind.

* :data:`PRESETS`: encoder architectures by family (wav2vec 2.0 / XLS-R, wav2vec,
  vq-wav2vec), the published ones and tiny ones for tests and quick recipes;
* :data:`DOWNSTREAM_PRESETS`: CTC models on stored features (``blstm``, ``conv``).

Training recipes (:mod:`w2vtools.train.config`) name one of these and state only
the fields that differ. Every encoder preset is reachable through two functions::

    get_preset("wav2vec2", "base")     # -> Wav2Vec2Config
    list_presets()                     # -> [("wav2vec2", "base"), ...]

A preset may also be named ``"<family>-<name>"`` (``"wav2vec2-base"``,
``"vq-wav2vec-gumbel"``) with family ``None``.

Published sizes (parameters, as counted by :func:`count_preset_parameters`):
wav2vec2 BASE ~95 M, LARGE ~317 M, XLS-R 300M ~317 M, 1B ~965 M, 2B ~2.16 B.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from w2vtools.models.downstream import ARCHES, DownstreamConfig
from w2vtools.models.registry import model_class_for
from w2vtools.models.wav2vec import LARGE_AGGREGATOR, LARGE_ENCODER, WAV2VEC_ENCODER, Wav2VecConfig
from w2vtools.models.wav2vec2 import BASE_CONV_LAYERS, Wav2Vec2Config

# --------------------------------------------------------------------------- wav2vec 2.0


def _wav2vec2_large(**overrides) -> Wav2Vec2Config:
    # fairseq wav2vec2_large_librivox.yaml (LV-60k): layer-norm feature encoder, pre-LN
    # Transformer, conv bias, normalized input.
    base = dict(
        extractor_mode="layer_norm",
        conv_bias=True,
        layer_norm_first=True,
        encoder_layers=24,
        encoder_embed_dim=1024,
        encoder_ffn_embed_dim=4096,
        encoder_attention_heads=16,
        final_dim=768,
        latent_temp=(2.0, 0.1, 0.999995),
        encoder_layerdrop=0.0,
        dropout_input=0.0,
        dropout_features=0.0,
        dropout=0.0,
        attention_dropout=0.0,
        feature_grad_mult=1.0,
        feature_pen_weight=0.0,
        normalize=True,
    )
    base.update(overrides)
    return Wav2Vec2Config(**base)


def _wav2vec2_tiny(**overrides) -> Wav2Vec2Config:
    # Same 7-layer kernel/stride layout (20 ms frames, 25 ms receptive field) at toy
    # width: pretrains in minutes on 2 CPU cores.
    base = dict(
        conv_feature_layers=[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2,
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=256,
        encoder_attention_heads=4,
        conv_pos=16,
        conv_pos_groups=4,
        latent_vars=32,
        latent_groups=2,
        final_dim=32,
        num_negatives=20,
        mask_length=5,
        encoder_layerdrop=0.0,
        feature_grad_mult=1.0,
        normalize=True,
    )
    base.update(overrides)
    return Wav2Vec2Config(**base)


_WAV2VEC2: dict[str, Callable[[], Wav2Vec2Config]] = {
    # Baevski et al. 2020, BASE (fairseq wav2vec2_base_librispeech.yaml)
    "base": lambda: Wav2Vec2Config(conv_feature_layers=list(BASE_CONV_LAYERS)),
    # LARGE as pretrained on LibriVox (LV-60k), the common LARGE checkpoint
    "large": lambda: _wav2vec2_large(),
    "large-lv60": lambda: _wav2vec2_large(),
    # LARGE as pretrained on LibriSpeech 960 h: BASE-style group norm and post-LN
    "large-ls960": lambda: Wav2Vec2Config(
        encoder_layers=24,
        encoder_embed_dim=1024,
        encoder_ffn_embed_dim=4096,
        encoder_attention_heads=16,
        final_dim=768,
        encoder_layerdrop=0.2,
        latent_temp=(2.0, 0.1, 0.999995),
    ),
    # XLSR-53 (Conneau et al. 2020): LARGE-LV60 architecture
    "xlsr-53": lambda: _wav2vec2_large(),
    # XLS-R (Babu et al. 2021)
    "xls-r-300m": lambda: _wav2vec2_large(),
    "xls-r-1b": lambda: _wav2vec2_large(encoder_layers=48, encoder_embed_dim=1280, encoder_ffn_embed_dim=5120, final_dim=1024),
    "xls-r-2b": lambda: _wav2vec2_large(encoder_layers=48, encoder_embed_dim=1920, encoder_ffn_embed_dim=7680, final_dim=1024),
    "tiny": _wav2vec2_tiny,
}


# --------------------------------------------------------------------------- wav2vec, vq-wav2vec


def _wav2vec_base() -> Wav2VecConfig:
    # Schneider et al. 2019, section 2: 5-layer encoder, 9-layer kernel-3 context network.
    return Wav2VecConfig(
        conv_feature_layers=list(WAV2VEC_ENCODER),
        conv_aggregator_layers=[(512, 3, 1)] * 9,
        skip_connections_agg=False,
        log_compression=True,
    )


def _wav2vec_large() -> Wav2VecConfig:
    # fairseq examples/wav2vec/README.md "Train a wav2vec model" (the released wav2vec_large.pt).
    return Wav2VecConfig(
        conv_feature_layers=list(LARGE_ENCODER),
        conv_aggregator_layers=list(LARGE_AGGREGATOR),
        skip_connections_agg=True,
        residual_scale=0.5,
        log_compression=True,
    )


def _vq_wav2vec(vq_type: str) -> Wav2VecConfig:
    # fairseq examples/wav2vec/README.md "Train a gumbel vq-wav2vec model"; k-means: same
    # with --vq-type kmeans --loss-weights [1]. No --log-compression there (argparse default off).
    return Wav2VecConfig(
        conv_feature_layers=list(LARGE_ENCODER),
        conv_aggregator_layers=list(LARGE_AGGREGATOR),
        activation="gelu",
        skip_connections_agg=True,
        residual_scale=0.5,
        log_compression=False,
        vq_type=vq_type,
        vq_groups=2,
        vq_depth=2,
        combine_groups=True,
        vq_vars=320,
        vq_temp=(2.0, 0.5, 0.999995),
        vq_gamma=0.25,
        loss_weights=[1.0] if vq_type == "kmeans" else None,
    )


def _wav2vec_tiny(vq_type: str = "none") -> Wav2VecConfig:
    # Same strides (10 ms frames), 64 channels, 3-layer aggregator: trains in minutes on 2 cores.
    # Three steps ahead (30-50 ms): with K = 6 a model this small spends its first hundred
    # updates on the far steps it cannot yet predict (FSDD, 80 updates: 12% of frames
    # ranked above all 10 negatives with K = 6, 25% with K = 3).
    return Wav2VecConfig(
        conv_feature_layers=[(64, 10, 5), (64, 8, 4), (64, 4, 2), (64, 4, 2), (64, 4, 2)],
        conv_aggregator_layers=[(64, 3, 1)] * 3,
        prediction_steps=3,
        num_negatives=10,
        skip_connections_agg=True,
        log_compression=vq_type == "none",
        activation="relu" if vq_type == "none" else "gelu",
        vq_type=vq_type,
        vq_vars=32,
        vq_groups=2,
        vq_depth=2 if vq_type == "gumbel" else 1,
        combine_groups=vq_type != "none",
        vq_temp=(2.0, 0.5, 0.999),
        loss_weights=[1.0] if vq_type == "kmeans" else None,
    )


_WAV2VEC: dict[str, Callable[[], Wav2VecConfig]] = {
    "base": _wav2vec_base,
    "large": _wav2vec_large,
    "tiny": lambda: _wav2vec_tiny("none"),
}

_VQ_WAV2VEC: dict[str, Callable[[], Wav2VecConfig]] = {
    "gumbel": lambda: _vq_wav2vec("gumbel"),
    "kmeans": lambda: _vq_wav2vec("kmeans"),
    "tiny": lambda: _wav2vec_tiny("gumbel"),  # "vq-wav2vec" alone means the Gumbel variant (as fairseq's release)
    "gumbel-tiny": lambda: _wav2vec_tiny("gumbel"),
    "kmeans-tiny": lambda: _wav2vec_tiny("kmeans"),
}

#: family -> preset name -> a function returning a fresh config.
PRESETS: dict[str, dict[str, Callable[[], Any]]] = {"wav2vec2": _WAV2VEC2, "wav2vec": _WAV2VEC, "vq-wav2vec": _VQ_WAV2VEC}


# Downstream (stored-feature) CTC models: field values on top of DownstreamConfig's defaults.
DOWNSTREAM_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "blstm": {
        # 3 x 512 BiLSTM behind one 5-wide GLU convolution: a classic CTC acoustic model size.
        "base": {"conv_channels": [512], "conv_kernels": [5], "lstm_hidden": 512, "lstm_layers": 3, "dropout": 0.3},
        # minutes on 2 CPU cores (FSDD digits)
        "tiny": {"conv_channels": [64], "conv_kernels": [3], "lstm_hidden": 64, "lstm_layers": 2, "dropout": 0.1},
    },
    "conv": {
        # wav2letter-like widening GLU stack at stride 1 (receptive field 0.4 s at 10 ms frames)
        "base": {"conv_channels": [256, 256, 384, 384, 512, 512, 768, 768],
                 "conv_kernels": [11, 11, 13, 13, 15, 15, 17, 1], "dropout": 0.25},
        "tiny": {"conv_channels": [64, 64, 64, 96], "conv_kernels": [5, 5, 7, 1], "dropout": 0.1},
    },
}


def downstream_config(arch: str, preset: str = "tiny", **overrides: Any) -> DownstreamConfig:
    """A :class:`DownstreamConfig` from an architecture preset and field overrides.

    Example:
        >>> downstream_config("conv", "tiny", input_dim=13, vocab_size=20).conv_kernels
        [5, 5, 7, 1]
    """
    if arch not in DOWNSTREAM_PRESETS:
        raise ValueError(f"arch {arch!r}: choose {' or '.join(ARCHES)}")
    if preset not in DOWNSTREAM_PRESETS[arch]:
        raise ValueError(f"no {arch} preset {preset!r} (known: {', '.join(DOWNSTREAM_PRESETS[arch])})")
    names = {f.name for f in dataclasses.fields(DownstreamConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a DownstreamConfig field (known: {', '.join(sorted(names))})")
    return DownstreamConfig(arch=arch, **{**DOWNSTREAM_PRESETS[arch][preset], **overrides})


# --------------------------------------------------------------------------- lookup


def split_preset_name(name: str) -> tuple[str, str]:
    """``"wav2vec2-base"`` -> ("wav2vec2", "base"); the longest matching family wins.

    Example:
        >>> split_preset_name("vq-wav2vec-gumbel")
        ('vq-wav2vec', 'gumbel')
    """
    for family in sorted(PRESETS, key=len, reverse=True):
        if name.startswith(family + "-"):
            return family, name[len(family) + 1 :]
    if name in ("xlsr-53",) or name.startswith("xls-r-"):
        return "wav2vec2", name
    raise KeyError(f"unknown preset {name!r}: expected <family>-<name>, e.g. wav2vec2-base")


def get_preset(family: str | None, name: str | None = None):
    """A fresh config object for a named architecture.

    Args:
        family: "wav2vec2", "wav2vec" or "vq-wav2vec"; or None with ``name`` = "<family>-<name>".
        name: the preset name within the family (e.g. "base", "large", "xls-r-1b", "tiny").
            When only one argument is given it is taken as the full "<family>-<name>".

    Raises:
        KeyError: unknown family or preset (the message lists the known ones).

    Example:
        >>> get_preset("wav2vec2", "large").encoder_layers
        24
        >>> get_preset("wav2vec2-base").encoder_layers
        12
    """
    if name is None:
        family, name = split_preset_name(family)
    elif family is None:
        family, name = split_preset_name(name)
    if family not in PRESETS:
        raise KeyError(f"unknown model family {family!r} (known: {', '.join(PRESETS)})")
    table = PRESETS[family]
    if name not in table:
        known = ", ".join(sorted(table)) or "none available"
        raise KeyError(f"unknown {family} preset {name!r} (known: {known})")
    return table[name]()


def list_presets() -> list[tuple[str, str]]:
    """All (family, name) pairs, wav2vec2 first.

    Example:
        >>> ("wav2vec2", "base") in list_presets()
        True
    """
    return [(family, name) for family, table in PRESETS.items() for name in table]


def count_preset_parameters(family: str, name: str) -> int:
    """Parameter count of a preset, built on the meta device (no memory is allocated).

    Example:
        >>> round(count_preset_parameters("wav2vec2", "large") / 1e6)
        317
    """
    cfg = get_preset(family, name)
    cls = model_class_for(family)
    with torch.device("meta"):
        model = cls(cfg)
    return sum(p.numel() for p in model.parameters())
