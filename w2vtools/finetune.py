"""CTC fine-tuning (the library side of ``w2v finetune``), two routes through one training loop.

* **Audio route** (``--init``): any pretrained or CTC checkpoint
  :func:`~w2vtools.models.loading.load_model` reads (ours, fairseq, Hugging Face,
  a named model) becomes a :class:`~w2vtools.models.ctc.CTCModel`: the encoder,
  dropout and a linear layer over the letter dictionary. As in fairseq's
  ``wav2vec2_asr``: the feature encoder (CNN) stays frozen, the Transformer is frozen
  for the first ``run.freeze_updates`` updates (only the new ``proj`` trains), time
  masking (``mask_prob``) and channel masking (``mask_channel_prob``, spans of 64)
  and layer drop regularize it, and Adam follows the tri-stage schedule (10 % warm-up
  from 0.01 x peak, 40 % hold, 50 % exponential decay to 0.05 x peak). The presets
  ``10m``, ``1h``, ``10h``, ``100h``, ``960h`` carry the published BASE table
  (fairseq ``examples/wav2vec/config/finetuning/base_*.yaml``); ``tiny`` is a CPU run.
  A CTC checkpoint with the same dictionary keeps its output layer (further fine-tuning).
* **Feature route** (``--features``): a CTC acoustic model
  (:class:`~w2vtools.models.downstream.DownstreamModel`, ``--arch conv|blstm``) on
  frozen stored features (``w2v featurize`` output: wav2vec c/z, any wav2vec 2.0
  layer, fbank/MFCC), with per-dimension input normalization measured on the
  training features and stored in the model.

Labels: a TSV's line-aligned ``.ltr`` (or ``.wrd``, letters derived) beside it
(fairseq: ``train.tsv`` -> ``train.ltr``), or a transcript table keyed by utterance id
(Kaldi ``text``, LibriSpeech ``*.trans.txt``, LJ Speech ``metadata.csv``; letters derived
with :func:`~w2vtools.formats.labels.words_to_letters`), or a Kaldi data dir's own
``text``. The dictionary is ``--dict``, else the initial CTC model's, else
``dict.ltr.txt`` beside the training TSV, else counted from the training labels;
it is written to ``SAVE_DIR/dict.ltr.txt``. Symbols outside it are reported with
counts and example utterances and mapped to ``<unk>``.

Validation every ``run.valid_interval`` updates on whatever ``--valid`` names:
loss, greedy (best-path) WER, CER and token error rate; ``checkpoint_best.pt`` is the
lowest WER. Checkpoints are self-contained for decoding (weights, dictionary,
model config): ``w2v decode --model SAVE_DIR/checkpoint_best.pt``.

Example:
    >>> finetune("data/train_1h.tsv", valid="data/dev.tsv", labels="ltr", init="exp/pt/checkpoint_best.pt",
    ...          preset="tiny", save_dir="exp/ft")                                      # doctest: +SKIP
    >>> finetune(None, features="feats/train.h5", labels="data/text", valid_features="feats/test.h5",
    ...          arch="blstm", preset="tiny", save_dir="exp/blstm")                     # doctest: +SKIP
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torchaudio.functional import edit_distance

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.formats.corpus import read_corpus
from w2vtools.formats.labels import (
    SPECIAL_SYMBOLS, count_symbols, ctc_vocabulary, dictionary_from_counts, label_path, read_dictionary, read_labels,
    read_transcripts, words_to_letters,
)
from w2vtools.models.checkpoint import non_finite_weights, read_checkpoint
from w2vtools.models.ctc import CTCConfig, CTCModel
from w2vtools.models.downstream import ARCHES, DownstreamConfig, DownstreamModel
from w2vtools.models.loading import load_model
from w2vtools.models.presets import DOWNSTREAM_PRESETS, downstream_config
from w2vtools.train.checkpoints import find_trainer_state
from w2vtools.train.config import FINETUNE_PRESETS, TrainConfig, apply_dict, resolve_config, training_augmentation
from w2vtools.train.data import AudioDataset, stable_seed
from w2vtools.train.features_data import FeatureDataset
from w2vtools.train.launch import check_model_overrides, start_run
from w2vtools.train.objectives import CTCObjective
from w2vtools.train.rng import seed_everything

log = logging.getLogger("w2v.finetune")

def resolve_finetune_config(
    route: str,
    preset: str,
    *,
    arch: str | None = None,
    config_file: str | os.PathLike | None = None,
    sets: Sequence[str] = (),
) -> TrainConfig:
    """Defaults, the fine-tuning preset, a YAML file, then ``--set`` items.

    ``model.<field>=v`` sets a :class:`~w2vtools.models.ctc.CTCConfig` field (audio
    route) or a :class:`~w2vtools.models.downstream.DownstreamConfig` field (feature route).

    Example:
        >>> cfg = resolve_finetune_config("audio", "10h", sets=["optim.update_freq=8"])
        >>> cfg.optim.lr, cfg.optim.max_update, cfg.model.overrides["mask_channel_prob"], cfg.run.freeze_updates
        (5e-05, 20000, 0.5, 10000)
    """
    table = FINETUNE_PRESETS[route]
    if preset not in table:
        raise W2VError(f"unknown {route}-route preset {preset!r} (known: {', '.join(table)})")
    base = apply_dict(TrainConfig(), copy.deepcopy(table[preset]), f"preset {preset}")
    if arch is not None:
        base.model.arch = arch
    cfg = resolve_config(base=base, config_file=config_file, sets=list(sets))
    _check_model_fields(route, cfg)
    return cfg


def _check_model_fields(route: str, cfg: TrainConfig) -> None:
    if route == "audio":
        if cfg.model.arch != "ctc":
            raise W2VError(f"model.arch {cfg.model.arch!r}: the audio route trains a 'ctc' model "
                           "(--arch conv|blstm goes with --features)")
        check_model_overrides(CTCConfig, cfg.model.overrides,
                              reserved={"vocab_size", "encoder", "encoder_family", "freeze_finetune_updates"},
                              hints={"freeze_finetune_updates": "run.freeze_updates"})
        return
    if cfg.model.arch not in ARCHES:
        raise W2VError(f"--arch {cfg.model.arch!r}: choose {' or '.join(ARCHES)}")
    if cfg.model.model_preset not in DOWNSTREAM_PRESETS[cfg.model.arch]:
        raise W2VError(f"model.model_preset {cfg.model.model_preset!r}: known {', '.join(DOWNSTREAM_PRESETS[cfg.model.arch])}")
    check_model_overrides(DownstreamConfig, cfg.model.overrides,
                          reserved={"vocab_size", "input_dim", "frame_shift", "features", "arch"})


# ---------------------------------------------------------------------------------------------
# Labels and dictionary


def _is_extension(labels: str) -> bool:
    return bool(labels) and labels.isalnum() and len(labels) <= 8 and not os.path.exists(labels)


def _is_tsv(corpus: str | None) -> bool:
    return corpus is not None and os.path.isfile(corpus) and not corpus.endswith(".scp") and corpus != "-"


def label_lines(corpus: str | None, utts, labels: str | None, *, upper: bool = True) -> dict[str, str]:
    """``{uid: space-separated tokens}`` (letters, ``|`` between words) for the utterances.

    Args:
        corpus: the TSV / Kaldi data dir the utterances came from (None on the
            feature route without an audio list).
        utts: the utterances of ``corpus`` (None without one).
        labels: an extension (``ltr``, ``wrd``, or any other token file such as
            ``phn``) of a file line-aligned with the TSV; a ``.ltr``/``.wrd`` path
            line-aligned with it; a transcript table keyed by id (Kaldi ``text``,
            ``*.trans.txt``, ``metadata.csv``); or None for the corpus's own text
            (Kaldi ``text``, or a TSV's ``.wrd``).
        upper: upper-case derived letters (fairseq's LibriSpeech convention).

    Raises:
        W2VError: missing or misaligned label files, or no labels at all.

    Example:
        >>> label_lines("data/train.tsv", read_corpus("data/train.tsv"), "ltr")["0_george_5"]  # doctest: +SKIP
        'Z E R O |'
    """
    def aligned(lines: list[str], what: str, derive: bool) -> dict[str, str]:
        if utts is None or len(lines) != len(utts):
            n = "no" if utts is None else len(utts)
            raise W2VError(f"{what}: {len(lines)} lines but the audio list has {n} rows (must be line-aligned)")
        return {u.uid: (words_to_letters(line, upper=upper) if derive else " ".join(line.split()))
                for u, line in zip(utts, lines)}

    if labels is None:
        if utts is None:
            raise W2VError("--labels is needed (a Kaldi text file keyed by utterance id)")
        missing = [u.uid for u in utts if u.text is None]
        if len(missing) == len(utts):
            raise W2VError(f"{corpus}: has no transcripts; pass --labels ltr (TSV with NAME.ltr beside it) "
                           "or --labels TEXT (Kaldi text keyed by utterance id)")
        return {u.uid: words_to_letters(u.text, upper=upper) for u in utts if u.text is not None}
    if _is_extension(labels):
        if not _is_tsv(corpus):
            raise W2VError(f"--labels {labels}: an extension names a file beside a TSV manifest "
                           f"({corpus or 'no audio list given'} is not one); pass a transcript file instead")
        if not label_path(corpus, labels).is_file():
            raise W2VError(f"{label_path(corpus, labels)}: no such file (--labels {labels} reads it beside {corpus})")
        return aligned(read_labels(corpus, labels), str(label_path(corpus, labels)), derive=labels == "wrd")
    path = Path(labels)
    if not path.exists():
        raise W2VError(f"--labels {labels}: no such file (give an extension such as ltr, or a transcript file)")
    if path.suffix in (".ltr", ".wrd") and path.is_file():
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n").rstrip("\r") for line in f]
        return aligned(lines, str(path), derive=path.suffix == ".wrd")
    return {uid: words_to_letters(text, upper=upper) for uid, text in read_transcripts(path).items()}


def build_symbols(lines: Mapping[str, str]) -> list[str]:
    """Dictionary symbols counted over label lines, most frequent first (``dict.ltr.txt`` order).

    Example:
        >>> build_symbols({"a": "A B |", "b": "B |"})
        ['B', '|', 'A']
    """
    return [s for s, _ in dictionary_from_counts(count_symbols(lines.values()))]


def encode_labels(lines: Mapping[str, str], tokens: Sequence[str], *, name: str = "train",
                  examples: int = 3) -> dict[str, list[int]]:
    """Token ids of each label line; symbols outside ``tokens`` are reported and become ``<unk>``.

    The report names each unknown symbol with its count and example utterance ids
    (fairseq maps them to ``<unk>`` silently). Without an ``<unk>`` token they are dropped.

    Example:
        >>> encode_labels({"u1": "A B |"}, ["<s>", "<pad>", "</s>", "<unk>", "|", "A"])
        {'u1': [5, 3, 4]}
    """
    index = {t: i for i, t in enumerate(tokens)}
    unk = index.get("<unk>")
    counts: collections.Counter = collections.Counter()
    where: dict[str, list[str]] = {}
    out: dict[str, list[int]] = {}
    for uid, line in lines.items():
        ids = []
        for sym in line.split():
            i = index.get(sym)
            if i is None:
                counts[sym] += 1
                if len(where.setdefault(sym, [])) < examples and uid not in where[sym]:
                    where[sym].append(uid)
                if unk is None:
                    continue
                i = unk
            ids.append(i)
        out[uid] = ids
    if counts:
        total = sum(counts.values())
        detail = "; ".join(f"{sym!r} x{n} (e.g. {', '.join(where[sym])})" for sym, n in counts.most_common())
        log.warning("%s: %d symbol occurrences outside the dictionary, %s: %s", name, total,
                    "mapped to <unk>" if unk is not None else "dropped (no <unk> token)", detail)
    return out


def _dictionary_case(tokens: Sequence[str]) -> bool:
    """True (upper-case labels) unless the dictionary's letters are all lower-case."""
    letters = [t for t in tokens if len(t) == 1 and t.isalpha()]
    return not letters or any(t.isupper() for t in letters) or not all(t.islower() for t in letters)


# ---------------------------------------------------------------------------------------------
# Objective: CTC with greedy WER and CER


class FinetuneObjective(CTCObjective):
    """:class:`~w2vtools.train.objectives.CTCObjective` plus the character error rate (``cer``).

    CER is counted on the greedy transcript's characters, words joined by one space
    (so a missed word boundary is one error), against the reference the same way.

    Example:
        >>> obj = FinetuneObjective(dictionary=["<s>", "<pad>", "</s>", "<unk>", "|", "A"])
        >>> obj.metrics({"char_errors": 1, "char_total": 4, "sample_size": 1, "loss": 1.0})["cer"]
        25.0
    """

    def _errors(self, lprobs, input_lengths, targets, target_lengths) -> dict[str, float]:
        stats = super()._errors(lprobs, input_lengths, targets, target_lengths)
        if self.dictionary is None:
            return stats
        best = lprobs.argmax(dim=-1).cpu()
        errors = total = 0
        for i in range(best.shape[0]):
            path = torch.unique_consecutive(best[i, : int(input_lengths[i])]).tolist()
            hyp = " ".join(self._words([t for t in path if t not in self.ignore_tokens]))
            ref = " ".join(self._words([t for t in targets[i, : int(target_lengths[i])].tolist()
                                        if t not in self.ignore_tokens]))
            errors += edit_distance(list(ref), list(hyp))
            total += len(ref)
        stats.update({"char_errors": float(errors), "char_total": float(total)})
        return stats

    def metrics(self, stats: dict[str, float]) -> dict[str, float]:
        out = super().metrics(stats)
        if stats.get("char_total", 0) > 0:
            out["cer"] = 100.0 * stats["char_errors"] / stats["char_total"]
        return out


# ---------------------------------------------------------------------------------------------
# Models


_UNUSED_IN_CTC = ("quantizer.", "project_q.", "final_proj.", "target_glu.")


def build_ctc_model(init, tokens: list[str] | None, cfg: TrainConfig):
    """The CTC model to fine-tune from ``init``: (CTCModel, encoder family, tokens, init source).

    ``init`` is a checkpoint spec or an already loaded
    :class:`~w2vtools.models.checkpoint.LoadedModel`.

    A pretrained encoder gets a new output layer over ``tokens``. A CTC model keeps
    its output layer when ``tokens`` is None or equals its dictionary; otherwise a
    new layer replaces it (logged). Pretraining-only parts (quantizer, projections)
    are not trained.

    Raises:
        W2VError: ``init`` is unreadable or a downstream (feature) model.
    """
    loaded = load_model(init) if isinstance(init, (str, os.PathLike)) else init
    if not isinstance(init, (str, os.PathLike)):
        init = "--init"
    if loaded.task == "downstream":
        raise W2VError(f"{init}: a model on stored features; continue it with --features (and --init {init})")
    old_head = None
    if loaded.task == "ctc":
        encoder = loaded.model.encoder
        if tokens is None or list(tokens) == list(loaded.dictionary or []):
            tokens = list(loaded.dictionary or [])
            old_head = loaded.model.proj
        else:
            log.warning("%s: its dictionary (%d tokens) differs from the one given (%d): new output layer",
                        init, len(loaded.dictionary or []), len(tokens))
    else:
        encoder = loaded.model
    if not tokens:
        raise W2VError("no dictionary: pass --dict dict.ltr.txt")
    family = loaded.family
    overrides = dict(cfg.model.overrides)
    ctc_cfg = CTCConfig(vocab_size=len(tokens), encoder_family=family,
                        freeze_finetune_updates=cfg.run.freeze_updates, **overrides)
    model = CTCModel(encoder, len(tokens), ctc_cfg)
    if old_head is not None:
        model.proj.load_state_dict(old_head.state_dict())
        log.info("%s: continuing its CTC output layer (%d tokens)", init, len(tokens))
    _freeze_pretraining_parts(model)
    model.train()
    return model, family, tokens, loaded.source


def _freeze_pretraining_parts(model) -> None:
    """The quantizer and contrastive projections get no gradient in CTC training: leave them out."""
    for name, p in model.encoder.named_parameters():
        if name.startswith(_UNUSED_IN_CTC):
            p.requires_grad_(False)


def _plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, (list, tuple)):
            out[str(k)] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[str(k)] = str(v)
    return out


def feature_family(attrs: Mapping[str, Any]) -> str:
    """What produced the features, from the file's attributes (``fbank``, ``wav2vec2``...)."""
    return str(attrs.get("family") or attrs.get("model") or "features")


# ---------------------------------------------------------------------------------------------
# The command


def _write_dictionary(path: Path, tokens: Sequence[str], counts: Mapping[str, int]) -> None:
    symbols = list(tokens[4:]) if tuple(tokens[:4]) == SPECIAL_SYMBOLS else [t for t in tokens if t not in SPECIAL_SYMBOLS]
    with atomic_write(path) as f:
        for s in symbols:  # the model's order, which is what matters for the output layer
            f.write(f"{s} {int(counts.get(s, 0))}\n")


# settings a resumed run may change freely (or that finetune derives from the data)
_RUN_ONLY = ("stop_at_update", "threads", "sample_rate", "num_workers", "tensorboard", "verify")


def _check_resume_config(cfg: TrainConfig, last: Path) -> None:
    data = read_checkpoint(last)
    if data is None:
        raise W2VError(f"{last}: not a w2v checkpoint")
    saved = find_trainer_state(data, str(last)).get("config") or {}
    now = cfg.to_dict()
    diffs = [f"{sec}.{k}: {saved[sec].get(k)!r} -> {v!r}" for sec, body in now.items() if sec in saved
             for k, v in body.items() if saved[sec].get(k) != v and k not in _RUN_ONLY]
    if diffs:
        log.warning("resuming with settings that differ from the saved run: %s", "; ".join(diffs))


def finetune(
    train: str | os.PathLike | None,
    *,
    save_dir: str | os.PathLike,
    preset: str,
    valid: str | os.PathLike | None = None,
    labels: str | None = "ltr",
    valid_labels: str | None = None,
    dict_path: str | os.PathLike | None = None,
    init: str | None = None,
    features: str | None = None,
    valid_features: str | None = None,
    arch: str | None = None,
    config_file: str | os.PathLike | None = None,
    sets: Sequence[str] = (),
    resume: bool = False,
    device: str | None = None,
    print_config: bool = True,
) -> dict[str, Any]:
    """Fine-tune a CTC model; returns the trainer's summary (updates, last validation metrics, best WER).

    The shared core: labels and dictionary, the run (:mod:`w2vtools.train.launch`),
    the CTC objective. The route's own part, its model and datasets, comes from
    :func:`_audio_route` or :func:`_feature_route`.

    Args:
        train: the training audio list (TSV, Kaldi data dir, wav.scp); on the
            feature route optional (it then only names utterances for ``--labels ltr``).
        save_dir: checkpoints, ``config.yaml``, ``dict.ltr.txt``, ``log.jsonl``, ``tensorboard/``.
        preset: a recipe of :data:`w2vtools.train.config.FINETUNE_PRESETS` for the route.
        valid: the validation audio list (same kinds); optional.
        labels: see :func:`label_lines` (default ``ltr``: ``TRAIN.ltr``).
        valid_labels: labels of ``valid``; default: the same extension beside the
            valid TSV, the valid data dir's text, or the same transcript file.
        dict_path: a ``dict.ltr.txt``; default: see the module docstring.
        init: the starting checkpoint (required on the audio route; on the feature
            route a downstream model to continue).
        features, valid_features: feature specs (feature route).
        arch: ``blstm`` or ``conv`` (feature route; default from the preset: blstm).
        config_file, sets: YAML and ``section.key=value`` overrides.
        resume: continue ``save_dir/checkpoint_last.pt`` exactly where it stopped.
        device: ``cpu`` or ``cuda``; None picks CUDA when available.
        print_config: print the resolved configuration (YAML) on stdout.

    Raises:
        W2VError: bad arguments or configuration, unreadable inputs, labels that do
            not match, nothing to train on, or nothing to resume.
    """
    route = "features" if features is not None else "audio"
    _check_route_arguments(route, train=train, valid=valid, init=init, resume=resume,
                           valid_features=valid_features, arch=arch)
    train = None if train is None else str(train)
    valid = None if valid is None else str(valid)
    cfg = resolve_finetune_config(route, preset, arch=arch, config_file=config_file, sets=list(sets))
    run = start_run(cfg, save_dir, resume=resume, device=device)
    if resume:
        _check_resume_config(cfg, run.last)

    data = _labelled_data(train, valid, labels, valid_labels, want_valid=valid is not None or valid_features is not None)
    resumed = load_model(str(run.last)) if resume else None
    init_loaded = load_model(init) if init is not None and resumed is None else None
    if init_loaded is not None:
        _check_finite(init_loaded.model, init)
    tokens = _dictionary(data.train_lines, resumed=resumed, init_loaded=init_loaded, dict_path=dict_path,
                         labels=labels, train=train)
    counts = data.encode(tokens)
    run.write_config(print_config=print_config)
    if run.dist_info.is_main:
        _write_dictionary(run.save_dir / "dict.ltr.txt", tokens, counts)

    seed_everything(stable_seed(cfg.run.seed, "init"))
    if route == "audio":
        setup = _audio_route(cfg, data, tokens, resumed=resumed, init_loaded=init_loaded, last=run.last)
    else:
        setup = _feature_route(cfg, data, tokens, resumed=resumed, init_loaded=init_loaded, init=init,
                               features=features, valid_features=valid_features)
    objective = FinetuneObjective(sentence_avg=True, dictionary=tokens, word_separator="|",
                                  ignore_tokens=_ignored(tokens))
    return run.train(setup.model, objective, train_set=setup.train_set, valid_set=setup.valid_set,
                     family=setup.family, task=setup.task, dictionary=tokens,
                     feature_encoder_prefix=setup.encoder_prefix)


def _check_finite(model: torch.nn.Module, init: str) -> None:
    """Refuse an ``--init`` model with NaN or Inf weights: every update would be skipped as non-finite.

    Example:
        >>> _check_finite(torch.nn.Linear(2, 2), "init.pt")
    """
    bad = non_finite_weights(model)
    if bad:
        raise W2VError(f"{init}: {len(bad)} weight tensors hold NaN or Inf (e.g. {bad[0]}); "
                       "cannot fine-tune from it")


def _check_route_arguments(route: str, *, train, valid, init, resume: bool, valid_features, arch) -> None:
    """Refuse arguments that do not go with the route."""
    if route == "audio":
        if train is None:
            raise W2VError("give the training audio list (TSV, Kaldi data dir or wav.scp), or --features")
        if init is None and not resume:
            raise W2VError("--init is needed: the pretrained (or CTC) checkpoint to fine-tune")
        if valid_features is not None or arch is not None:
            raise W2VError("--valid-features and --arch go with --features (the stored-feature route)")
    elif valid is not None and valid_features is None:
        raise W2VError("--valid names audio; on the feature route give --valid-features (and --valid for "
                       "its labels, if they sit beside a TSV)")


@dataclasses.dataclass
class _LabelledData:
    """The utterances and label lines of both sets; :meth:`encode` adds their token ids."""

    train_utts: list | None
    valid_utts: list | None
    train_lines: dict[str, str]
    valid_lines: dict[str, str] | None
    train_targets: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    valid_targets: dict[str, list[int]] | None = None

    def encode(self, tokens: list[str]) -> collections.Counter:
        """Token ids of both sets over ``tokens`` (lower-cased labels for a lower-case dictionary);
        the training symbol counts."""
        if not _dictionary_case(tokens):
            # a lower-case dictionary (some Hugging Face vocabularies): derive lower-case letters
            self.train_lines = {u: s.lower() for u, s in self.train_lines.items()}
            if self.valid_lines is not None:
                self.valid_lines = {u: s.lower() for u, s in self.valid_lines.items()}
        self.train_targets = encode_labels(self.train_lines, tokens, name="train")
        if self.valid_lines is not None:
            self.valid_targets = encode_labels(self.valid_lines, tokens, name="valid")
        return count_symbols(self.train_lines.values())


def _labelled_data(train: str | None, valid: str | None, labels: str | None, valid_labels: str | None, *,
                   want_valid: bool) -> _LabelledData:
    """Read both audio lists and their labels (the valid labels default to the training ones' kind)."""
    train_utts = read_corpus(train) if train is not None else None
    train_lines = label_lines(train, train_utts, labels)
    if valid_labels is None and labels is not None and not _is_extension(labels):
        if not (Path(labels).suffix in (".ltr", ".wrd")):
            valid_labels = labels  # a transcript table keyed by id may cover both sets
    if valid_labels is None and labels is not None and _is_extension(labels):
        valid_labels = labels
    valid_utts = read_corpus(valid) if valid is not None else None
    if want_valid and valid_labels is None and valid_utts is None:
        raise W2VError("--valid-labels is needed for --valid-features (a transcript file keyed by utterance id)")
    valid_lines = label_lines(valid, valid_utts, valid_labels) if want_valid else None
    return _LabelledData(train_utts, valid_utts, train_lines, valid_lines)


def _dictionary(train_lines: Mapping[str, str], *, resumed, init_loaded, dict_path, labels: str | None,
                train: str | None) -> list[str]:
    """The output tokens: the resumed model's, ``--dict``, the initial CTC model's, ``dict.*.txt``
    beside the training TSV, else counted over the training labels."""
    if resumed is not None:
        return list(resumed.dictionary or [])
    if dict_path is not None:
        return ctc_vocabulary(read_dictionary(dict_path))
    if init_loaded is not None and init_loaded.task in ("ctc", "downstream") and init_loaded.dictionary:
        return list(init_loaded.dictionary)
    if labels is not None and _is_extension(labels) and _is_tsv(train):
        beside = label_path(train, labels).with_name(f"dict.{'ltr' if labels == 'wrd' else labels}.txt")
        if beside.is_file():
            tokens = ctc_vocabulary(read_dictionary(beside))
            log.info("dictionary: %s (%d tokens)", beside, len(tokens))
            return tokens
    tokens = ctc_vocabulary(build_symbols(train_lines))
    log.info("dictionary: %d symbols counted over the training labels", len(tokens) - 4)
    return tokens


@dataclasses.dataclass
class _RouteSetup:
    """What a route contributes to the shared core: the model and its data."""

    model: torch.nn.Module
    family: str
    task: str
    train_set: Any
    valid_set: Any
    encoder_prefix: str  # parameter-name prefix of the feature encoder (run.freeze_feature_encoder)


def _audio_route(cfg: TrainConfig, data: _LabelledData, tokens: list[str], *, resumed, init_loaded,
                 last: Path) -> _RouteSetup:
    """A CTC model over a pretrained encoder (or the resumed one), on audio."""
    if resumed is not None:
        if resumed.task != "ctc":
            raise W2VError(f"{last}: not a CTC model (task {resumed.task})")
        model, family = resumed.model, resumed.family
        _freeze_pretraining_parts(model)  # the same parameters trained as in the interrupted run
        model.train()
    else:
        model, family, tokens_used, _ = build_ctc_model(init_loaded, tokens, cfg)
        if tokens_used != tokens:
            raise W2VError("internal: dictionary changed while building the model")
    d = cfg.data
    rate = int(model.sample_rate)
    if rate != d.sample_rate:
        log.info("data.sample_rate: %d Hz (the model's rate)", rate)
        d.sample_rate = rate

    def dataset(utts, targets, name: str) -> AudioDataset:
        return AudioDataset(utts, sample_rate=rate, min_sample_size=d.min_sample_size,
                            max_sample_size=d.max_sample_size, pad=True, labels=targets, seed=cfg.run.seed, name=name,
                            verify=d.verify, augment=training_augmentation(d) if name == "train" else None)

    valid_set = None if data.valid_utts is None else dataset(data.valid_utts, data.valid_targets, "valid")
    return _RouteSetup(model, family, "ctc", dataset(data.train_utts, data.train_targets, "train"), valid_set,
                       encoder_prefix="encoder.feature_extractor.")


def _feature_route(cfg: TrainConfig, data: _LabelledData, tokens: list[str], *, resumed, init_loaded, init,
                   features: str, valid_features: str | None) -> _RouteSetup:
    """A downstream CTC model (new, continued or resumed) on stored features."""
    d = cfg.data
    if training_augmentation(d) is not None:
        raise W2VError(f"{features}: data.speed_perturb and data.noise_snr_db augment audio, and this run trains "
                       "on stored features; augment the audio before featurizing, or drop them")
    train_set = FeatureDataset(features, data.train_targets, min_frames=d.min_sample_size,
                               max_frames=d.max_sample_size, name="train")
    valid_set = None
    if valid_features is not None:
        valid_set = FeatureDataset(valid_features, data.valid_targets, min_frames=d.min_sample_size,
                                   max_frames=d.max_sample_size, name="valid")
        if valid_set.dim != train_set.dim:
            raise W2VError(f"{valid_features}: {valid_set.dim}-dimensional features, training ones are "
                           f"{train_set.dim}-dimensional")
    d.sample_rate = max(1, int(round(train_set.frame_rate)))  # "samples" are frames here
    if resumed is not None:
        model = resumed.model
    elif init_loaded is not None:
        model = _continued_downstream(init_loaded, init, tokens, train_set.dim, features)
    else:
        try:
            mcfg = downstream_config(cfg.model.arch, cfg.model.model_preset, input_dim=train_set.dim,
                                     vocab_size=len(tokens), frame_shift=train_set.frame_shift,
                                     features=_plain_attrs(train_set.attrs), **cfg.model.overrides)
        except (TypeError, ValueError) as e:
            raise W2VError(f"model settings: {e}") from None
        model = DownstreamModel(mcfg)
        model.set_normalization(train_set.mean, train_set.std)
    model.train()
    return _RouteSetup(model, feature_family(train_set.attrs), "downstream", train_set, valid_set,
                       encoder_prefix="\0")  # nothing to freeze


def _continued_downstream(loaded, init: str, tokens: list[str], dim: int, features: str) -> torch.nn.Module:
    """The ``--init`` downstream model, once it fits these features and this dictionary."""
    if loaded.task != "downstream":
        raise W2VError(f"{init}: a {loaded.task} model; the feature route continues downstream models only")
    model = loaded.model
    if model.cfg.input_dim != dim:
        raise W2VError(f"{init}: takes {model.cfg.input_dim}-dimensional features, {features} has {dim}")
    if list(loaded.dictionary or []) != tokens:
        raise W2VError(f"{init}: its dictionary differs from this run's")
    return model


def _ignored(tokens: Sequence[str]) -> tuple[int, ...]:
    """Token ids left out of error counting: blank (0) and the sequence markers."""
    return tuple(sorted({0} | {i for i, t in enumerate(tokens) if t in ("<pad>", "</s>", "<s>")}))
