"""Named architectures of the wav2vec family.

wav2vec 2.0 presets are defined here; wav2vec and vq-wav2vec presets live in
:mod:`w2vtools.models.wav2vec` (a ``PRESETS`` dict there, looked up lazily), so
every family is reachable through the same two functions::

    get_preset("wav2vec2", "base")     # -> Wav2Vec2Config
    list_presets()                     # -> [("wav2vec2", "base"), ...]

A preset may also be named ``"<family>-<name>"`` (``"wav2vec2-base"``,
``"vq-wav2vec-gumbel"``) with family ``None``.

Published sizes (parameters, as counted by :func:`count_preset_parameters`):
wav2vec2 BASE ~95 M, LARGE ~317 M, XLS-R 300M ~317 M, 1B ~965 M, 2B ~2.16 B.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from w2vtools.models.wav2vec2 import BASE_CONV_LAYERS, Wav2Vec2Config


def _large(**overrides) -> Wav2Vec2Config:
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


def _tiny(**overrides) -> Wav2Vec2Config:
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


WAV2VEC2_PRESETS: dict[str, Callable[[], Wav2Vec2Config]] = {
    # Baevski et al. 2020, BASE (fairseq wav2vec2_base_librispeech.yaml)
    "base": lambda: Wav2Vec2Config(conv_feature_layers=list(BASE_CONV_LAYERS)),
    # LARGE as pretrained on LibriVox (LV-60k), the common LARGE checkpoint
    "large": lambda: _large(),
    "large-lv60": lambda: _large(),
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
    "xlsr-53": lambda: _large(),
    # XLS-R (Babu et al. 2021)
    "xls-r-300m": lambda: _large(),
    "xls-r-1b": lambda: _large(encoder_layers=48, encoder_embed_dim=1280, encoder_ffn_embed_dim=5120, final_dim=1024),
    "xls-r-2b": lambda: _large(encoder_layers=48, encoder_embed_dim=1920, encoder_ffn_embed_dim=7680, final_dim=1024),
    "tiny": _tiny,
}

# family -> (module holding a PRESETS dict name -> config factory or config), for the
# families defined outside this file.
_EXTERNAL_PRESETS = {
    "wav2vec": "w2vtools.models.wav2vec",
    "vq-wav2vec": "w2vtools.models.wav2vec",
}

FAMILIES = ("wav2vec2", "wav2vec", "vq-wav2vec")


def _external(family: str) -> dict[str, Any]:
    module_name = _EXTERNAL_PRESETS.get(family)
    if module_name is None:
        return {}
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return {}
        raise
    presets = getattr(module, "PRESETS", {})
    # Accept either {family: {name: cfg}} or {name: cfg} keyed by "family-name" or name.
    if family in presets and isinstance(presets[family], dict):
        return dict(presets[family])
    out = {}
    for key, value in presets.items():
        if isinstance(key, tuple) and key[0] == family:
            out[key[1]] = value
        elif isinstance(key, str) and key.startswith(family + "-"):
            out[key[len(family) + 1 :]] = value
    return out


def _table(family: str) -> dict[str, Any]:
    if family == "wav2vec2":
        return WAV2VEC2_PRESETS
    if family in _EXTERNAL_PRESETS:
        return _external(family)
    raise KeyError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")


def split_preset_name(name: str) -> tuple[str, str]:
    """``"wav2vec2-base"`` -> ("wav2vec2", "base"); the longest matching family wins.

    Example:
        >>> split_preset_name("vq-wav2vec-gumbel")
        ('vq-wav2vec', 'gumbel')
    """
    for family in sorted(FAMILIES, key=len, reverse=True):
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
    table = _table(family)
    if name not in table:
        known = ", ".join(sorted(table)) or "none available"
        raise KeyError(f"unknown {family} preset {name!r} (known: {known})")
    value = table[name]
    cfg = value() if callable(value) else value
    return dataclasses.replace(cfg) if dataclasses.is_dataclass(cfg) else cfg


def list_presets() -> list[tuple[str, str]]:
    """All (family, name) pairs, wav2vec2 first.

    Example:
        >>> ("wav2vec2", "base") in list_presets()
        True
    """
    out = []
    for family in FAMILIES:
        out.extend((family, name) for name in _table(family))
    return out


def count_preset_parameters(family: str, name: str) -> int:
    """Parameter count of a preset, built on the meta device (no memory is allocated).

    Example:
        >>> round(count_preset_parameters("wav2vec2", "large") / 1e6)
        317
    """
    import torch

    from w2vtools.models.registry import model_class_for

    cfg = get_preset(family, name)
    cls = model_class_for(family)
    with torch.device("meta"):
        model = cls(cfg)
    return sum(p.numel() for p in model.parameters())
