"""Encoders to run over audio: a checkpoint, a named model, or the fbank/MFCC baseline.

:func:`load_encoder` turns what the user names (``--model``) into an :class:`Encoder`:
the part of the model that offers ``extract_features`` (a CTC model wraps its
encoder), with what identifies it (family, checksum of the weights) for the
attributes of the files it produces. ``w2v featurize`` and ``w2v quantize`` use it.
With ``bert``, the model's quantizer and a unit BERT become one encoder
(:class:`~w2vtools.models.unit_bert.VQUnitBert`: audio -> codes -> BERT features).

Example:
    >>> enc = load_encoder("fbank")
    >>> enc.family, enc.module.frame_shift
    ('fbank', 0.01)
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from w2vtools.errors import W2VError
from w2vtools.models import baselines, hub
from w2vtools.models.checkpoint import non_finite_weights
from w2vtools.models.loading import load_model
from w2vtools.models.unit_bert import VQUnitBert


log = logging.getLogger("w2v.encoders")


def warn_non_finite_weights(module, name: str) -> bool:
    """Warn once, naming the model, when some of its weights are NaN or Inf; returns True then.

    Such a model gives NaN everywhere; the commands still name each utterance it
    fails on, and this line says why before the first one.

    Example:
        >>> warn_non_finite_weights(torch.nn.Linear(2, 2), "tiny.pt")
        False
    """
    params = list(module.parameters()) if hasattr(module, "parameters") else []
    bad = non_finite_weights(module) if params else []
    if bad:
        log.warning("%s: %d of %d weight tensors hold NaN or Inf (e.g. %s): its outputs will be NaN",
                    name, len(bad), len(params), bad[0])
    return bool(bad)


@dataclass
class Encoder:
    """An encoder ready to featurize, with what identifies it.

    Attributes:
        module: has ``extract_features``, ``num_frames``, ``frame_shift``, ``sample_rate``.
        name: what the user asked for (a named model, a path, ``fbank``).
        family: wav2vec | vq-wav2vec | wav2vec2 | fbank | mfcc.
        sha256: checksum of the weights file (of the configuration for fbank/mfcc).
    """

    module: object
    name: str
    family: str
    sha256: str = ""
    loaded: object = None  # the LoadedModel, when it came from a checkpoint


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file of a folder (Hugging Face model dir) in name order."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(str(q.relative_to(p)).encode())
        with open(q, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _find_encoder(module):
    """The part of a loaded model that offers ``extract_features`` (a CTC model wraps its encoder)."""
    if hasattr(module, "extract_features") and hasattr(module, "num_frames"):
        return module
    for attr in ("encoder", "w2v_encoder", "wav2vec2", "model"):
        inner = getattr(module, attr, None)
        if inner is not None and hasattr(inner, "extract_features") and hasattr(inner, "num_frames"):
            return inner
    raise W2VError(f"{type(module).__name__}: this model has no feature encoder (extract_features)")


def load_encoder(spec: str, *, device: str = "cpu", bert: str | None = None) -> Encoder:
    """Load ``spec`` as an encoder: ``fbank``/``mfcc``, a named model (downloaded once), or a checkpoint.

    Args:
        spec: what ``--model`` names.
        device: where the caller will run it (the model loads on the CPU).
        bert: a unit BERT checkpoint (``w2v pretrain --arch unit-bert``, or fairseq's
            RoBERTa on vq-wav2vec units) reading the codes of ``spec``'s quantizer.

    Example:
        >>> load_encoder("fbank").module.frame_shift
        0.01
    """
    spec = str(spec)
    if bert is not None:
        return _unit_bert_encoder(spec, str(bert))
    if baselines.is_baseline(spec):
        enc = baselines.build_baseline(spec)
        return Encoder(enc, spec, enc.config.kind, enc.checksum)
    path = hub.resolve(spec)
    if not os.path.exists(path):
        names = ", ".join(list(hub.MODELS) + list(baselines.BASELINES))
        raise W2VError(f"{spec}: no such checkpoint file or folder, and not a model name ({names})")
    loaded = load_model(path, map_location="cpu")
    module = _find_encoder(loaded.model)
    module.eval()
    warn_non_finite_weights(module, spec)
    return Encoder(module, spec, getattr(loaded, "family", "") or "", file_sha256(path), loaded)


def encoder_from_module(module, name: str = "module", family: str | None = None) -> Encoder:
    """Wrap an in-memory model (tests, notebooks)."""
    enc = _find_encoder(module)
    enc.eval()
    fam = family or getattr(enc, "family", None) or type(enc).__name__
    return Encoder(enc, name, str(fam), "")


def _unit_bert_encoder(spec: str, bert: str) -> Encoder:
    """The quantizer of ``spec`` and the unit BERT ``bert`` as one encoder (``--model vq.pt --bert bert.pt``)."""
    if baselines.is_baseline(spec):
        raise W2VError(f"--bert reads a quantizer's codes; --model {spec} has none (give a vq-wav2vec model)")
    quantizer = load_encoder(spec)
    if not hasattr(quantizer.module, "quantize"):
        raise W2VError(f"--bert reads a quantizer's codes; {spec} ({quantizer.family}) has no quantizer")
    path = hub.resolve(bert)
    if not os.path.exists(path):
        raise W2VError(f"--bert {bert}: no such checkpoint file")
    loaded = load_model(path, map_location="cpu")
    if loaded.family != "unit-bert" or not loaded.dictionary:
        raise W2VError(f"--bert {bert}: a {loaded.family} {loaded.task} model, not a unit BERT with its dictionary "
                       "(w2v pretrain --arch unit-bert, or fairseq RoBERTa on units with dict.txt beside it)")
    try:
        module = VQUnitBert(quantizer.module, loaded.model, loaded.dictionary).eval()
    except W2VError as e:
        raise W2VError(f"--bert {bert} on --model {spec}: {e}") from None
    warn_non_finite_weights(module.bert, bert)
    log.info("unit BERT %s: %d of its %d tokens are codes of %s's quantizer", bert, module.units_known,
             len(loaded.dictionary), spec)
    digest = hashlib.sha256(f"{quantizer.sha256}+{file_sha256(path)}".encode()).hexdigest()
    return Encoder(module, f"{spec}+{bert}", "unit-bert", digest, loaded)
