"""Emission sources: where a decoder's CTC log-probabilities come from.

Three sources, one :class:`EmissionSource` shape (tokens, frame shift, an iterator
of ``(uid, (T, V) tensor)``):

* :func:`stored_emissions`: emissions stored earlier (``w2v decode --dump-emissions``):
  a features file (flat HDF5 or Kaldi ark/scp through :mod:`w2vtools.formats.features`;
  root attributes ``log_probs`` (true), ``tokens`` (JSON list, index 0 = blank),
  ``frame_shift``), or NumPy ``.npy`` files of one ``(T, V)`` matrix each (a file,
  or a folder of them; the utterance id is the file name without ``.npy`` and ``.logits``);
* :func:`model_emissions`: a CTC checkpoint run over a corpus (TSV, Kaldi data dir,
  wav.scp) by the corpus runner (:mod:`w2vtools.runner`): length-sorted batches, long
  recordings in overlapping windows;
* :func:`downstream_emissions`: a downstream model (``w2v finetune --features``) run
  over stored features (:func:`feature_log_probs`).

Every source honours ``--shard K/N`` with :func:`w2vtools.batching.select_shard`,
so all commands split a corpus the same way.

Example:
    >>> src = stored_emissions("em.h5")   # doctest: +SKIP
    >>> src.tokens[:5], src.frame_shift   # doctest: +SKIP
    (['<s>', '<pad>', '</s>', '<unk>', '|'], 0.02)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from w2vtools.batching import SkipLog, select_shard
from w2vtools.encoders import warn_non_finite_weights
from w2vtools.errors import W2VError
from w2vtools.formats.features import open_features
from w2vtools.formats.labels import ctc_vocabulary, read_dictionary
from w2vtools.malloc import keep_freed_memory
from w2vtools.models.loading import load_model
from w2vtools.models.downstream import DownstreamModel
from w2vtools.runner import Runner, check_device, check_int8, corpus_utterances, plan_corpus, prepare_model, run_corpus

DEFAULT_FRAME_SHIFT = 0.02  # wav2vec 2.0: 320 samples at 16 kHz


@dataclasses.dataclass
class EmissionSource:
    """Where log-probabilities come from: ``items`` yields (uid, (T, V) tensor).

    Attributes:
        tokens: the CTC vocabulary, index 0 = blank.
        frame_shift: seconds per frame.
        items: (uid, scores) pairs; scores are logits or log-probabilities.
        total: the number of utterances, when known (for a progress bar).
        order: when items come in another order (length-sorted batches): the order to write in.
    """

    tokens: list[str]
    frame_shift: float
    items: Iterator[tuple[str, torch.Tensor]]
    total: int | None = None
    order: list[str] | None = None


# ---------------------------------------------------------------------------------------------
# Stored


def _npy_uid(path: Path) -> str:
    name = path.name[: -len(".npy")]
    return name[: -len(".logits")] if name.endswith(".logits") else name


def _tokens_from_dict(dict_path: str | None) -> list[str] | None:
    return None if dict_path is None else ctc_vocabulary(read_dictionary(dict_path))


def stored_emissions(spec: str, *, dict_path: str | None = None, frame_shift: float | None = None,
                     shard: tuple[int, int] | None = None) -> EmissionSource:
    """Stored emissions: ``.npy`` file or folder, or a features spec (HDF5, ark, scp).

    Args:
        spec: a ``.npy`` file, a folder of them, or any features spec.
        dict_path: the token list as a ``dict.ltr.txt``; by default the file's ``tokens``
            attribute (``.npy``: ``dict.ltr.txt`` next to the files).
        frame_shift: seconds per frame; by default the file's ``frame_shift`` attribute, else 0.02.
        shard: ``(k, n)``: only the k-th (1-based) of n contiguous parts.

    Example:
        >>> src = stored_emissions("em.h5")   # doctest: +SKIP
        >>> src.tokens[:5], src.frame_shift   # doctest: +SKIP
        (['<s>', '<pad>', '</s>', '<unk>', '|'], 0.02)
    """
    p = Path(spec)
    if not p.exists() and spec != "-" and not spec.startswith(("ark:", "scp:", "ark,", "scp,")):
        raise W2VError(f"{spec}: no such file or directory")
    tokens = _tokens_from_dict(dict_path)
    if p.suffix == ".npy" or p.is_dir() and not any(p.glob("*.h5context")):
        return _npy_emissions(p, spec, tokens, frame_shift, shard)
    reader = open_features(spec)
    attrs = reader.attrs
    if tokens is None and attrs.get("tokens"):
        stored = attrs["tokens"]
        tokens = json.loads(stored) if isinstance(stored, str) else list(stored)
    if tokens is None:
        raise W2VError(f"{spec}: the file records no token list (attribute 'tokens'); pass --dict dict.ltr.txt")
    shift = frame_shift or float(attrs.get("frame_shift") or DEFAULT_FRAME_SHIFT)
    pairs, total = _feature_items(reader, spec, shard)

    def items():
        try:
            for uid, x in pairs:
                yield uid, torch.from_numpy(np.asarray(x, dtype=np.float32))
        finally:
            reader.close()

    return EmissionSource(tokens, shift, items(), total)


def _feature_items(reader, spec: str, shard: tuple[int, int] | None):
    """``(uid, matrix)`` pairs of ``reader`` in file order and their count (None for a stream).

    A stream (``ark:-``) is iterated, never indexed, so memory stays flat in the corpus.
    """
    if reader.is_stream:
        if shard is not None:
            raise W2VError(f"{spec}: --shard needs a file (a stream's length is known only at its end)")
        return iter(reader), None
    keys = select_shard(reader.keys(), shard)  # the same split as featurize and decode use
    return ((uid, reader[uid]) for uid in keys), len(keys)


def _npy_emissions(p: Path, spec: str, tokens: list[str] | None, frame_shift: float | None,
                   shard: tuple[int, int] | None) -> EmissionSource:
    """Emissions in ``.npy`` files: one file, or every ``*.npy`` of a folder in name order."""
    files = [p] if p.suffix == ".npy" else sorted(p.glob("*.npy"))
    if not files:
        raise W2VError(f"{spec}: no .npy files in this folder")
    if not p.exists():
        raise W2VError(f"{spec}: no such file")
    if tokens is None:
        guess = (p if p.is_dir() else p.parent) / "dict.ltr.txt"
        if not guess.is_file():
            raise W2VError(f"{spec}: .npy emissions carry no token list; pass --dict dict.ltr.txt")
        tokens = _tokens_from_dict(str(guess))
    files = select_shard(files, shard)

    def items():
        for f in files:
            try:
                x = np.load(f)
            except (OSError, ValueError) as e:
                raise W2VError(f"{f}: not a NumPy array file ({e})") from None
            yield _npy_uid(f), torch.from_numpy(np.asarray(x, dtype=np.float32))

    return EmissionSource(tokens, frame_shift or DEFAULT_FRAME_SHIFT, items(), len(files))


# ---------------------------------------------------------------------------------------------
# A CTC model over a corpus


def model_emissions(corpus: str, model_spec: str, *, device: str = "cpu", batch_seconds: float | None = None,
                    chunk_seconds: float = 60.0, chunk_overlap: float = 2.0, shard: tuple[int, int] | None = None,
                    skips: SkipLog | None = None, workers: int = 2, int8: bool = False) -> EmissionSource:
    """Run a CTC checkpoint over a corpus through the corpus runner (:mod:`w2vtools.runner`).

    Yields (uid, (T, V) log-probabilities) in the plan's order (length-sorted batches;
    recordings longer than ``chunk_seconds`` in overlapping windows of that length with
    ``chunk_overlap`` seconds of context each side, stitched at frame level, so memory is
    bounded by the window); the source's ``order`` is the corpus order, for outputs
    written in it. Ids are checked before the model loads. An utterance that cannot be
    read, is too short for the model, or whose scores hold NaN/Inf goes to ``skips``
    (named with its reason) and the run goes on; without ``skips`` it is an error.
    ``int8``: the model runs dynamically quantized on the CPU (:func:`~w2vtools.runner.prepare_model`).

    Example:
        >>> src = model_emissions("data/test.tsv", "exp/ctc/checkpoint_best.pt")   # doctest: +SKIP
    """
    check_int8(int8, device)
    utts = corpus_utterances(corpus, shard)
    if check_device(device):
        keep_freed_memory()  # batch after batch of activations reuse the same pages (w2vtools/malloc.py)
    loaded = load_model(model_spec, map_location=device)
    if loaded.task == "downstream":
        raise W2VError(f"{model_spec}: a model on stored features: give --features FEATS instead of a corpus")
    if loaded.task != "ctc" or not loaded.dictionary:
        raise W2VError(f"{model_spec}: not a CTC model (task {loaded.task!r}); decode needs a fine-tuned checkpoint")
    warn_non_finite_weights(loaded.model, model_spec)  # before int8 quantization folds the weights away
    model = prepare_model(loaded.model, device, int8=int8, name=model_spec)
    runner = Runner(model, num_frames=model.num_frames, sample_rate=int(model.sample_rate),
                    frame_shift=float(getattr(model, "frame_shift", DEFAULT_FRAME_SHIFT)), device=device,
                    chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap, batch_seconds=batch_seconds)
    skips = skips if skips is not None else _Raise()

    def items():
        jobs, _ = plan_corpus(utts, runner, skips)
        for u, _, logits in run_corpus(jobs, runner, skips, workers=workers):
            yield u.uid, torch.log_softmax(torch.from_numpy(logits), dim=-1)

    return EmissionSource(list(loaded.dictionary), runner.frame_shift, items(), len(utts),
                          order=[u.uid for u in utts])


class _Raise:
    """A skip log for library callers without one: the first bad utterance is an error."""

    def add(self, uid: str, reason: object) -> None:
        raise W2VError(f"{uid}: {reason}")


# ---------------------------------------------------------------------------------------------
# A downstream model over stored features


def _padded_log_probs(model: DownstreamModel, items: list[tuple[str, torch.Tensor]], device: str):
    """One padded batch of (uid, (T, D) features) through the model; each result cut to its length."""
    longest = max(x.shape[0] for _, x in items)
    source = torch.zeros(len(items), longest, model.input_dim)
    mask = torch.ones(len(items), longest, dtype=torch.bool)
    for row, (_, x) in enumerate(items):
        source[row, : x.shape[0]] = x
        mask[row, : x.shape[0]] = False
    with torch.inference_mode():
        logits, _ = model(source.to(device), mask.to(device) if mask.any() else None)
        lp = torch.log_softmax(logits.float(), dim=-1).cpu()
    for row, (uid, x) in enumerate(items):
        yield uid, lp[row, : x.shape[0]]


def feature_log_probs(model: DownstreamModel, features: str, *, device: str = "cpu", batch_frames: int = 20_000,
                      shard: tuple[int, int] | None = None):
    """Run a downstream model over a feature file: yields ``(uid, (T, V) log-probabilities)`` in file order.

    Utterances are batched up to ``batch_frames`` padded frames; each result is
    cut to its own length (the same as decoding it alone).

    Args:
        model: a :class:`~w2vtools.models.downstream.DownstreamModel` (e.g. ``load_model(path).model``).
        features: any :func:`w2vtools.formats.features.open_features` spec.
        device: where the model runs.
        batch_frames: bound on items x longest item per batch.
        shard: ``(k, n)``: only the k-th (1-based) of n contiguous parts of the ids.

    Raises:
        W2VError: unreadable features or a dimension the model does not take.

    Example:
        >>> for uid, lp in feature_log_probs(load_model("exp/blstm/checkpoint_best.pt").model,
        ...                                  "feats/test.h5"):   # doctest: +SKIP
        ...     print(uid, lp.shape)
    """
    model = model.to(device).eval()
    reader = open_features(features)
    try:
        pairs, _ = _feature_items(reader, features, shard)
        batch: list[tuple[str, torch.Tensor]] = []
        for uid, x in pairs:
            x = torch.as_tensor(x, dtype=torch.float32)
            if x.ndim != 2 or x.shape[1] != model.input_dim:
                raise W2VError(f"{features}: {uid!r} has shape {tuple(x.shape)}; the model takes "
                               f"(T, {model.input_dim}) features")
            if batch and (len(batch) + 1) * max(x.shape[0], max(b.shape[0] for _, b in batch)) > batch_frames:
                yield from _padded_log_probs(model, batch, device)
                batch = []
            batch.append((uid, x))
        if batch:
            yield from _padded_log_probs(model, batch, device)
    finally:
        reader.close()


def downstream_emissions(features: str, model_spec: str, *, device: str = "cpu",
                         shard: tuple[int, int] | None = None) -> EmissionSource:
    """A downstream checkpoint over stored features: ``w2v decode --model M --features FEATS``.

    Raises:
        W2VError: ``model_spec`` is not a downstream model.

    Example:
        >>> src = downstream_emissions("feats/test.h5", "exp/blstm/checkpoint_best.pt")   # doctest: +SKIP
        >>> src.tokens[0], src.frame_shift
        ('<s>', 0.01)
    """
    loaded = load_model(model_spec, map_location=device)
    if loaded.task != "downstream" or not loaded.dictionary:
        raise W2VError(f"{model_spec}: a {loaded.task} model; --features needs a downstream model "
                       "(w2v finetune --features); give a CTC model a corpus instead")
    with open_features(features) as reader:
        # a stream is counted by reading it: leave it for feature_log_probs
        total = None if reader.is_stream else len(select_shard(reader.keys(), shard))
    items = feature_log_probs(loaded.model, features, device=device, shard=shard)
    return EmissionSource(list(loaded.dictionary), loaded.model.frame_shift, items, total)
