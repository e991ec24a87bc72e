"""Self-supervised pretraining of wav2vec, vq-wav2vec and wav2vec 2.0 (the library side of ``w2v pretrain``).

One call resolves the configuration (preset, YAML, ``--set``), prints it and saves it
as ``SAVE_DIR/config.yaml``, builds the model from its preset, reads the corpora,
and runs :class:`w2vtools.train.trainer.Trainer` with the model's own contrastive
loss. Under ``torchrun`` every process calls it; ranks train on disjoint batches
and only rank 0 writes.

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
from w2vtools.models.registry import build_model as build, model_class_for
from w2vtools.models.presets import get_preset
from w2vtools.train.config import DataConfig, TrainConfig, resolve_config
from w2vtools.train.data import AudioDataset, stable_seed
from w2vtools.train.launch import check_model_overrides, start_run
from w2vtools.train.objectives import PretrainObjective
from w2vtools.train.rng import seed_everything

log = logging.getLogger("w2v.pretrain")

ARCHES = ("wav2vec", "vq-wav2vec", "wav2vec2")


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
    if arch not in ARCHES:
        raise W2VError(f"unknown arch {arch!r} (choose {', '.join(ARCHES)})")
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
            (TSV manifest, Kaldi data dir, ``wav.scp``).
        arch: ``wav2vec``, ``vq-wav2vec`` or ``wav2vec2``.
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
                        max_sample_size=d.max_sample_size, pad=d.pad, seed=seed, name=name, verify=d.verify)
