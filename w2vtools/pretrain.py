"""Self-supervised pretraining of wav2vec, vq-wav2vec, wav2vec 2.0 and unit BERT (the library side of ``w2v pretrain``).

One call resolves the configuration (preset, YAML, ``--set``), prints it and saves it
as ``SAVE_DIR/config.yaml``, builds the model from its preset, reads the corpora,
and runs :class:`w2vtools.train.trainer.Trainer` with the model's own contrastive
loss. Under ``torchrun`` every process calls it; ranks train on disjoint batches
and only rank 0 writes.

``arch="unit-bert"`` trains vq-wav2vec's BERT on unit files (``w2v quantize``
output) instead of audio: the vocabulary is the training units' (``SAVE_DIR/dict.txt``,
fairseq's format, most frequent first; the checkpoints hold the whole token list),
and the loss is masked-unit prediction (:class:`~w2vtools.train.objectives.MaskedUnitObjective`);
validation reports masked-unit accuracy beside the most-frequent-unit baseline's.

Checkpoints are our model format (:func:`w2vtools.models.loading.load_model`
reads them: ``w2v featurize --model SAVE_DIR/checkpoint_best.pt`` works) with the
trainer state under ``extra["trainer"]``.

Example:
    >>> summary = pretrain("data/train.tsv", "data/valid.tsv", arch="wav2vec2", preset="tiny",
    ...                    save_dir="exp/tiny", sets=["optim.max_update=300"])   # doctest: +SKIP
    >>> summary["valid"]["accuracy"]
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import torch

from w2vtools.errors import W2VError
from w2vtools.formats.corpus import read_corpus
from w2vtools.formats.labels import dictionary_from_counts, read_dictionary, write_dictionary
from w2vtools.formats.units import MASK, read_units, unit_vocabulary
from w2vtools.models.registry import build_model as build, model_class_for
from w2vtools.models.presets import get_preset
from w2vtools.models.token_transformer import TokenTransformer
from w2vtools.models.unit_bert import UnitBertConfig, unit_bert_preset
from w2vtools.train.config import DataConfig, TrainConfig, resolve_config, training_augmentation
from w2vtools.train.data import AudioDataset, stable_seed
from w2vtools.train.launch import TrainingRun, check_model_overrides, start_run
from w2vtools.train.objectives import MaskedUnitObjective, PretrainObjective
from w2vtools.train.rng import seed_everything
from w2vtools.train.units_data import UnitDataset, unit_counts

log = logging.getLogger("w2v.pretrain")

ARCHES = ("wav2vec", "vq-wav2vec", "wav2vec2", "unit-bert")
#: unit BERT fields the command sets from the data
_UNIT_BERT_RESERVED = {"vocab_size": "the training units set it", "padding_idx": "fairseq's <pad> is 1",
                       "causal": "a BERT sees both sides"}


def build_model(cfg: TrainConfig) -> tuple[torch.nn.Module, Any, str]:
    """The model a config describes: (model, model config, family).

    The model preset comes from :func:`w2vtools.models.presets.get_preset`, then
    ``cfg.model.overrides`` replace its fields.

    Raises:
        W2VError: unknown preset or field, or an arch/preset mismatch.

    Example:
        >>> model, mcfg, family = build_model(resolve_config("wav2vec2", "tiny"))
        >>> family
        'wav2vec2'
    """
    arch = cfg.model.arch
    if arch not in ARCHES or arch == "unit-bert":
        raise W2VError(f"unknown audio arch {arch!r} (choose {', '.join(ARCHES[:-1])})")
    try:
        mcfg = get_preset(arch, cfg.model.model_preset)
    except KeyError as e:
        raise W2VError(str(e).strip("'\"")) from None
    check_model_overrides(type(mcfg), cfg.model.overrides)
    try:
        mcfg = dataclasses.replace(mcfg, **cfg.model.overrides)
    except (TypeError, ValueError, W2VError) as e:
        raise W2VError(f"model overrides {cfg.model.overrides}: {e}") from None
    family = getattr(mcfg, "family", arch)
    if family != arch:
        raise W2VError(f"model preset {cfg.model.model_preset!r} is a {family} model, not {arch}")
    model = build(model_class_for(family), mcfg)
    return model, mcfg, family


def pretrain(
    train: str | os.PathLike,
    valid: str | os.PathLike | None,
    *,
    arch: str,
    preset: str,
    save_dir: str | os.PathLike,
    config_file: str | os.PathLike | None = None,
    sets: Sequence[str] = (),
    resume: bool = False,
    device: str | None = None,
    print_config: bool = True,
) -> dict[str, Any]:
    """Pretrain a model; returns the trainer's summary (updates, last validation metrics, best).

    Args:
        train, valid: corpora :func:`~w2vtools.formats.corpus.read_corpus` reads
            (TSV manifest, Kaldi data dir, ``wav.scp``); for ``unit-bert``, unit files.
        arch: ``wav2vec``, ``vq-wav2vec``, ``wav2vec2`` or ``unit-bert``.
        preset: a training preset of :data:`w2vtools.train.config.PRESETS` for ``arch``.
        save_dir: checkpoints, ``config.yaml``, ``log.jsonl``, ``tensorboard/``.
        config_file: YAML overriding the preset.
        sets: ``section.key=value`` overrides, applied last.
        resume: continue from ``save_dir/checkpoint_last.pt`` exactly where it stopped.
        device: ``cpu`` or ``cuda``; None picks CUDA when available.
        print_config: print the resolved configuration (YAML) on stdout.

    Raises:
        W2VError: bad configuration, unreadable corpus, nothing to train on, or
            no checkpoint to resume.
    """
    cfg = resolve_config(arch, preset, config_file=config_file, sets=list(sets))
    run = start_run(cfg, save_dir, resume=resume, device=device)
    run.write_config(print_config=print_config)

    seed_everything(stable_seed(cfg.run.seed, "init"))
    if cfg.model.arch == "unit-bert":
        return _pretrain_unit_bert(train, valid, cfg, run)
    model, _, family = build_model(cfg)
    rate = int(getattr(model, "sample_rate", cfg.data.sample_rate))
    if rate != cfg.data.sample_rate:
        raise W2VError(f"data.sample_rate is {cfg.data.sample_rate} but the {family} model expects {rate} Hz")
    train_set = _audio_dataset(train, cfg.data, cfg.run.seed, "train")
    valid_set = None if valid is None else _audio_dataset(valid, cfg.data, cfg.run.seed, "valid")
    return run.train(model, PretrainObjective(), train_set=train_set, valid_set=valid_set, family=family,
                     task="pretrain")


def _audio_dataset(corpus: str | os.PathLike, d: DataConfig, seed: int, name: str) -> AudioDataset:
    return AudioDataset(read_corpus(corpus), sample_rate=d.sample_rate, min_sample_size=d.min_sample_size,
                        max_sample_size=d.max_sample_size, pad=d.pad, seed=seed, name=name, verify=d.verify,
                        augment=training_augmentation(d) if name == "train" else None)


def unit_bert_config(cfg: TrainConfig, vocab_size: int) -> UnitBertConfig:
    """The unit BERT a config describes, for a vocabulary of ``vocab_size`` tokens.

    Example:
        >>> unit_bert_config(resolve_config("unit-bert", "tiny", sets=["model.layers=1"]), 40).layers
        1
    """
    check_model_overrides(UnitBertConfig, cfg.model.overrides, reserved=_UNIT_BERT_RESERVED,
                          hints=_UNIT_BERT_RESERVED)
    try:
        return unit_bert_preset(cfg.model.model_preset, vocab_size, **cfg.model.overrides)
    except (TypeError, ValueError) as e:
        raise W2VError(f"unit-bert model {cfg.model.model_preset!r} {cfg.model.overrides}: {e}") from None


def _unit_symbols(units: dict[str, list[str]], run: TrainingRun) -> list[str]:
    """The units of the vocabulary, most frequent first: a resumed run's ``dict.txt``, else counted and written."""
    path = run.save_dir / "dict.txt"
    if run.resume and path.is_file():
        return read_dictionary(path)
    counts = unit_counts(units)
    if MASK in counts:
        raise W2VError(f"the training units contain {MASK!r}, the token the masking uses")
    if run.dist_info.is_main:
        write_dictionary(path, counts)
    return [symbol for symbol, _ in dictionary_from_counts(counts)]


def _pretrain_unit_bert(train, valid, cfg: TrainConfig, run: TrainingRun) -> dict[str, Any]:
    """BERT on unit files: vocabulary from the training units, masked-unit prediction."""
    if training_augmentation(cfg.data) is not None:
        raise W2VError(f"{train}: data.speed_perturb and data.noise_snr_db augment audio, and a unit BERT trains "
                       "on units; augment the audio the units are made from, or drop them")
    units = read_units(train)
    valid_units = None if valid is None else read_units(valid)
    tokens = unit_vocabulary(_unit_symbols(units, run))
    mcfg = unit_bert_config(cfg, len(tokens))
    model = TokenTransformer(mcfg)
    d = cfg.data
    max_tokens = min(d.max_sample_size, mcfg.max_positions)

    def dataset(table: dict[str, list[str]], name: str) -> UnitDataset:
        return UnitDataset(table, tokens, max_tokens=max_tokens, min_units=d.min_sample_size, seed=cfg.run.seed,
                           name=name, units_per_second=d.sample_rate)

    objective = MaskedUnitObjective(
        vocab_size=len(tokens), mask_idx=tokens.index(MASK), mask_prob=mcfg.mask_prob, mask_length=mcfg.mask_length,
        leave_unmasked_prob=mcfg.leave_unmasked_prob, random_token_prob=mcfg.random_token_prob,
        most_frequent=4,  # dict.txt is most frequent first, after the 4 specials
    )
    log.info("unit-bert: %d units in the vocabulary (+ 4 specials and <mask>)", len(tokens) - 5)
    return run.train(model, objective, train_set=dataset(units, "train"),
                     valid_set=None if valid_units is None else dataset(valid_units, "valid"),
                     family="unit-bert", task="pretrain", dictionary=tokens)
