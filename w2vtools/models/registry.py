"""Which classes make up each model family and task, and configs as plain dicts.

This module imports nothing of ours but :mod:`w2vtools.errors`, so every other
models module (the models themselves, our checkpoint format, the fairseq and
Hugging Face importers) can use it without an import cycle. Classes are named by
import path (``"module:Class"``) and imported on first use, restricted to
``w2vtools.models.*``: a checkpoint names the classes it was saved from, and the
tables below give the defaults for a checkpoint that names only a family or task.

A model class is built with ``Model.from_config(cfg)`` when it has one, else
``Model(cfg)``. A config class may offer ``from_dict``/``to_dict``; dataclasses
work without. Adding a model family means one line in :data:`FAMILIES`.

Example:
    >>> model_class_for("wav2vec2").__name__
    'Wav2Vec2Model'
    >>> class_path(model_class_for("wav2vec"))
    'w2vtools.models.wav2vec:Wav2VecModel'
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import typing

from w2vtools.errors import W2VError

log = logging.getLogger("w2v.checkpoint")

# family -> (config class, model class) by import path
FAMILIES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("w2vtools.models.wav2vec2:Wav2Vec2Config", "w2vtools.models.wav2vec2:Wav2Vec2Model"),
    "wav2vec": ("w2vtools.models.wav2vec:Wav2VecConfig", "w2vtools.models.wav2vec:Wav2VecModel"),
    "vq-wav2vec": ("w2vtools.models.wav2vec:Wav2VecConfig", "w2vtools.models.wav2vec:Wav2VecModel"),
    # BERT on vq-wav2vec units (its checkpoints hold the unit dictionary)
    "unit-bert": ("w2vtools.models.unit_bert:UnitBertConfig", "w2vtools.models.token_transformer:TokenTransformer"),
}

# task -> (config class, model class) for tasks whose model wraps an encoder or stands alone
TASKS: dict[str, tuple[str, str]] = {
    "ctc": ("w2vtools.models.ctc:CTCConfig", "w2vtools.models.ctc:CTCModel"),
    "downstream": ("w2vtools.models.downstream:DownstreamConfig", "w2vtools.models.downstream:DownstreamModel"),
    "lm": ("w2vtools.models.token_transformer:TokenTransformerConfig",
           "w2vtools.models.token_transformer:TokenTransformer"),
}

KNOWN_TASKS = ("pretrain", "ctc", "downstream", "lm")
_ALLOWED_PREFIX = "w2vtools.models."


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


def classes_for(family: str | None, task: str) -> tuple[str, str]:
    """The (config class, model class) paths of a task's model, or of a family's encoder for ``pretrain``."""
    if task == "pretrain":
        if family not in FAMILIES:
            raise W2VError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
        return FAMILIES[family]
    if task not in TASKS:
        raise W2VError(f"unknown task {task!r} (known: {', '.join(KNOWN_TASKS)})")
    return TASKS[task]


def model_class_for(family: str):
    """The model class registered for an encoder family."""
    return import_object(classes_for(family, "pretrain")[1])


def config_class_for(family: str):
    """The config class registered for an encoder family."""
    return import_object(classes_for(family, "pretrain")[0])


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
        return plain(dataclasses.asdict(cfg))
    if isinstance(cfg, dict):
        return plain(cfg)
    raise TypeError(f"cannot store config of type {type(cfg).__name__}")


def plain(value):
    """``value`` with tuples as lists and dict keys as strings (what ``torch.load(weights_only=True)`` reads back).

    Example:
        >>> plain({1: (2, 3)})
        {'1': [2, 3]}
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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


def build_model(model_cls, cfg):
    """``model_cls.from_config(cfg)`` when defined, else ``model_cls(cfg)``."""
    if hasattr(model_cls, "from_config"):
        return model_cls.from_config(cfg)
    return model_cls(cfg)
