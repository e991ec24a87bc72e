"""Our checkpoint format, and :func:`load_model` for every model source.

One file holds everything needed to rebuild a model: ``torch.save`` of a dict made
only of tensors and plain Python values (so it loads with
``torch.load(weights_only=True)``: nothing is unpickled but data)::

    {
      "w2v_checkpoint": 1,                 # format version
      "family": "wav2vec2",                # encoder family
      "task": "pretrain" | "ctc" | "downstream",
      "config_class": "w2vtools.models.wav2vec2:Wav2Vec2Config",
      "model_class":  "w2vtools.models.wav2vec2:Wav2Vec2Model",
      "config": {...},                     # the config dataclass as a dict
      "state_dict": {name: tensor},
      "dictionary": ["<s>", "<pad>", "</s>", "<unk>", "|", "E", ...] | None,
      "extra": {...},                      # caller's plain-typed extras (e.g. training stats)
    }

Classes are looked up by import path, restricted to ``w2vtools.models.*``; a model
class is built with ``Model.from_config(cfg)`` when it has one, else ``Model(cfg)``.
A config class may offer ``from_dict``/``to_dict``; dataclasses work without.
New families and tasks therefore need no change here: they are saved with their own
class paths. :data:`FAMILIES` and :data:`TASKS` give the defaults for a checkpoint
that names a family/task but no classes.

:func:`load_model` accepts our files, fairseq ``.pt`` files (via
:mod:`w2vtools.models.fairseq`), Hugging Face folders (via
:mod:`w2vtools.models.huggingface`) and named models (via :mod:`w2vtools.models.hub`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from w2vtools.errors import W2VError

log = logging.getLogger("w2v.checkpoint")

FORMAT_VERSION = 1

# family -> (config class, model class) by import path; imported only when needed.
FAMILIES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("w2vtools.models.wav2vec2:Wav2Vec2Config", "w2vtools.models.wav2vec2:Wav2Vec2Model"),
    "wav2vec": ("w2vtools.models.wav2vec:Wav2VecConfig", "w2vtools.models.wav2vec:Wav2VecModel"),
    "vq-wav2vec": ("w2vtools.models.wav2vec:Wav2VecConfig", "w2vtools.models.wav2vec:Wav2VecModel"),
}

# task -> (config class, model class) for tasks whose model wraps an encoder or stands alone.
TASKS: dict[str, tuple[str, str]] = {
    "ctc": ("w2vtools.models.ctc:CTCConfig", "w2vtools.models.ctc:CTCModel"),
    "downstream": ("w2vtools.models.downstream:DownstreamConfig", "w2vtools.models.downstream:DownstreamModel"),
}

KNOWN_TASKS = ("pretrain", "ctc", "downstream")
_ALLOWED_PREFIX = "w2vtools.models."


@dataclass
class LoadedModel:
    """A model with everything needed to use, save or convert it.

    Attributes:
        family: encoder family: "wav2vec", "vq-wav2vec", "wav2vec2" (or a downstream
            feature family such as "fbank").
        task: "pretrain", "ctc" or "downstream".
        model: the nn.Module (in eval mode after loading).
        config: the config dataclass the model was built from.
        dictionary: CTC output tokens in order (index 0 = blank), or None.
        source: "w2v", "fairseq" or "huggingface".
        extra: plain-typed extras stored with the checkpoint.
    """

    family: str
    task: str
    model: nn.Module
    config: Any
    dictionary: list[str] | None = None
    source: str = "w2v"
    extra: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- class registry


def import_object(path: str):
    """Import ``"package.module:Name"``, only below ``w2vtools.models``.

    Example:
        >>> import_object("w2vtools.models.wav2vec2:Wav2Vec2Model").__name__
        'Wav2Vec2Model'
    """
    module_name, _, attr = path.partition(":")
    if not module_name.startswith(_ALLOWED_PREFIX) or not attr:
        raise W2VError(f"refusing to load class {path!r}: only w2vtools.models.* classes are allowed")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise W2VError(f"model code {module_name} is not available in this installation") from e
        raise
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise W2VError(f"{module_name} has no {attr}")
    return obj


def class_path(obj_or_cls) -> str:
    """``"module:QualName"`` of a class or instance."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def model_class_for(family: str):
    """The model class registered for an encoder family."""
    if family not in FAMILIES:
        raise W2VError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return import_object(FAMILIES[family][1])


def config_class_for(family: str):
    """The config class registered for an encoder family."""
    if family not in FAMILIES:
        raise W2VError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return import_object(FAMILIES[family][0])


def config_to_dict(cfg) -> dict:
    """Plain-Python dict of a config (its ``to_dict`` when it has one).

    Example:
        >>> from w2vtools.models.presets import get_preset
        >>> config_to_dict(get_preset("wav2vec2", "tiny"))["encoder_layers"]
        2
    """
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if dataclasses.is_dataclass(cfg):
        return _plain(dataclasses.asdict(cfg))
    if isinstance(cfg, dict):
        return _plain(cfg)
    raise TypeError(f"cannot store config of type {type(cfg).__name__}")


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_dict(cls, data: dict):
    """Build a config of class ``cls`` from a dict; unknown keys are dropped with a warning.

    Nested dataclass fields are rebuilt recursively. The class's own ``from_dict``
    is used when it has one.

    Example:
        >>> from w2vtools.models.wav2vec2 import Wav2Vec2Config
        >>> config_from_dict(Wav2Vec2Config, {"encoder_layers": 3}).encoder_layers
        3
    """
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        log.warning("%s: ignoring unknown config keys %s", cls.__name__, ", ".join(unknown))
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            continue
        hint = hints.get(key)
        if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = config_from_dict(hint, value)
        kwargs[key] = value
    return cls(**kwargs)


def build_model(model_cls, cfg) -> nn.Module:
    """``model_cls.from_config(cfg)`` when defined, else ``model_cls(cfg)``."""
    if hasattr(model_cls, "from_config"):
        return model_cls.from_config(cfg)
    return model_cls(cfg)


# --------------------------------------------------------------------------- our format


def checkpoint_dict(loaded: LoadedModel, extra: dict | None = None) -> dict:
    """The plain dict :func:`save_model` writes (tensors and plain Python values only)."""
    if loaded.task not in KNOWN_TASKS:
        raise W2VError(f"unknown task {loaded.task!r} (known: {', '.join(KNOWN_TASKS)})")
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    merged_extra = dict(loaded.extra or {})
    merged_extra.update(extra or {})
    return {
        "w2v_checkpoint": FORMAT_VERSION,
        "family": loaded.family,
        "task": loaded.task,
        "config_class": class_path(loaded.config),
        "model_class": class_path(loaded.model),
        "config": config_to_dict(loaded.config),
        "state_dict": state,
        "dictionary": list(loaded.dictionary) if loaded.dictionary is not None else None,
        "extra": _plain(merged_extra),
    }


def save_model(path: str | os.PathLike, loaded: LoadedModel, extra: dict | None = None) -> None:
    """Write ``loaded`` in our format, atomically (temp file + fsync + rename).

    Args:
        path: destination file (``.pt`` by convention).
        loaded: the model, its config, family, task and dictionary.
        extra: more plain-typed values to store (numbers, strings, lists, dicts, tensors).

    Example:
        >>> save_model("tiny.pt", LoadedModel("wav2vec2", "pretrain", model, cfg))  # doctest: +SKIP
    """
    from w2vtools.fileio import atomic_write

    data = checkpoint_dict(loaded, extra)
    with atomic_write(path, "wb") as f:
        torch.save(data, f)


def is_w2v_checkpoint(data) -> bool:
    return isinstance(data, dict) and "w2v_checkpoint" in data and "state_dict" in data


def from_checkpoint_dict(data: dict, *, path: str = "<checkpoint>", strict: bool = True) -> LoadedModel:
    """Rebuild a :class:`LoadedModel` from the dict :func:`checkpoint_dict` made."""
    version = data.get("w2v_checkpoint")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise W2VError(f"{path}: checkpoint format version {version!r} is newer than this w2v understands")
    family, task = data.get("family"), data.get("task")
    if task not in KNOWN_TASKS:
        raise W2VError(f"{path}: unknown task {task!r}")
    cfg_path, model_path = data.get("config_class"), data.get("model_class")
    if not cfg_path or not model_path:
        if task == "pretrain":
            if family not in FAMILIES:
                raise W2VError(f"{path}: unknown model family {family!r}")
            cfg_path, model_path = FAMILIES[family]
        else:
            cfg_path, model_path = TASKS[task]
    cfg_cls, model_cls = import_object(cfg_path), import_object(model_path)
    try:
        cfg = config_from_dict(cfg_cls, data["config"])
        model = build_model(model_cls, cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise W2VError(f"{path}: cannot build {model_path} from the stored config: {e}") from e
    missing, unexpected = model.load_state_dict(data["state_dict"], strict=False)
    if strict and (missing or unexpected):
        raise W2VError(
            f"{path}: weights do not match the {model_path.split(':')[-1]} architecture "
            f"(missing: {_few(missing)}; unexpected: {_few(unexpected)})"
        )
    model.eval()
    return LoadedModel(
        family=family,
        task=task,
        model=model,
        config=cfg,
        dictionary=data.get("dictionary"),
        source="w2v",
        extra=data.get("extra") or {},
    )


def _few(keys, n: int = 4) -> str:
    keys = list(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict | None:
    """Our checkpoint dict, or None when the file is not in our format (e.g. fairseq's)."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception:  # not a zip torch file, or it needs unpickling of objects: not ours
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except Exception:
            return None
    return data if is_w2v_checkpoint(data) else None


# --------------------------------------------------------------------------- every source


def load_model(spec: str | os.PathLike, map_location="cpu") -> LoadedModel:
    """Load a model from our file, a fairseq ``.pt``, a Hugging Face folder or a name.

    Args:
        spec: a path (our checkpoint, a fairseq checkpoint, or a folder with
            ``config.json``), or a model name known to :mod:`w2vtools.models.hub`.
        map_location: where tensors go (``torch.load``'s argument).

    Returns:
        LoadedModel with the model in eval mode.

    Raises:
        W2VError: unreadable file or unknown name (the message says which and why).

    Example:
        >>> loaded = load_model("exp/pretrain/checkpoint_best.pt")  # doctest: +SKIP
        >>> loaded.family, loaded.task                     # doctest: +SKIP
        ('wav2vec2', 'pretrain')
    """
    spec_str = str(spec)
    path = Path(spec_str)
    if path.is_dir():
        if (path / "config.json").is_file():
            from w2vtools.models.huggingface import load_huggingface

            return load_huggingface(path, map_location=map_location)
        raise W2VError(f"{path}: a folder without config.json is not a Hugging Face model")
    if path.is_file():
        data = read_checkpoint(path, map_location)
        if data is not None:
            loaded = from_checkpoint_dict(data, path=spec_str)
            return loaded
        try:
            fairseq = importlib.import_module("w2vtools.models.fairseq")
        except ModuleNotFoundError as e:
            if e.name == "w2vtools.models.fairseq":
                raise W2VError(
                    f"{path}: not a w2v checkpoint, and fairseq checkpoint import "
                    "(w2vtools.models.fairseq) is not available in this installation"
                ) from e
            raise
        return fairseq.load_fairseq(path)
    try:
        hub = importlib.import_module("w2vtools.models.hub")
    except ModuleNotFoundError as e:
        if e.name == "w2vtools.models.hub":
            raise W2VError(f"{spec_str}: no such file, and unknown model") from e
        raise
    if hasattr(hub, "is_named") and not hub.is_named(spec_str):
        raise W2VError(f"{spec_str}: no such file or folder, and not a known model name")
    resolved = hub.resolve(spec_str)
    if str(resolved) == spec_str:
        raise W2VError(f"{spec_str}: unknown model (not a file, folder or model name)")
    return load_model(resolved, map_location=map_location)


# --------------------------------------------------------------------------- inspect / convert


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
    if "dictionary" in info:
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
    from w2vtools.models.presets import get_preset, split_preset_name

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
        from w2vtools.models.huggingface import export_huggingface

        export_huggingface(loaded, dst, architecture=architecture)
    else:
        raise W2VError(f"unknown target format {to!r} (w2v or huggingface)")
    return loaded
