"""Our wav2vec 2.0 pretraining loss and its gradients equal fairseq's ``Wav2vecCriterion``'s.

The fixtures ``wav2vec2_{base,large}_pretrain.{json,npz}`` were written by
tools/make_fairseq_fixtures.py in a fairseq 0.12 virtualenv: fairseq's own
``Wav2Vec2Model`` with the weights of ``wav2vec2_base_cfg.pt`` (post-LN, group-norm
feature encoder, feature gradients x 0.1) and ``wav2vec2_large_args_fp16.pt`` (pre-LN,
layer-norm encoder, normalized input), in training mode with dropout off, on two FSDD
clips (BASE: cropped to one length; LARGE: zero-padded, with cross-sample distractors),
run through fairseq's criterion (InfoNCE + diversity + feature penalty with the stored
loss weights) and back-propagated. The randomness is fixed and stored: the time mask
(drawn by fairseq's ``compute_mask_indices``), the distractor indices and the Gumbel noise
of the quantizer's straight-through hard Gumbel softmax (a draw in which some distractor
quantizes to its target's code, so the -inf rule is exercised). Here the same checkpoints are
imported without fairseq, the same randomness is put in, and the loss terms, accuracy,
perplexities and gradients are compared.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import w2vtools.models.wav2vec2 as wav2vec2_module
from w2vtools.models.fairseq import load_fairseq
from w2vtools.models.wav2vec2 import Wav2Vec2Model
from w2vtools.train.objectives import PretrainObjective

FIX = Path(__file__).resolve().parent / "fixtures" / "fairseq"
STYLES = ["base", "large"]
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
                  dropout_input=0.0, dropout_features=0.0)


def fixed_gumbel_softmax(noise: torch.Tensor):
    """torch's hard Gumbel softmax with the noise given (the fixture's generator uses the same)."""

    def gumbel_softmax(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
        y_soft = ((logits + noise.view_as(logits).to(logits)) / tau).softmax(dim)
        if not hard:
            return y_soft
        y_hard = torch.zeros_like(logits).scatter_(dim, y_soft.argmax(dim, keepdim=True), 1.0)
        return y_hard - y_soft.detach() + y_soft

    return gumbel_softmax


def batch(shared_data: Path, info: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixture's two clips, raw (the model normalizes when its config says so), cropped or padded."""
    import soundfile as sf

    wavs = [torch.from_numpy(sf.read(shared_data / clip, dtype="float32")[0]) for clip in info["clips"]]
    size = (max if info["padded"] else min)(len(w) for w in wavs)
    source = torch.zeros(len(wavs), size)
    padding = torch.zeros(len(wavs), size, dtype=torch.bool)
    for i, w in enumerate(wavs):
        source[i, : min(len(w), size)] = w[:size]
        padding[i, len(w):] = True
    return source, (padding if info["padded"] else None)


@pytest.fixture(scope="module", params=STYLES)
def run(request, shared_data):
    """Our model on the fixture's weights, batch, mask, distractors and noise: loss, stats, gradients."""
    style = request.param
    info = json.loads((FIX / f"wav2vec2_{style}_pretrain.json").read_text())
    arrays = np.load(FIX / f"wav2vec2_{style}_pretrain.npz")
    loaded = load_fairseq(FIX / info["checkpoint"])
    div_weight, pen_weight = info["loss_weights"]
    cfg = dataclasses.replace(loaded.config, **NO_DROPOUT, num_negatives=info["num_negatives"],
                              cross_sample_negatives=info["cross_sample_negatives"],
                              diversity_weight=div_weight, feature_pen_weight=pen_weight)
    assert cfg.normalize == info["normalize"]
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(loaded.model.state_dict())
    model.train()
    model.set_num_updates(info["num_updates"])
    source, padding = batch(shared_data, info)
    assert list(source.shape) == arrays["source_shape"].tolist()

    mask = torch.from_numpy(arrays["mask"])
    negatives = torch.from_numpy(arrays["negatives"]).long()
    calls = []

    def fixed_mask(shape, padding_mask, *args, **kwargs):
        assert tuple(shape) == tuple(mask.shape)
        if padding_mask is not None:  # the fixture's mask lies within our frame padding
            assert not (mask & padding_mask).any()
        calls.append(shape)
        return mask.clone()

    net_outputs = []
    pretraining_loss = model.pretraining_loss

    def keep_net_output(net_output):
        net_outputs.append(net_output)
        return pretraining_loss(net_output)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "pretraining_loss", keep_net_output)
        mp.setattr(wav2vec2_module, "compute_mask_indices", fixed_mask)
        mp.setattr(model, "sample_negatives", lambda y, num: negatives)
        mp.setattr(F, "gumbel_softmax", fixed_gumbel_softmax(torch.from_numpy(arrays["gumbel_noise"])))
        objective = PretrainObjective()
        loss, sample_size, stats = objective(model, {"source": source, "padding_mask": padding})
        loss.backward()
    assert calls == [tuple(mask.shape)]
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"style": style, "info": info, "arrays": arrays, "loss": loss, "sample_size": sample_size,
            "stats": stats, "grads": grads, "net_output": net_outputs[0], "objective": objective}


def test_loss_terms_match_fairseq(run):
    info, stats = run["info"], run["stats"]
    assert run["sample_size"] == info["sample_size"] == int(run["arrays"]["mask"].sum())
    assert run["loss"].item() == pytest.approx(info["loss"], rel=1e-5)
    # fairseq's loss_0, loss_1, loss_2: contrastive, weighted diversity, weighted feature penalty
    for key in ("contrastive_loss", "diversity_loss", "features_pen"):
        assert stats[key] == pytest.approx(info[key], rel=1e-5), key
    assert stats["correct"] == info["correct"] and stats["count"] == info["count"]
    for key in ("code_perplexity", "prob_perplexity", "temp"):
        assert stats[key] == pytest.approx(info[key], rel=1e-5), key
    # the logged numbers are fairseq's (bits per target, accuracy = correct / count)
    metrics = run["objective"].metrics({**stats, "_batches": 1})
    assert metrics["loss"] == pytest.approx(info["loss"] / info["sample_size"] / np.log(2), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(info["correct"] / info["count"])


def test_every_parameter_gets_fairseqs_gradient(run):
    """Gradient norms of every parameter (the same parameters get one), whole gradients of a
    spread: feature encoder (through the 0.1 gradient multiplier for BASE), mask embedding,
    positional convolution, attention, quantizer (straight-through and diversity), projections."""
    info, grads, arrays = run["info"], run["grads"], run["arrays"]
    assert sorted(grads) == sorted(info["grad_norms"])
    for name, norm in info["grad_norms"].items():
        if name.endswith("self_attn.k_proj.bias"):
            # zero in exact arithmetic (the soft-max ignores a shift shared by all keys): rounding only
            assert norm < 1e-7 and grads[name].norm().item() < 1e-7, name
        else:
            assert grads[name].norm().item() == pytest.approx(norm, rel=2e-5), name
    stored = [k for k in arrays.files if k.startswith("grad/")]
    assert len(stored) >= 14
    for key in stored:
        name = key[len("grad/"):]
        expected = arrays[key]
        scale = max(float(np.abs(expected).max()), 1e-12)
        np.testing.assert_allclose(grads[name].numpy(), expected, rtol=0, atol=3e-5 * scale, err_msg=name)


def test_distractors_equal_to_the_target_are_ruled_out(run):
    """With 20 codes a group some distractors quantize to the target itself: fairseq scores them
    -inf, and the loss above matches only if we do the same. The fixture must have some."""
    logits = run["net_output"]["x"]  # (1+N, B, M)
    assert torch.isneginf(logits[1:]).any() and not torch.isinf(logits[0]).any()
