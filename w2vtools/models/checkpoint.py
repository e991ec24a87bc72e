"""Our checkpoint format: one file that holds everything needed to rebuild a model.

``torch.save`` of a dict made only of tensors and plain Python values (so it loads
with ``torch.load(weights_only=True)``: nothing is unpickled but data)::

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

Classes are looked up through :mod:`w2vtools.models.registry`, so new families and
tasks need no change here: they are saved with their own class paths.
:func:`w2vtools.models.loading.load_model` reads this format and every other source.

Example:
    >>> save_model("tiny.pt", LoadedModel("wav2vec2", "pretrain", model, cfg))  # doctest: +SKIP
    >>> from_checkpoint_dict(read_checkpoint("tiny.pt")).task                   # doctest: +SKIP
    'pretrain'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.models.registry import (
    KNOWN_TASKS,
    build_model,
    class_path,
    classes_for,
    config_from_dict,
    config_to_dict,
    import_object,
    plain,
)

FORMAT_VERSION = 1


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
        "extra": plain(merged_extra),
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
        try:
            cfg_path, model_path = classes_for(family, task)
        except W2VError as e:
            raise W2VError(f"{path}: {e}") from None
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
            f"(missing: {few_names(missing)}; unexpected: {few_names(unexpected)})"
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


def few_names(keys, n: int = 4) -> str:
    """The first ``n`` of ``keys`` for a message: ``"a, b, c, d and 3 more"`` (or ``"none"``)."""
    keys = list(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def non_finite_weights(module: nn.Module) -> list[str]:
    """The names of ``module``'s parameters that hold NaN or Inf (the one test of a model's weights).

    Example:
        >>> non_finite_weights(nn.Linear(2, 2))
        []
    """
    return [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]


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
