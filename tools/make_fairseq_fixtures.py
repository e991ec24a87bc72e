#!/usr/bin/env python3
"""Make the small fairseq checkpoints and reference outputs in tests/fixtures/fairseq/.

Runs inside a fairseq virtualenv (never the project's), e.g.::

    python3 -m venv /work/fairseq-venv
    /work/fairseq-venv/bin/pip install "torch==2.11.*" "numpy<2" fairseq-fixed soundfile
    /work/fairseq-venv/bin/python tools/make_fairseq_fixtures.py

Every model is one of fairseq's own classes (``Wav2VecModel``, ``Wav2Vec2Model``,
``Wav2VecCtc``, ``RobertaModel`` on vq-wav2vec units) with the published architecture's structure but shrunken widths,
randomly initialised with a fixed seed, so each file stays well under 2 MB. The
checkpoint dicts are laid out as fairseq writes them, in the three styles found in
the wild:

* old ``args`` (an ``argparse.Namespace``; wav2vec 2019 and wav2vec 2.0 releases),
* ``cfg`` as a pickled omegaconf ``DictConfig`` (fairseq around the hydra move),
* ``cfg`` as a plain dict (``OmegaConf.to_container``; fairseq >= 0.10.2 trainer).

Reference outputs are computed by fairseq itself in eval mode on a real FSDD
recording read from ``../shared/data`` (its 8 kHz samples are fed as they are: the
models don't care what the audio says, and the tests read the same samples back
with soundfile, so there is no resampler in between). Each fixture is reloaded with
fairseq's ``checkpoint_utils.load_model_ensemble_and_task`` to prove fairseq itself
accepts it, and its output compared with the one stored.

The wav2vec 2.0 pretraining fixtures (``--only-pretraining`` makes just these, from the
checkpoints already there) run fairseq's ``Wav2vecCriterion`` on fairseq's model in
training mode with every source of randomness fixed and stored: dropout off, the time
mask drawn once by fairseq's ``compute_mask_indices``, the distractor indices, and the
Gumbel noise of the quantizer's hard Gumbel softmax (torch's own formula with the noise
given). They hold the loss terms and the gradients.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.models.wav2vec import Wav2Vec2Config, Wav2Vec2Model, Wav2VecConfig, Wav2VecModel
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

# fairseq 0.12 calls torch.load without weights_only; torch >= 2.6 then refuses its own
# Namespace/DictConfig pickles. These are files this script just wrote.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "fairseq"
CLIP = "fsdd/recordings/0_jackson_0.wav"
LETTERS = ["|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C", "F", "G", "Y", "P",
           "B", "V", "K", "'", "X", "J", "Q", "Z"]

log = logging.getLogger("make_fairseq_fixtures")


def save(obj, name: str) -> Path:
    path = OUT / name
    torch.save(obj, path)
    size = path.stat().st_size
    assert size < 2_000_000, f"{name} is {size} bytes"
    log.info("wrote %s (%d KB)", name, size // 1024)
    return path


def save_npy(arr, name: str) -> None:
    arr = arr.detach().cpu().numpy() if torch.is_tensor(arr) else np.asarray(arr)
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    np.save(OUT / name, arr)


def checkpoint(model_state, *, args=None, cfg=None, fp16: bool = False) -> dict:
    """A checkpoint dict as fairseq's trainer writes one (minus optimizer state)."""
    if fp16:
        model_state = {k: v.half() if v.is_floating_point() else v for k, v in model_state.items()}
    return {
        "args": args,
        "cfg": cfg,
        "model": model_state,
        "criterion": None,
        "optimizer_history": [
            {"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
             "lr_scheduler_state": {"best": 3.25}, "num_updates": 1000}
        ],
        "task_state": {},
        "extra_state": {"metrics": {}, "previous_training_time": 12.5, "train_iterator": {"epoch": 3}},
    }


def round_to_fp16(model: torch.nn.Module) -> None:
    """Make the float32 weights exactly representable in fp16 (so the fp16 file gives the same outputs)."""
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())


def as_namespace(d: dict) -> Namespace:
    return Namespace(**{k: (as_namespace(v) if isinstance(v, dict) else v) for k, v in d.items()})


def dataclass_dict(cfg) -> dict:
    d = asdict(cfg) if not isinstance(cfg, dict) else dict(cfg)
    # fairseq dataclasses hold enums (ChoiceEnum) and II("...") interpolations; resolve like fairseq
    d = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.create(d), resolve=False), default=str))
    # II("...") fields hold "${...}" until the full config resolves them; a flat argparse
    # Namespace never had such strings, and a stored cfg has them resolved
    return {k: v for k, v in d.items() if not (isinstance(v, str) and v.startswith("${"))}


def fairseq_reload(path: Path, source: torch.Tensor, fn) -> np.ndarray:
    """Load with fairseq's own loader and run ``fn(model, source)``."""
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    model = models[0].float().eval()
    with torch.no_grad():
        return fn(model, source).detach().numpy()


# --------------------------------------------------------------------------- wav2vec / vq-wav2vec


def tiny_wav2vec_cfg(**kw) -> Wav2VecConfig:
    base = dict(
        conv_feature_layers="[(32, 10, 5), (32, 8, 4), (32, 4, 2), (32, 4, 2), (32, 4, 2), (32, 1, 1), (32, 1, 1), (32, 1, 1)]",
        conv_aggregator_layers="[(48, 2, 1), (48, 3, 1), (48, 4, 1), (48, 5, 1), (48, 6, 1), (48, 7, 1)]",
        prediction_steps=12,
        num_negatives=10,
        skip_connections_agg=True,
        residual_scale=0.5,
        log_compression=True,
        infonce=False,
    )
    base.update(kw)
    return Wav2VecConfig(**base)


def wav2vec_outputs(model, source: torch.Tensor) -> dict:
    with torch.no_grad():
        z = model.feature_extractor(source)
        out = {"z": z}
        x = z
        if model.vector_quantizer is not None:
            qx, idx = model.vector_quantizer.forward_idx(z)
            out["q"], out["codes"] = qx, idx
            x = qx
        out["c"] = model.feature_aggregator(x)
    return {k: (v.transpose(1, 2) if k != "codes" else v) for k, v in out.items()}


def wav2vec_args(cfg: Wav2VecConfig) -> Namespace:
    d = dataclass_dict(cfg)
    d.update(arch="wav2vec", task="audio_pretraining", criterion="wav2vec", sample_rate=16000,
             normalize=False, max_sample_size=150000, data="/data/manifest", seed=1, fp16=True,
             optimizer="adam", lr=[1e-5], max_update=400000)
    d["vq_temp"] = str(tuple(cfg.vq_temp))
    return Namespace(**d)


def make_wav2vec(source: torch.Tensor) -> None:
    # wav2vec large structure (8-layer encoder with three 1x1 layers, kernels 2.. aggregator
    # with scaled skips, log compression), old-style Namespace args as in wav2vec_large.pt
    torch.manual_seed(0)
    cfg = tiny_wav2vec_cfg()
    model = Wav2VecModel(cfg).eval()
    outs = wav2vec_outputs(model, source)
    path = save(checkpoint(model.state_dict(), args=wav2vec_args(cfg)), "wav2vec_args.pt")
    for k, v in outs.items():
        save_npy(v[0], f"wav2vec_{k}.npy")
    again = fairseq_reload(path, source, lambda m, s: wav2vec_outputs(m, s)["c"])
    np.testing.assert_allclose(again, outs["c"].numpy(), atol=1e-6)
    neg = fixed_negatives(outs["z"].shape[1], cfg.num_negatives, seed=10)
    np.save(OUT / "wav2vec_negatives.npy", neg)
    (OUT / "wav2vec_loss.json").write_text(json.dumps(fairseq_loss(model, source, neg, None)) + "\n")


def make_wav2vec_options(source: torch.Tensor) -> None:
    # the less common switches: encoder skips, zero-padded aggregator without bias, non-affine
    # norms, a separate target projection network, a fixed offset, GELU, no log compression
    torch.manual_seed(6)
    cfg = tiny_wav2vec_cfg(
        conv_feature_layers="[(32, 10, 5), (32, 8, 4), (32, 4, 2), (32, 4, 2), (32, 4, 2), (32, 1, 1)]",
        conv_aggregator_layers="[(32, 3, 1), (32, 3, 1), (32, 2, 1)]",  # "new" projects targets: same width
        skip_connections_feat=True, agg_zero_pad=True, no_conv_bias=True, non_affine_group_norm=True,
        project_features="new", residual_scale=0.3, offset="3", activation="gelu", log_compression=False,
        prediction_steps=4, num_negatives=5, balanced_classes=True,
    )
    model = Wav2VecModel(cfg).eval()
    outs = wav2vec_outputs(model, source)
    full = {"_name": None, "model": {**dataclass_dict(cfg), "_name": "wav2vec"},
            "task": {"_name": "audio_pretraining", "data": "/data/manifest", "normalize": False},
            "criterion": {"_name": "wav2vec", "infonce": False}}
    save(checkpoint(model.state_dict(), cfg=full), "wav2vec_options_cfg.pt")
    for k, v in outs.items():
        save_npy(v[0], f"wav2vec_options_{k}.npy")
    neg = fixed_negatives(outs["z"].shape[1], cfg.num_negatives, seed=12)
    np.save(OUT / "wav2vec_options_negatives.npy", neg)
    (OUT / "wav2vec_options_loss.json").write_text(json.dumps(fairseq_loss(model, source, neg, None)) + "\n")


def make_vq_wav2vec(source: torch.Tensor) -> None:
    # Gumbel: activation gelu, vq_depth 2, combine_groups, no log compression (the README recipe);
    # cfg stored as a pickled DictConfig, weights in fp16.
    torch.manual_seed(1)
    cfg = tiny_wav2vec_cfg(vq_type="gumbel", vq_vars=40, vq_groups=2, vq_depth=2, combine_groups=True,
                           activation="gelu", log_compression=False)
    model = Wav2VecModel(cfg).eval()
    round_to_fp16(model)
    outs = wav2vec_outputs(model, source)
    full = OmegaConf.create({
        "_name": None,
        "common": {"fp16": True, "seed": 2},
        "model": {**dataclass_dict(cfg), "_name": "wav2vec", "infonce": "${criterion.infonce}"},
        "task": {"_name": "audio_pretraining", "data": "/data/manifest", "sample_rate": 16000,
                 "normalize": False, "max_sample_size": 150000},
        "criterion": {"_name": "wav2vec", "infonce": False, "log_keys": ["prob_perplexity", "code_perplexity", "temp"]},
    })
    path = save(checkpoint(model.state_dict(), cfg=full, fp16=True), "vq_wav2vec_gumbel_dictconfig_fp16.pt")
    for k, v in outs.items():
        save_npy(v[0], f"vq_wav2vec_gumbel_{k}.npy")
    again = fairseq_reload(path, source, lambda m, s: wav2vec_outputs(m, s)["c"])
    np.testing.assert_allclose(again, outs["c"].numpy(), atol=1e-5)

    # k-means: cfg as a plain dict (what fairseq's trainer writes today); codebook scaled like
    # a trained one so nearest codewords are clear-cut.
    torch.manual_seed(2)
    cfg = tiny_wav2vec_cfg(vq_type="kmeans", vq_vars=40, vq_groups=2, combine_groups=True,
                           activation="gelu", log_compression=False, vq_gamma=0.25)
    model = Wav2VecModel(cfg).eval()
    with torch.no_grad():
        model.vector_quantizer.embedding.normal_()
    outs = wav2vec_outputs(model, source)
    full = {
        "_name": None,
        "common": {"fp16": False, "seed": 2},
        "model": {**dataclass_dict(cfg), "_name": "wav2vec"},
        "task": {"_name": "audio_pretraining", "data": "/data/manifest", "sample_rate": 16000, "normalize": False},
        "criterion": {"_name": "wav2vec", "infonce": False, "loss_weights": [1.0]},
    }
    path = save(checkpoint(model.state_dict(), cfg=full), "vq_wav2vec_kmeans_cfg.pt")
    for k, v in outs.items():
        save_npy(v[0], f"vq_wav2vec_kmeans_{k}.npy")
    again = fairseq_reload(path, source, lambda m, s: wav2vec_outputs(m, s)["codes"])
    np.testing.assert_array_equal(again, outs["codes"].numpy())
    neg = fixed_negatives(outs["z"].shape[1], cfg.num_negatives, seed=11)
    np.save(OUT / "vq_wav2vec_kmeans_negatives.npy", neg)
    (OUT / "vq_wav2vec_kmeans_loss.json").write_text(json.dumps(fairseq_loss(model, source, neg, [1.0])) + "\n")


def fixed_negatives(tsz: int, n: int, seed: int) -> np.ndarray:
    """(T, N) frame indices for one utterance: uniform over the other frames (fairseq's rule)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, tsz - 1, (tsz, n), generator=g)
    idx = idx + (idx >= torch.arange(tsz)[:, None]).long()
    return idx.numpy()


def fairseq_loss(model, source: torch.Tensor, neg_idx: np.ndarray, loss_weights) -> dict:
    """fairseq's own wav2vec criterion on fairseq's own model, negatives fixed to ``neg_idx``."""
    from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
    from fairseq.models.wav2vec.wav2vec import Wav2VecPredictionsModel

    idx = torch.from_numpy(neg_idx)

    def sample_negatives(self, y):  # y: (B=1, C, T) -> (N, B, C, T)
        return y[0][:, idx].permute(2, 0, 1).unsqueeze(1)

    original = Wav2VecPredictionsModel.sample_negatives
    Wav2VecPredictionsModel.sample_negatives = sample_negatives
    try:
        crit = Wav2vecCriterion(task=None, infonce=False, loss_weights=loss_weights, log_keys=[])
        loss, sample_size, _ = crit(model.train(), {"net_input": {"source": source}, "id": torch.tensor([0])})
    finally:
        Wav2VecPredictionsModel.sample_negatives = original
        model.eval()
    return {"loss": loss.item(), "sample_size": int(sample_size)}


# --------------------------------------------------------------------------- wav2vec 2.0


def tiny_w2v2_cfg(large_style: bool) -> Wav2Vec2Config:
    """BASE structure (7 conv layers, post-LN Transformer, group norm) or LARGE/XLS-R style."""
    return Wav2Vec2Config(
        extractor_mode="layer_norm" if large_style else "default",
        conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2",
        conv_bias=large_style,
        layer_norm_first=large_style,
        encoder_layers=3,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=4,
        conv_pos=16,
        conv_pos_groups=4,
        final_dim=24,
        latent_vars=20,
        latent_groups=2,
        latent_temp=(2.0, 0.5, 0.999995),
        feature_grad_mult=1.0 if large_style else 0.1,
        quantize_targets=True,
    )


def w2v2_outputs(model, source: torch.Tensor) -> dict:
    with torch.no_grad():
        res = model.extract_features(source, None, mask=False)
        out = {"x": res["x"], "z": res["features"]}
        for i, (lx, _, _) in enumerate(res["layer_results"]):
            out[f"layer{i + 1}"] = lx.transpose(0, 1)
        if model.quantizer is not None:
            out["codes"] = model.quantize(source)[1]
    return out


def w2v2_task_cfg(normalize: bool) -> dict:
    return {"_name": "audio_pretraining", "data": "/data/manifest", "sample_rate": 16000,
            "normalize": normalize, "enable_padding": False, "max_sample_size": 250000, "labels": None}


def make_wav2vec2(source: torch.Tensor) -> Path:
    # BASE: cfg as a plain dict, fp32
    torch.manual_seed(3)
    cfg = tiny_w2v2_cfg(large_style=False)
    model = Wav2Vec2Model(cfg).eval()
    outs = w2v2_outputs(model, source)
    full = {"_name": None, "common": {"fp16": True}, "model": {**dataclass_dict(cfg), "_name": "wav2vec2"},
            "task": w2v2_task_cfg(False), "criterion": {"_name": "wav2vec", "infonce": True,
                                                        "loss_weights": [0.1, 10.0]}}
    base_path = save(checkpoint(model.state_dict(), cfg=full), "wav2vec2_base_cfg.pt")
    for k, v in outs.items():
        save_npy(v[0], f"wav2vec2_base_{k}.npy")
    again = fairseq_reload(base_path, source, lambda m, s: m.extract_features(s, None)["x"])
    np.testing.assert_allclose(again, outs["x"].numpy(), atol=1e-5)

    # LARGE / XLS-R style (pre-LN, layer-norm conv encoder with bias, normalized input):
    # old Namespace args, fp16 weights
    torch.manual_seed(4)
    cfg = tiny_w2v2_cfg(large_style=True)
    model = Wav2Vec2Model(cfg).eval()
    round_to_fp16(model)
    normed = F.layer_norm(source, source.shape[-1:])  # the task's normalize=True
    outs = w2v2_outputs(model, normed)
    args = Namespace(**{**dataclass_dict(cfg), "arch": "wav2vec2", "task": "audio_pretraining",
                        "criterion": "wav2vec", "normalize": True, "sample_rate": 16000, "data": "/data/manifest",
                        "latent_temp": "(2.0, 0.5, 0.999995)", "infonce": True, "fp16": True})
    path = save(checkpoint(model.state_dict(), args=args, fp16=True), "wav2vec2_large_args_fp16.pt")
    for k, v in outs.items():
        save_npy(v[0], f"wav2vec2_large_{k}.npy")
    again = fairseq_reload(path, normed, lambda m, s: m.extract_features(s, None)["x"])
    np.testing.assert_allclose(again, outs["x"].numpy(), atol=1e-4)
    return base_path


# --------------------------------------------------------------------------- wav2vec 2.0 pretraining loss

# Two FSDD clips (8 kHz samples fed as they are): 7999 and 7038 samples, 24 and 21 frames.
PRETRAIN_CLIPS = ("fsdd/recordings/7_george_29.wav", "fsdd/recordings/6_jackson_15.wav")
PRETRAIN_UPDATES = 200_000  # the Gumbel temperature 2 x 0.999995^200k = 0.736
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
                  dropout_input=0.0, dropout_features=0.0)
# the parameters whose whole gradient is stored (the norms of all are)
GRAD_PARAMS = (
    "feature_extractor.conv_layers.0.0.weight",
    "feature_extractor.conv_layers.0.2.weight",     # BASE: the group norm
    "feature_extractor.conv_layers.6.2.1.weight",   # LARGE: the last layer norm
    "feature_extractor.conv_layers.6.0.bias",
    "layer_norm.weight",
    "post_extract_proj.weight",
    "mask_emb",
    "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.bias",
    "encoder.layers.0.self_attn.q_proj.weight",
    "encoder.layers.2.fc2.bias",
    "encoder.layers.2.final_layer_norm.weight",
    "encoder.layer_norm.weight",
    "quantizer.vars",
    "quantizer.weight_proj.weight",
    "quantizer.weight_proj.bias",
    "project_q.weight",
    "final_proj.weight",
)


def fixed_w2v2_negatives(bsz: int, num: int, n_negatives: int, cross: int, seed: int) -> np.ndarray:
    """(B, M, N) rows of the flattened (B*M, C) targets: ``n_negatives`` from the other masked
    frames of the same utterance, then ``cross`` from the whole batch but the target itself."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(num).view(1, num, 1)
    own = torch.arange(bsz).view(bsz, 1, 1) * num
    neg = torch.randint(0, num - 1, (bsz, num, n_negatives), generator=g)
    neg = neg + (neg >= pos).long() + own
    if cross:
        c = torch.randint(0, bsz * num - 1, (bsz, num, cross), generator=g)
        neg = torch.cat([neg, c + (c >= own + pos).long()], dim=-1)
    return neg.numpy().astype(np.int32)


def fixed_gumbel_softmax(noise: torch.Tensor):
    """``F.gumbel_softmax(logits, tau, hard=True)`` with the Gumbel noise given: torch's own
    formula (straight-through one-hot of the noisy soft-max)."""

    def gumbel_softmax(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
        y_soft = ((logits + noise.view_as(logits).to(logits)) / tau).softmax(dim)
        if not hard:
            return y_soft
        y_hard = torch.zeros_like(logits).scatter_(dim, y_soft.argmax(dim, keepdim=True), 1.0)
        return y_hard - y_soft.detach() + y_soft

    return gumbel_softmax


def pretraining_batch(shared_data: Path, normalize: bool, pad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two clips as one batch: cropped to the shorter (``pad=False``) or zero-padded, each
    normalized first when the task says so (fairseq's dataset normalizes, then the collater pads)."""
    wavs = [torch.from_numpy(sf.read(shared_data / clip, dtype="float32")[0]) for clip in PRETRAIN_CLIPS]
    if normalize:
        wavs = [F.layer_norm(w, w.shape) for w in wavs]
    size = max(len(w) for w in wavs) if pad else min(len(w) for w in wavs)
    source = torch.zeros(len(wavs), size)
    padding = torch.zeros(len(wavs), size, dtype=torch.bool)
    for i, w in enumerate(wavs):
        source[i, : min(len(w), size)] = w[:size]
        padding[i, len(w):] = True
    return source, (padding if pad else None)


def fairseq_fixed_criterion(model, source, padding, mask, neg_idx, noise, weights):
    """fairseq's Wav2vecCriterion on ``model`` with the given mask, distractors and Gumbel noise,
    back-propagated: (loss, sample size, logging output, the model's (1+N, B, M) logits)."""
    from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion

    seen = []

    def sample_negatives(self, y, num, padding_count=None):
        b, m, c = y.shape
        negs = y.reshape(b * m, c)[neg_idx.reshape(-1)].view(b, m, -1, c).permute(2, 0, 1, 3)
        return negs, neg_idx

    def compute_preds(self, x, y, negatives):
        logits = original[2](self, x, y, negatives)
        seen.append(logits.detach().clone())
        return logits

    original = (Wav2Vec2Model.sample_negatives, F.gumbel_softmax, Wav2Vec2Model.compute_preds)
    Wav2Vec2Model.sample_negatives = sample_negatives
    Wav2Vec2Model.compute_preds = compute_preds
    F.gumbel_softmax = fixed_gumbel_softmax(noise)
    try:
        crit = Wav2vecCriterion(task=None, infonce=True, loss_weights=list(weights),
                                log_keys=["prob_perplexity", "code_perplexity", "temp"])
        sample = {"net_input": {"source": source, "padding_mask": padding, "mask_indices": mask},
                  "id": torch.arange(source.size(0))}
        loss, sample_size, logging = crit(model, sample)
        loss.backward()
    finally:
        Wav2Vec2Model.sample_negatives, F.gumbel_softmax, Wav2Vec2Model.compute_preds = original
    return loss, sample_size, logging, seen[0]


def make_wav2vec2_pretraining(shared_data: Path) -> None:
    """fairseq's Wav2vecCriterion (InfoNCE, diversity and feature penalty) and its gradients on the
    BASE and LARGE-style checkpoints above, with the randomness fixed: dropout off, the mask drawn
    once by fairseq's compute_mask_indices, the distractors and the Gumbel noise stored."""
    from fairseq.data.data_utils import compute_mask_indices

    styles = [
        # name, checkpoint, LARGE-style, padded batch, distractors (own, cross), loss weights
        ("base", "wav2vec2_base_cfg.pt", False, False, (10, 0), [0.1, 10.0]),
        ("large", "wav2vec2_large_args_fp16.pt", True, True, (6, 3), [0.2, 5.0]),
    ]
    for name, ckpt, large, pad, (n_neg, cross), weights in styles:
        cfg = tiny_w2v2_cfg(large_style=large)
        for k, v in {**NO_DROPOUT, "num_negatives": n_neg, "cross_sample_negatives": cross}.items():
            setattr(cfg, k, v)
        model = Wav2Vec2Model(cfg)
        state = torch.load(OUT / ckpt, weights_only=False)["model"]
        model.load_state_dict({k: v.float() for k, v in state.items()})
        model.train()
        model.set_num_updates(PRETRAIN_UPDATES)
        source, padding = pretraining_batch(shared_data, normalize=large, pad=pad)

        with torch.no_grad():
            frames = model.feature_extractor(source).shape[-1]
        frame_pad = None
        if padding is not None:
            lengths = model._get_feat_extract_output_lengths((~padding).long().sum(-1))
            frame_pad = torch.arange(frames)[None] >= lengths[:, None]
        # seed, epoch and indices give fairseq's per-row generators fixed seeds (its data-seeded
        # masks); the global numpy seed covers its probabilistic rounding
        np.random.seed(20 + large)
        mask = compute_mask_indices((source.size(0), frames), frame_pad, 0.65, 5, min_masks=2,
                                    require_same_masks=True, seed=20 + large, epoch=1,
                                    indices=torch.arange(source.size(0)))
        mask = torch.from_numpy(mask)
        num = int(mask[0].sum())
        groups, entries = cfg.latent_groups, cfg.latent_vars
        # the first draw of Gumbel noise and distractors in which some distractor quantizes to
        # the same code as its target (fairseq's -inf case)
        for seed in range(30 + 100 * large, 130 + 100 * large):
            g = torch.Generator().manual_seed(seed)
            noise = -torch.empty(source.size(0) * num * groups, entries).exponential_(generator=g).log()
            negatives = fixed_w2v2_negatives(source.size(0), num, n_neg, cross, seed=seed)
            model.zero_grad(set_to_none=True)
            loss, sample_size, logging, logits = fairseq_fixed_criterion(
                model, source, padding, mask, torch.from_numpy(negatives).long(), noise, weights)
            if torch.isneginf(logits[1:]).any():
                break
        else:
            raise RuntimeError(f"{name}: no distractor draw with a duplicate of the target")

        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        np.savez(OUT / f"wav2vec2_{name}_pretrain.npz", mask=mask.numpy(), negatives=negatives,
                 gumbel_noise=noise.numpy(), source_shape=np.array(source.shape),
                 **{f"grad/{n}": grads[n].numpy() for n in GRAD_PARAMS if n in grads})
        info = {
            "checkpoint": ckpt, "clips": list(PRETRAIN_CLIPS), "padded": pad, "normalize": large,
            "num_updates": PRETRAIN_UPDATES, "num_negatives": n_neg, "cross_sample_negatives": cross,
            "loss_weights": weights, "loss": loss.item(), "sample_size": int(sample_size),
            "contrastive_loss": logging["loss_0"], "diversity_loss": logging["loss_1"],
            "features_pen": logging["loss_2"], "correct": logging["correct"], "count": logging["count"],
            "code_perplexity": logging["code_perplexity"], "prob_perplexity": logging["prob_perplexity"],
            "temp": logging["temp"],
            "grad_norms": {n: g.norm().item() for n, g in grads.items()},
        }
        (OUT / f"wav2vec2_{name}_pretrain.json").write_text(json.dumps(info, indent=1) + "\n")
        log.info("wav2vec2 %s pretraining loss %.6f over %d targets (%d correct)", name, info["loss"],
                 info["sample_size"], info["correct"])


class _DictTask:
    """The bit of a fairseq task that Wav2VecCtc.build_model reads."""

    def __init__(self, dictionary: Dictionary):
        self.target_dictionary = dictionary


def make_ctc(source: torch.Tensor, pretrained: Path) -> None:
    dict_path = OUT / "dict.ltr.txt"
    dict_path.write_text("".join(f"{c} {1000 - i}\n" for i, c in enumerate(LETTERS)))
    dictionary = Dictionary.load(str(dict_path))
    torch.manual_seed(5)
    asr_cfg = Wav2Vec2CtcConfig(w2v_path=str(pretrained), normalize=False, data="/data/ltr",
                                apply_mask=True, mask_prob=0.5, mask_channel_prob=0.1, final_dropout=0.0,
                                layerdrop=0.1, feature_grad_mult=0.0, freeze_finetune_updates=0)
    model = Wav2VecCtc.build_model(asr_cfg, _DictTask(dictionary)).eval()
    with torch.no_grad():
        # the fine-tuned output layer is not trained from zero; give it some spread
        model.w2v_encoder.proj.weight.normal_(std=0.5)
        out = model(source=source, padding_mask=None)
        logits = model.get_logits(out).transpose(0, 1)  # (B, T, V), fairseq's raw CTC logits
    save_npy(logits[0], "wav2vec2_ctc_logits.npy")

    # new style: cfg dict; model.w2v_args nested (Wav2VecEncoder filled it in)
    w2v_args = OmegaConf.to_container(asr_cfg.w2v_args, resolve=True, enum_to_str=True)
    model_cfg = {**dataclass_dict({k: v for k, v in asdict(asr_cfg).items() if k != "w2v_args"}),
                 "_name": "wav2vec_ctc", "w2v_args": w2v_args}
    full = {"_name": None, "common": {"fp16": True}, "distributed_training": {"ddp_backend": "legacy_ddp"},
            "model": model_cfg,
            "task": {"_name": "audio_finetuning", "data": "/data/ltr", "normalize": False, "labels": "ltr",
                     "sample_rate": 16000, "eval_wer": False},
            "criterion": {"_name": "ctc", "zero_infinity": True}}
    # the trainer stores the config resolved (OmegaConf.to_container(cfg, resolve=True))
    full = OmegaConf.to_container(OmegaConf.create(full), resolve=True)
    path = save(checkpoint(model.state_dict(), cfg=full), "wav2vec2_ctc_cfg.pt")
    # fairseq itself needs the dictionary from the data dir to rebuild the task; the file
    # gives it to fairseq below the same way it gives it to us (dict.ltr.txt).
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dict.ltr.txt").write_text(dict_path.read_text())
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": tmp})
        with torch.no_grad():
            again = models[0].eval().get_logits(models[0](source=source, padding_mask=None)).transpose(0, 1)
    np.testing.assert_allclose(again.numpy(), logits.numpy(), atol=1e-5)

    # old style, as wav2vec_small_960h.pt: args Namespace with w2v_args a Namespace of the pretraining args
    pre = torch.load(pretrained, weights_only=False)["cfg"]
    pre_args = {**pre["model"], "arch": "wav2vec2", "task": "audio_pretraining", "normalize": False,
                "sample_rate": 16000, "data": "/data/manifest", "criterion": "wav2vec", "infonce": True}
    pre_args.pop("_name", None)
    asr = dataclass_dict({k: v for k, v in asdict(asr_cfg).items() if k != "w2v_args"})
    args = Namespace(**{**asr, "arch": "wav2vec_ctc", "task": "audio_pretraining", "labels": "ltr",
                        "criterion": "ctc", "sample_rate": 16000, "w2v_args": Namespace(**pre_args)})
    save(checkpoint(model.state_dict(), args=args), "wav2vec2_ctc_args.pt")


# --------------------------------------------------------------------------- BERT on vq-wav2vec units


def make_unit_bert(source: torch.Tensor) -> None:
    """A tiny fairseq RoBERTa (masked_lm task) on the Gumbel vq-wav2vec fixture's units, args-style
    as vq-wav2vec's released ``bert_kmeans.pt``, with the ``dict.txt`` fairseq-preprocess writes;
    fairseq's layers and logits on ``<s> codes of the clip </s>``."""
    from fairseq.models.roberta import RobertaModel, base_architecture

    out = OUT / "unit_bert"
    out.mkdir(exist_ok=True)
    codes = np.load(OUT / "vq_wav2vec_gumbel_codes.npy")
    units = [f"{a}-{b}" for a, b in codes]
    counts: dict[str, int] = {}
    for u in units:
        counts[u] = counts.get(u, 0) + 1
    ranked = sorted(counts, key=lambda u: (-counts[u], u))
    # the clip's least frequent unit is left out (it reads as <unk>); two units the clip lacks are in
    symbols = [(u, 10 * counts[u]) for u in ranked[:-1]] + [("39-39", 3), ("0-0", 2)]
    dictionary = Dictionary()
    for sym, n in symbols:
        dictionary.add_symbol(sym, n)
    dictionary.save(str(out / "dict.txt"))
    mask_idx = dictionary.add_symbol("<mask>")  # what fairseq's masked_lm task does on loading

    args = Namespace(arch="roberta_base", task="masked_lm", criterion="masked_lm", data="/data/units",
                     tokens_per_sample=64, max_positions=64, encoder_layers=2, encoder_embed_dim=32,
                     encoder_ffn_embed_dim=64, encoder_attention_heads=4, dropout=0.1, attention_dropout=0.1,
                     activation_dropout=0.0, sample_break_mode="eos", mask_prob=0.5, mask_multiple_length=10,
                     leave_unmasked_prob=0.1, random_token_prob=0.1, seed=3)
    base_architecture(args)

    class _Task:
        source_dictionary = target_dictionary = dictionary

    torch.manual_seed(3)
    model = RobertaModel.build_model(args, _Task()).eval()
    tokens = [dictionary.bos()] + [dictionary.index(u) for u in units] + [dictionary.eos()]
    src = torch.tensor([tokens])
    with torch.no_grad():
        logits, extra = model(src, features_only=False, return_all_hiddens=True)
        layers = torch.stack([h.transpose(0, 1)[0] for h in extra["inner_states"]])  # (L + 1, T, C)
    np.save(out / "tokens.npy", np.asarray(tokens))
    save_npy(layers, "unit_bert/layers.npy")
    save_npy(logits[0], "unit_bert/logits.npy")
    assert mask_idx == len(dictionary) - 1 and logits.shape[-1] == len(dictionary)
    path = save(checkpoint(model.state_dict(), args=args), "unit_bert/bert_units_args.pt")
    # fairseq itself reads it back, its dictionary from the data folder as usual
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dict.txt").write_text((out / "dict.txt").read_text())
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": tmp})
        with torch.no_grad():
            again, _ = models[0].eval()(src, features_only=False)
    np.testing.assert_allclose(again[0].numpy(), logits[0].numpy(), atol=1e-5)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--only", choices=["unit_bert"], default=None,
                    help="make only this fixture (the others stay as they are)")
    ap.add_argument("--only-pretraining", action="store_true",
                    help="only the wav2vec 2.0 pretraining loss fixtures (from the checkpoints already there)")
    opts = ap.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    wav, sr = sf.read(opts.shared_data / CLIP, dtype="float32")
    log.info("clip %s: %d samples at %d Hz (fed as they are)", CLIP, len(wav), sr)
    source = torch.from_numpy(wav).unsqueeze(0)
    if opts.only == "unit_bert":
        make_unit_bert(source)
        return
    if opts.only_pretraining:
        make_wav2vec2_pretraining(opts.shared_data)
        return
    make_wav2vec(source)
    make_wav2vec_options(source)
    make_vq_wav2vec(source)
    base = make_wav2vec2(source)
    make_ctc(source, base)
    make_unit_bert(source)
    make_wav2vec2_pretraining(opts.shared_data)
    (OUT / "README.md").write_text(
        "Small checkpoints written by fairseq 0.12 (fairseq-fixed) with fairseq's own model classes\n"
        "and shrunken widths, and the outputs fairseq computed from them on the FSDD clip\n"
        f"`{CLIP}` (its 8 kHz samples fed as they are). Made by `tools/make_fairseq_fixtures.py`;\n"
        "see its docstring. Tests: tests/test_fairseq_import.py.\n\n"
        "`wav2vec2_{base,large}_pretrain.{json,npz}`: fairseq's Wav2vecCriterion (loss terms, accuracy,\n"
        "perplexities, gradients) on the two wav2vec 2.0 checkpoints in training mode, with the mask,\n"
        "distractors and Gumbel noise stored (`--only-pretraining` remakes just these). Test:\n"
        "tests/test_fairseq_criterion.py.\n"
    )
    log.info("done")


if __name__ == "__main__":
    sys.exit(main())
