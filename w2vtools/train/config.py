"""Training configurations: dataclasses, published recipes as presets, YAML and ``key=value`` overrides.

A run is described by one :class:`TrainConfig`; its sections are

* ``model``: the architecture (``arch``), the model preset it starts from
  (``model_preset``, a name of :mod:`w2vtools.models.presets`) and field
  overrides on that model config (``overrides``: e.g. ``encoder_layers: 4``);
* ``data``: sample rate, batch size in samples, crop and filter sizes, workers;
* ``optim``: optimizer, learning-rate schedule, clipping, gradient accumulation;
* ``run``: seed, logging/validation/checkpoint intervals, mixed precision,
  guards, best-checkpoint metric, freezing (for fine-tuning).

The recipes: :data:`PRESETS` (pretraining, by arch) and :data:`FINETUNE_PRESETS`
(fine-tuning, by route). A recipe names a model preset and overrides only the
model fields that differ from it.

Resolution order: the dataclass defaults, then the preset, then a YAML file,
then ``--set section.key=value`` overrides (values parsed as YAML, so
``--set optim.betas=[0.9,0.98]`` and ``--set run.amp=bf16`` work).

Example:
    >>> cfg = resolve_config("wav2vec2", "base", sets=["optim.update_freq=8"])
    >>> cfg.optim.lr, cfg.optim.update_freq, cfg.data.max_samples_per_batch
    (0.0005, 8, 1400000)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from w2vtools.errors import W2VError
from w2vtools.models.registry import plain

log = logging.getLogger("w2v.train")


@dataclass
class ModelSection:
    """Which model to build.

    Attributes:
        arch: ``wav2vec``, ``vq-wav2vec``, ``wav2vec2`` or ``unit-bert`` (finetune adds its own).
        model_preset: a preset name of :mod:`w2vtools.models.presets` for ``arch``.
        overrides: model-config fields replaced on top of the preset.
    """

    arch: str = "wav2vec2"
    model_preset: str = "base"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """How audio becomes batches.

    Attributes:
        sample_rate: audio is resampled to this rate in the loader workers.
        max_samples_per_batch: a batch's size bound: items x longest (cropped) item
            (fairseq's ``max_tokens``), per process and micro-batch.
        max_batch_size: at most this many items in a batch (0 = no limit).
        max_sample_size: crop length cap (pretraining); the length limit with ``pad``.
        min_sample_size: utterances shorter than this are left out (and counted).
        pad: pad batches to their longest item (fine-tuning) instead of cropping
            each batch to its shortest item (pretraining).
        num_workers: DataLoader worker processes reading and resampling audio.
        verify: before the first update, decode every utterance in full instead of
            reading its header only (``--verify``; :func:`w2vtools.train.data.check_utterances`).
        speed_perturb: speed factors for the training audio, one drawn per utterance
            (e.g. ``[0.9, 1.0, 1.1]``; empty: none). See :mod:`w2vtools.augment`.
        noise_snr_db: ``[low, high]``: white noise added to the training audio at an SNR
            drawn in this range (dB; empty: none), to a ``noise_prob`` share of the utterances.
            Validation audio is never augmented.
    """

    sample_rate: int = 16000
    max_samples_per_batch: int = 1_400_000
    max_batch_size: int = 0
    max_sample_size: int = 250_000
    min_sample_size: int = 32_000
    pad: bool = False
    num_workers: int = 2
    verify: bool = False
    speed_perturb: list = field(default_factory=list)
    noise_snr_db: list = field(default_factory=list)
    noise_prob: float = 1.0


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    ``adam`` is Adam with decoupled weight decay, as fairseq's ``adam`` optimizer is.
    See :mod:`w2vtools.train.schedules` for the schedule fields.
    """

    optimizer: str = "adam"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 0.0
    update_freq: int = 1
    max_update: int = 400_000
    max_epoch: int = 0
    schedule: str = "polynomial"
    warmup_updates: int = 32_000
    warmup_init_lr: float = 0.0
    end_lr: float = 0.0
    power: float = 1.0
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05


@dataclass
class RunConfig:
    """Everything about running the loop that is not the model, data or optimizer.

    Attributes:
        seed: seeds the batch order, crops, masks, negatives and dropout.
        log_interval: one log line every this many updates.
        valid_interval: validate every this many updates (0 = only at the end).
        save_interval: keep ``checkpoint_<update>.pt`` every this many updates (0 = never).
        keep_last: how many ``checkpoint_<update>.pt`` files to keep (0 = all).
        amp: ``none``, ``bf16`` or ``fp16`` (fp16 uses a dynamic loss scaler); GPU only.
        max_nonfinite: stop after this many non-finite updates in a row.
        best_metric: validation metric that selects ``checkpoint_best.pt``.
        maximize_best: whether larger ``best_metric`` is better (accuracy) or not (loss, wer).
        tie_break_metric: between validations with equal ``best_metric``, this one decides
            (same direction; "" = the earlier stays best). WER on short utterances is coarse:
            a model that only says wrong words stays at 100 % while its character error
            falls, and without a tie-break patience would stop it there.
        patience: stop after this many validations in a row without a new best ``best_metric``
            (0 = never): with ``valid_interval``, train to the best on the validation set.
        stop_at_update: end the run after this update without changing the schedule
            (a time-boxed job; resume later with ``--resume``).
        threads: torch intra-op threads per process (0 = leave torch's default).
        freeze_feature_encoder: never update the CNN feature encoder.
        freeze_params: never update the parameters whose name starts with one of these
            prefixes (ESPnet's ``--freeze_param``), e.g.
            ``["encoder.feature_extractor.conv_layers.0."]``: the CNN's first layer, so
            autograd also skips the second layer's input gradient, the costliest part of a
            small model's backward on audio.
        freeze_updates: for this many updates, train only parameters whose name
            starts with one of ``train_during_freeze`` (fine-tuning's frozen Transformer).
        train_during_freeze: the parameter-name prefixes trained while frozen.
        collapse_warn_after: collapse guards stay quiet before this update
            (0 = after the warm-up).
        collapse_code_fraction: warn when the code perplexity stays below this fraction of
            the code book (groups x entries; at least 2 codes per group) for 3 log intervals:
            few codes in use (0 = only the 2-per-group floor).
        collapse_peak_fraction: warn when the code perplexity stays below this fraction of
            its highest value since the warm-up for 3 log intervals: a code book that was
            in use and is collapsing, which a climbing accuracy hides (0 = off).
        tensorboard: also write TensorBoard event files under ``save_dir/tensorboard``.
    """

    seed: int = 1
    log_interval: int = 200
    valid_interval: int = 10_000
    save_interval: int = 25_000
    keep_last: int = 1
    amp: str = "none"
    max_nonfinite: int = 20
    best_metric: str = "loss"
    maximize_best: bool = False
    tie_break_metric: str = ""
    patience: int = 0
    stop_at_update: int = 0
    threads: int = 0
    freeze_feature_encoder: bool = False
    freeze_params: list[str] = field(default_factory=list)
    freeze_updates: int = 0
    train_during_freeze: list[str] = field(default_factory=list)
    collapse_warn_after: int = 0
    collapse_code_fraction: float = 0.05
    collapse_peak_fraction: float = 0.25
    tensorboard: bool = True


@dataclass
class TrainConfig:
    """The whole resolved configuration of a training run."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists/numbers/strings (YAML- and ``weights_only``-safe)."""
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------------------------
# Published recipes. Each preset is a nested dict applied on top of the defaults above.
# Batch sizes are per process; `--update-freq` (optim.update_freq) emulates more GPUs.

# What the published recipes of one family share; each recipe below states only what differs.
_W2V2_OPTIM = {"betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01, "schedule": "polynomial"}
_W2V1_OPTIM = {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "schedule": "cosine", "warmup_init_lr": 1e-7}
_PUBLISHED_RUN = {"log_interval": 200, "save_interval": 25_000, "amp": "fp16"}
# The few-minute CPU recipes on a small corpus (FSDD digits).
_TINY_DATA = {"max_samples_per_batch": 96_000, "max_sample_size": 16_000, "min_sample_size": 4_000, "num_workers": 1}
_TINY_RUN = {"log_interval": 10, "valid_interval": 50, "save_interval": 100, "keep_last": 2, "amp": "none"}


def _model(arch: str, preset: str, **overrides) -> dict:
    return {"arch": arch, "model_preset": preset, "overrides": overrides}


_W2V2_BASE = {
    # fairseq examples/wav2vec/config/pretraining/wav2vec2_base_librispeech.yaml
    # (Baevski et al. 2020): 64 GPUs x 1.4 M samples, crops <= 250k, 400k updates.
    # Its published model values (loss weights [0.1, 10]) are the BASE model preset's.
    "model": _model("wav2vec2", "base"),
    "data": {"max_samples_per_batch": 1_400_000, "max_sample_size": 250_000, "min_sample_size": 32_000},
    "optim": {**_W2V2_OPTIM, "lr": 5e-4, "max_update": 400_000, "warmup_updates": 32_000},
    "run": {**_PUBLISHED_RUN, "keep_last": 1},
}

_W2V2_LARGE = {
    # fairseq examples/wav2vec/config/pretraining/wav2vec2_large_librivox.yaml (LV-60k):
    # 128 GPUs x 1.2 M samples, crops <= 320k, layer norm, normalized input, lr 5e-3 as
    # released (the paper's LS-960 LARGE used 3e-4: --set optim.lr=3e-4), temperature 2 -> 0.1.
    # Its published model values (loss weights [0.1, 0]) are the LARGE model preset's.
    "model": _model("wav2vec2", "large"),
    "data": {"max_samples_per_batch": 1_200_000, "max_sample_size": 320_000, "min_sample_size": 32_000},
    "optim": {**_W2V2_OPTIM, "lr": 5e-3, "max_update": 1_000_000, "warmup_updates": 32_000},
    "run": {**_PUBLISHED_RUN, "keep_last": 1},
}

_W2V2_TINY = {
    # 2 small Transformer layers. A high peak lr and a light diversity weight let the tiny model
    # leave the log2(K+1) plateau within ~100 updates on FSDD (0.1 keeps it there for hundreds).
    "model": _model("wav2vec2", "tiny", diversity_weight=0.05, latent_temp=[2.0, 0.5, 0.995]),
    "data": _TINY_DATA,
    "optim": {**_W2V2_OPTIM, "lr": 5e-3, "max_update": 300, "warmup_updates": 15, "clip_norm": 10.0},
    "run": _TINY_RUN,
}

_WAV2VEC_LARGE = {
    # fairseq examples/wav2vec/README.md "Train a wav2vec model" (Schneider et al. 2019):
    # cosine 1e-7 -> 5e-3 over 500 warm-up updates, down to 1e-6; 1.5 M samples, crops 150k.
    "model": _model("wav2vec", "large"),
    "data": {"max_samples_per_batch": 1_500_000, "max_sample_size": 150_000, "min_sample_size": 0},
    "optim": {**_W2V1_OPTIM, "lr": 5e-3, "max_update": 400_000, "warmup_updates": 500, "end_lr": 1e-6},
    "run": _PUBLISHED_RUN,
}

_VQ_WAV2VEC_GUMBEL = {
    # fairseq examples/wav2vec/README.md "Train a gumbel vq-wav2vec model" (Baevski et al. 2019):
    # cosine 1e-7 -> 1e-5 over 1000 warm-up updates, down to 1e-6; 300k samples, crops 150k.
    "model": _model("vq-wav2vec", "gumbel"),
    "data": {"max_samples_per_batch": 300_000, "max_sample_size": 150_000, "min_sample_size": 0},
    "optim": {**_W2V1_OPTIM, "lr": 1e-5, "max_update": 400_000, "warmup_updates": 1000, "end_lr": 1e-6},
    "run": {**_PUBLISHED_RUN, "seed": 2},
}
_VQ_WAV2VEC_KMEANS = {**_VQ_WAV2VEC_GUMBEL, "model": _model("vq-wav2vec", "kmeans")}

_WAV2VEC_TINY = {
    "model": _model("wav2vec", "tiny"),
    "data": _TINY_DATA,
    "optim": {**_W2V1_OPTIM, "lr": 2e-3, "max_update": 300, "warmup_updates": 30, "end_lr": 1e-5, "clip_norm": 10.0},
    "run": _TINY_RUN,
}
_VQ_WAV2VEC_TINY = {**_WAV2VEC_TINY, "model": _model("vq-wav2vec", "gumbel-tiny", vq_temp=[2.0, 0.5, 0.995])}
_VQ_WAV2VEC_KMEANS_TINY = {**_WAV2VEC_TINY, "model": _model("vq-wav2vec", "kmeans-tiny")}

# BERT on vq-wav2vec units (Baevski et al. 2020, vq-wav2vec, section 4.2): RoBERTa BASE, 3072 tokens
# per GPU on 128 GPUs (--update-freq 128 on one), warm-up over 10k updates to 1e-5, then linear decay
# over 250k. Units come 100 a second (data.sample_rate: units, for the audio-seconds/s log), a row is
# at most 512 positions (data.max_sample_size), a batch 3072 of them (data.max_samples_per_batch).
_UNIT_BERT_DATA = {"sample_rate": 100, "max_samples_per_batch": 3072, "max_sample_size": 512, "min_sample_size": 1,
                   "pad": True, "num_workers": 0}
_UNIT_BERT_BASE = {
    "model": _model("unit-bert", "base"),
    "data": _UNIT_BERT_DATA,
    "optim": {**_W2V2_OPTIM, "lr": 1e-5, "max_update": 250_000, "warmup_updates": 10_000},
    "run": {**_PUBLISHED_RUN, "keep_last": 1, "best_metric": "accuracy", "maximize_best": True},
}
# FSDD-sized: ~2700 utterances of ~50 units, ~45 batches an epoch; a few CPU minutes.
_UNIT_BERT_TINY = {
    "model": _model("unit-bert", "tiny"),
    "data": _UNIT_BERT_DATA,
    "optim": {**_W2V2_OPTIM, "lr": 1e-3, "max_update": 600, "warmup_updates": 60, "clip_norm": 1.0},
    "run": {**_TINY_RUN, "valid_interval": 100, "save_interval": 200, "best_metric": "accuracy",
            "maximize_best": True},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "wav2vec2": {"base": _W2V2_BASE, "large": _W2V2_LARGE, "tiny": _W2V2_TINY},
    "wav2vec": {"large": _WAV2VEC_LARGE, "tiny": _WAV2VEC_TINY},
    "vq-wav2vec": {
        "gumbel": _VQ_WAV2VEC_GUMBEL,
        "kmeans": _VQ_WAV2VEC_KMEANS,
        "tiny": _VQ_WAV2VEC_TINY,
        "kmeans-tiny": _VQ_WAV2VEC_KMEANS_TINY,
    },
    "unit-bert": {"base": _UNIT_BERT_BASE, "tiny": _UNIT_BERT_TINY},
}


# ---------------------------------------------------------------------------------------------
# Fine-tuning recipes (``w2v finetune``), by route. The model section names the task's model:
# ``ctc`` (overrides are CTCConfig fields) or ``blstm``/``conv`` with a downstream model preset.


_FT_OPTIM = {
    # fairseq fine-tuning: Adam (0.9, 0.98), eps 1e-8, no weight decay, no clipping, tri-stage.
    "optimizer": "adam",
    "betas": [0.9, 0.98],
    "eps": 1e-8,
    "weight_decay": 0.0,
    "clip_norm": 0.0,
    "schedule": "tri_stage",
    "phase_ratio": [0.1, 0.4, 0.5],
    "init_lr_scale": 0.01,
    "final_lr_scale": 0.05,
    "warmup_updates": 0,
}


def _published(*, lr: float, max_update: int, mask_prob: float, mask_channel_prob: float, layerdrop: float,
               freeze: int, update_freq: int, valid_interval: int, save_interval: int) -> dict:
    return {
        "model": {
            "arch": "ctc",
            "model_preset": "",
            "overrides": {
                "apply_mask": True,
                "mask_prob": mask_prob,
                "mask_length": 10,
                "mask_channel_prob": mask_channel_prob,
                "mask_channel_length": 64,
                "layerdrop": layerdrop,
                "dropout": 0.0,
                "attention_dropout": 0.0,
                "activation_dropout": 0.1,
                "final_dropout": 0.0,
                "feature_grad_mult": 0.0,
            },
        },
        # max_tokens 3.2 M samples (200 s) per GPU; sentence-level padding, no cropping
        "data": {"max_samples_per_batch": 3_200_000, "max_sample_size": 3_200_000, "min_sample_size": 0,
                 "pad": True, "num_workers": 4},
        "optim": {**_FT_OPTIM, "lr": lr, "max_update": max_update, "update_freq": update_freq},
        "run": {"amp": "fp16", "log_interval": 200, "valid_interval": valid_interval, "save_interval": save_interval,
                "keep_last": 1, "best_metric": "wer", "maximize_best": False, "tie_break_metric": "cer", "freeze_feature_encoder": True,
                "freeze_updates": freeze, "train_during_freeze": ["proj."]},
    }


# Audio route (a CTC head on a pretrained encoder). The published five are fairseq's
# base_{10m,1h,10h,100h,960h}.yaml (Baevski et al. 2020, Table 9 / appendix B): 2 GPUs x
# update_freq 4 (960h: 8 GPUs x 1); run on fewer GPUs with a larger --update-freq to keep the batch.
_CTC: dict[str, dict] = {
    "10m": _published(lr=5e-5, max_update=13_000, mask_prob=0.65, mask_channel_prob=0.25, layerdrop=0.1,
                      freeze=10_000, update_freq=4, valid_interval=1000, save_interval=1000),
    "1h": _published(lr=5e-5, max_update=13_000, mask_prob=0.65, mask_channel_prob=0.25, layerdrop=0.1,
                     freeze=10_000, update_freq=4, valid_interval=1000, save_interval=1000),
    "10h": _published(lr=5e-5, max_update=20_000, mask_prob=0.65, mask_channel_prob=0.5, layerdrop=0.05,
                      freeze=10_000, update_freq=4, valid_interval=1000, save_interval=1000),
    "100h": _published(lr=3e-5, max_update=80_000, mask_prob=0.65, mask_channel_prob=0.5, layerdrop=0.1,
                       freeze=0, update_freq=4, valid_interval=5000, save_interval=5000),
    "960h": _published(lr=1e-5, max_update=320_000, mask_prob=0.5, mask_channel_prob=0.1, layerdrop=0.1,
                       freeze=0, update_freq=1, valid_interval=10_000, save_interval=10_000),
}
# A few minutes on 2 CPU cores with a tiny encoder (w2v pretrain --preset tiny) on short
# utterances (FSDD digits: 20-50 frames). Channel spans of 8 fit its 64 dimensions. No time
# masks: fairseq masks at least 2 spans per utterance whatever mask_prob is, which on 20-50
# frames masks every training utterance heavily, and a weak encoder then learns to emit
# letters only at the mask embedding's frames (low training loss, all-blank output in eval).
_CTC["tiny"] = copy.deepcopy(_CTC["10h"])
_CTC["tiny"]["model"]["overrides"].update(
    {"mask_prob": 0.0, "mask_length": 4, "mask_channel_prob": 0.1, "mask_channel_length": 8, "layerdrop": 0.0}
)
_CTC["tiny"]["data"].update({"max_samples_per_batch": 160_000, "max_sample_size": 160_000, "num_workers": 1})
_CTC["tiny"]["optim"].update({"lr": 2e-3, "max_update": 600, "update_freq": 1})
_CTC["tiny"]["run"].update({"amp": "none", "log_interval": 10, "valid_interval": 100, "save_interval": 200,
                            "freeze_updates": 100})


def _downstream(*, model_preset: str, lr: float, max_update: int, frames: int, log_interval: int,
                valid_interval: int, save_interval: int, workers: int) -> dict:
    return {
        "model": {"arch": "blstm", "model_preset": model_preset, "overrides": {}},
        # frames, not samples: items x longest item <= max_samples_per_batch frames
        "data": {"max_samples_per_batch": frames, "max_sample_size": frames, "min_sample_size": 1, "pad": True,
                 "num_workers": workers},
        "optim": {**_FT_OPTIM, "lr": lr, "max_update": max_update, "clip_norm": 5.0, "update_freq": 1},
        "run": {"amp": "none", "log_interval": log_interval, "valid_interval": valid_interval,
                "save_interval": save_interval, "keep_last": 1, "best_metric": "wer", "maximize_best": False, "tie_break_metric": "cer"},
    }


# Feature route (a downstream model on stored features): our own recipes; --arch picks the architecture.
_DOWNSTREAM: dict[str, dict] = {
    # 400 s of frames per batch (40k frames at 10 ms), 3 x 512 BiLSTM or 8 GLU convolutions.
    "base": _downstream(model_preset="base", lr=1e-3, max_update=40_000, frames=40_000, log_interval=100,
                        valid_interval=2000, save_interval=2000, workers=2),
    # FSDD-sized: 20 s of frames per batch (~45 digits), ~9 epochs of the 2700 FSDD training
    # utterances; small batches because CTC leaves its all-blank start sooner with more updates.
    "tiny": _downstream(model_preset="tiny", lr=3e-3, max_update=1200, frames=2_000, log_interval=20,
                        valid_interval=200, save_interval=200, workers=0),
}


#: Fine-tuning recipes: route ("audio" or "features") -> name -> nested dict, as :data:`PRESETS`.
FINETUNE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {"audio": _CTC, "features": _DOWNSTREAM}


def _lm(*, model_preset: str, lr: float, max_update: int, warmup: int, tokens: int, update_freq: int,
        log_interval: int, valid_interval: int, save_interval: int, patience: int = 0) -> dict:
    return {
        "model": {"arch": "transformer_lm", "model_preset": model_preset, "overrides": {}},
        # tokens, not samples: sentences x longest sentence <= max_samples_per_batch tokens, and
        # sample_rate 1 makes the logged throughput (audio_s_per_s) tokens per second
        "data": {"sample_rate": 1, "max_samples_per_batch": tokens, "max_sample_size": tokens, "min_sample_size": 0, "pad": True,
                 "num_workers": 0},
        "optim": {"optimizer": "adam", "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.01, "clip_norm": 0.0,
                  "lr": lr, "max_update": max_update, "warmup_updates": warmup, "schedule": "polynomial",
                  "update_freq": update_freq},
        "run": {"amp": "none", "log_interval": log_interval, "valid_interval": valid_interval,
                "save_interval": save_interval, "keep_last": 1, "best_metric": "loss", "maximize_best": False,
                "patience": patience},
    }


#: Language-model recipes (``w2v lm --neural``): a causal TokenTransformer on text.
LM_PRESETS: dict[str, dict[str, Any]] = {
    # fairseq's transformer_lm recipe (examples/language_model: 2048 tokens x update_freq 16 per GPU,
    # lr 5e-4, 4000 warm-up updates, weight decay 0.01) on the RoBERTa BASE model; a linear decay over
    # max_update stands in for fairseq's inverse_sqrt, which has no end
    "base": _lm(model_preset="base", lr=5e-4, max_update=50_000, warmup=4000, tokens=2048, update_freq=16,
                log_interval=100, valid_interval=1000, save_interval=5000),
    # minutes on a CPU: about 40 epochs of a 200k-word LM text at the word level; so small a model
    # overfits a small text (LJ Speech: after 750 updates, BENCHMARKS.md), so it stops after 2
    # validations without a better held-out loss
    "tiny": _lm(model_preset="tiny", lr=2e-3, max_update=2000, warmup=100, tokens=4096, update_freq=1,
                log_interval=50, valid_interval=250, save_interval=500, patience=2),
}


_SECTIONS = {"model": ModelSection, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


def _coerce(section: str, key: str, value: Any, where: str) -> Any:
    cls = _SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise W2VError(f"{where}: unknown setting {section}.{key} (known: {', '.join(sorted(fields))})")
    default = getattr(cls(), key)
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise W2VError(f"{where}: {section}.{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise W2VError(f"{where}: {section}.{key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise W2VError(f"{where}: {section}.{key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise W2VError(f"{where}: {section}.{key} must be a list of {len(default)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(default, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise W2VError(f"{where}: {section}.{key} must be a list, got {value!r}")
        return list(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise W2VError(f"{where}: {section}.{key} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(default, str):
        return str(value)
    return value


def apply_dict(cfg: TrainConfig, values: dict[str, Any], where: str) -> TrainConfig:
    """Apply a nested ``{section: {key: value}}`` dict onto ``cfg`` (model overrides merge)."""
    if not isinstance(values, dict):
        raise W2VError(f"{where}: expected a mapping of sections (model, data, optim, run)")
    for section, body in values.items():
        if section not in _SECTIONS:
            raise W2VError(f"{where}: unknown section {section!r} (known: {', '.join(_SECTIONS)})")
        if not isinstance(body, dict):
            raise W2VError(f"{where}: section {section!r} must be a mapping")
        target = getattr(cfg, section)
        for key, value in body.items():
            value = _coerce(section, key, value, where)
            if section == "model" and key == "overrides":
                target.overrides = {**target.overrides, **value}
            else:
                setattr(target, key, value)
    return cfg


def parse_set(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value parsed as YAML).

    ``model.<field>=v`` that is not ``arch``/``model_preset`` is a model-config
    override (``model.encoder_layers=4`` == ``model.overrides.encoder_layers=4``).

    Example:
        >>> parse_set("optim.lr=1e-3")
        ('optim', 'lr', 0.001)
    """
    if "=" not in item:
        raise W2VError(f"--set {item!r}: expected section.key=value")
    path, raw = item.split("=", 1)
    parts = path.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-3 as a string (it wants 1.0e-3): accept plain floats too.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    if parts[0] == "model" and len(parts) == 3 and parts[1] == "overrides":
        return "model", parts[2], value
    if len(parts) != 2:
        raise W2VError(f"--set {item!r}: expected section.key=value (sections: {', '.join(_SECTIONS)})")
    return parts[0], parts[1], value


def apply_sets(cfg: TrainConfig, sets: list[str]) -> TrainConfig:
    """Apply ``--set section.key=value`` items in order."""
    for item in sets:
        section, key, value = parse_set(item)
        if section == "model" and key not in ("arch", "model_preset", "overrides"):
            cfg.model.overrides = {**cfg.model.overrides, key: value}
            continue
        apply_dict(cfg, {section: {key: value}}, f"--set {item}")
    return cfg


def resolve_config(
    arch: str | None = None,
    preset: str | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    sets: list[str] | tuple[str, ...] = (),
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults, then the preset, then the YAML file, then ``--set`` items.

    Args:
        arch: model family; picks the preset table.
        preset: a training preset name (see :data:`PRESETS`); None = defaults only.
        config_file: a YAML file with sections ``model``, ``data``, ``optim``, ``run``.
        sets: ``section.key=value`` strings.
        base: start from this config instead of the dataclass defaults.

    Raises:
        W2VError: unknown preset, section or key, or a value of the wrong type.

    Example:
        >>> resolve_config("wav2vec2", "tiny", sets=["model.encoder_layers=1"]).model.overrides["encoder_layers"]
        1
    """
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if arch is not None:
        cfg.model.arch = arch
    if preset is not None:
        table = PRESETS.get(cfg.model.arch)
        if table is None:
            raise W2VError(f"no training presets for arch {cfg.model.arch!r} (known: {', '.join(PRESETS)})")
        if preset not in table:
            raise W2VError(f"unknown preset {preset!r} for {cfg.model.arch} (known: {', '.join(sorted(table))})")
        apply_dict(cfg, copy.deepcopy(table[preset]), f"preset {cfg.model.arch}/{preset}")
    if config_file is not None:
        try:
            with open(config_file, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise W2VError(f"{config_file}: no such file") from None
        except yaml.YAMLError as e:
            raise W2VError(f"{config_file}: not valid YAML ({str(e).splitlines()[0]})") from None
        apply_dict(cfg, values, str(config_file))
    apply_sets(cfg, list(sets))
    fit_warmup(cfg)
    validate_config(cfg)
    return cfg


def fit_warmup(cfg: TrainConfig) -> None:
    """Shorten a warm-up as long as the run to a tenth of it, with one warning saying what was set.

    A recipe's warm-up (e.g. 32,000 updates) is made for its full run; a short run
    (``--max-update 2`` to try a setup) would otherwise be refused. A tenth of the
    run is about the recipes' own ratio (wav2vec 2.0 BASE: 32k of 400k). The value
    set is what ``config.yaml`` records, so ``--resume`` repeats it. Schedules with no
    warm-up length of their own (``fixed``, ``tri_stage``) are left alone.

    Example:
        >>> cfg = resolve_config("wav2vec2", "tiny", sets=["optim.max_update=2"])
        >>> cfg.optim.warmup_updates
        0
    """
    o = cfg.optim
    if o.schedule in ("fixed", "tri_stage") or o.max_update < 1 or o.warmup_updates < o.max_update:
        return
    fitted = o.max_update // 10
    log.warning("optim.warmup_updates=%d is not below optim.max_update=%d: set to %d (a tenth of the run); "
                "give --set optim.warmup_updates=N (below %d) to choose", o.warmup_updates, o.max_update, fitted,
                o.max_update)
    o.warmup_updates = fitted


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (e.g. from a checkpoint)."""
    return apply_dict(TrainConfig(), copy.deepcopy(values), "saved config")


def validate_config(cfg: TrainConfig) -> None:
    """Reject settings that cannot run, with the setting's name in the message."""
    from w2vtools.train.schedules import SCHEDULES

    d, o, r = cfg.data, cfg.optim, cfg.run
    checks = [
        (d.sample_rate > 0, "data.sample_rate must be positive"),
        (d.max_samples_per_batch > 0, "data.max_samples_per_batch must be positive"),
        (d.max_sample_size > 0, "data.max_sample_size must be positive"),
        (d.min_sample_size >= 0, "data.min_sample_size must be >= 0"),
        (d.min_sample_size <= d.max_sample_size or d.pad, "data.min_sample_size exceeds data.max_sample_size"),
        (d.num_workers >= 0, "data.num_workers must be >= 0"),
        (o.optimizer in ("adam",), f"optim.optimizer {o.optimizer!r}: only 'adam' (decoupled weight decay)"),
        (o.lr > 0, "optim.lr must be positive"),
        (o.update_freq >= 1, "optim.update_freq must be >= 1"),
        (o.max_update >= 1, "optim.max_update must be >= 1"),
        (o.schedule in SCHEDULES, f"optim.schedule {o.schedule!r}: choose from {', '.join(SCHEDULES)}"),
        (o.warmup_updates < o.max_update or o.schedule in ("fixed", "tri_stage"),
         "optim.warmup_updates must be below optim.max_update"),
        (r.amp in ("none", "bf16", "fp16"), f"run.amp {r.amp!r}: choose none, bf16 or fp16"),
        (r.log_interval >= 1, "run.log_interval must be >= 1"),
        (r.max_nonfinite >= 1, "run.max_nonfinite must be >= 1"),
        (0 <= r.collapse_code_fraction < 1, "run.collapse_code_fraction must be in [0, 1)"),
        (0 <= r.collapse_peak_fraction < 1, "run.collapse_peak_fraction must be in [0, 1)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise W2VError(msg)
    try:
        training_augmentation(d)
    except (TypeError, ValueError) as e:
        raise W2VError(f"data.speed_perturb / data.noise_snr_db / data.noise_prob: {e}") from None


def training_augmentation(d: DataConfig):
    """The :class:`~w2vtools.augment.Augmentation` the data section asks for, or ``None``."""
    from w2vtools.augment import Augmentation

    return Augmentation.from_lists(d.speed_perturb, d.noise_snr_db, d.noise_prob)
