""":func:`load_model`: one call for every model source.

Our checkpoints (:mod:`w2vtools.models.checkpoint`), fairseq ``.pt`` files
(:mod:`w2vtools.models.fairseq`), Hugging Face folders
(:mod:`w2vtools.models.huggingface`) and named models (:mod:`w2vtools.models.hub`,
fetched once, then loaded as the file they name).

Example:
    >>> loaded = load_model("exp/pretrain/checkpoint_best.pt")  # doctest: +SKIP
    >>> loaded.family, loaded.task                               # doctest: +SKIP
    ('wav2vec2', 'pretrain')
"""

from __future__ import annotations

import os
from pathlib import Path

from w2vtools.errors import W2VError
from w2vtools.models import hub
from w2vtools.models.checkpoint import LoadedModel, from_checkpoint_dict, read_checkpoint
from w2vtools.models.fairseq import load_fairseq
from w2vtools.models.huggingface import load_huggingface


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
            return load_huggingface(path, map_location=map_location)
        raise W2VError(f"{path}: a folder without config.json is not a Hugging Face model")
    if path.is_file():
        data = read_checkpoint(path, map_location)
        if data is not None:
            return from_checkpoint_dict(data, path=spec_str)
        return load_fairseq(path)
    if not hub.is_named(spec_str):
        raise W2VError(f"{spec_str}: no such file or folder, and not a known model name")
    resolved = hub.resolve(spec_str)
    if str(resolved) == spec_str:
        raise W2VError(f"{spec_str}: unknown model (not a file, folder or model name)")
    return load_model(resolved, map_location=map_location)
