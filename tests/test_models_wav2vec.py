"""wav2vec (2019) and vq-wav2vec: architecture, padding exactness, negatives, the contrastive loss, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from w2vtools.errors import W2VError
from w2vtools.models.presets import PRESETS, get_preset
from w2vtools.models.layers import receptive_field
from w2vtools.models.wav2vec import Wav2VecConfig, Wav2VecModel, Wav2VecPredictionsModel

TINY = ["wav2vec-tiny", "vq-wav2vec-gumbel-tiny", "vq-wav2vec-kmeans-tiny"]


def tiny(name: str, seed: int = 0, **overrides) -> Wav2VecModel:
    torch.manual_seed(seed)
    cfg = get_preset(name)
    if overrides:
        cfg = Wav2VecConfig.from_dict({**cfg.to_dict(), **overrides})
    return Wav2VecModel(cfg)


# --------------------------------------------------------------------------- architecture


def test_published_geometry():
    base = get_preset("wav2vec-base")
    # encoder: kernels (10, 8, 4, 4, 4), strides (5, 4, 2, 2, 2): 10 ms hop, ~30 ms receptive field
    assert [(k, s) for _, k, s in base.conv_feature_layers] == [(10, 5), (8, 4), (4, 2), (4, 2), (4, 2)]
    rf = receptive_field(base.conv_feature_layers)
    assert rf == 465 and 0.025 < rf / 16000 < 0.031
    model = Wav2VecModel(base)
    assert model.frame_shift == pytest.approx(0.010)
    # context network: 9 layers of kernel 3 -> each frame sees 18 more encoder frames (~210 ms)
    assert [k for _, k, _ in base.conv_aggregator_layers] == [3] * 9
    context_rf = (rf + 160 * sum(k - 1 for _, k, _ in base.conv_aggregator_layers)) / 16000
    assert context_rf == pytest.approx(0.21, abs=0.005)
    assert base.prediction_steps == 12 and base.num_negatives == 10 and base.log_compression

    large = get_preset("wav2vec-large")
    assert large.conv_feature_layers[5:] == [(512, 1, 1)] * 3  # the extra 1x1 layers
    assert [k for _, k, _ in large.conv_aggregator_layers] == list(range(2, 14))
    assert large.skip_connections_agg and large.residual_scale == 0.5

    for name, vq in (("vq-wav2vec-gumbel", "gumbel"), ("vq-wav2vec-kmeans", "kmeans")):
        cfg = get_preset(name)
        assert (cfg.vq_type, cfg.vq_groups, cfg.vq_vars) == (vq, 2, 320)
        assert cfg.family == "vq-wav2vec"
    assert get_preset("vq-wav2vec-kmeans").vq_gamma == 0.25 and get_preset("vq-wav2vec-kmeans").loss_weights == [1.0]


def test_large_model_shapes_and_names():
    model = Wav2VecModel(get_preset("wav2vec-large"))
    sd = model.state_dict()
    # fairseq's names: Sequential(conv, dropout, norm, act) / (pad, conv, dropout, norm, act)
    assert sd["feature_extractor.conv_layers.0.0.weight"].shape == (512, 1, 10)
    assert sd["feature_extractor.conv_layers.7.2.weight"].shape == (512,)
    assert sd["feature_aggregator.conv_layers.11.1.weight"].shape == (512, 512, 13)
    assert sd["wav2vec_predictions.project_to_steps.weight"].shape == (512, 512, 1, 12)
    assert not any(k.startswith("feature_aggregator.residual_proj") for k in sd)  # same dims: no projection


def test_presets_reachable_through_presets_module():
    from w2vtools.models.presets import list_presets

    assert get_preset("vq-wav2vec", "gumbel").vq_type == "gumbel"
    assert get_preset("wav2vec-large").conv_aggregator_layers[-1] == (512, 13, 1)
    names = set(list_presets())
    assert {("wav2vec", "tiny"), ("wav2vec", "large"), ("vq-wav2vec", "kmeans-tiny")} <= names


@pytest.mark.parametrize("name", TINY)
def test_num_frames_and_outputs(name):
    model = tiny(name).eval()
    for n in (465, 466, 1000, 16000, 16001):
        out = model.extract_features(torch.randn(1, n))
        assert out.features.shape[1] == model.num_frames(n)
    outputs = ["c", "z"] + (["q"] if model.vector_quantizer is not None else [])
    dims = {"c": model.cfg.conv_aggregator_layers[-1][0], "z": 64, "q": 64}
    for out in outputs:
        assert model.extract_features(torch.randn(2, 4000), output=out).features.shape == (2, 23, dims[out])


def test_bad_requests():
    model = tiny("wav2vec-tiny").eval()
    with pytest.raises(W2VError, match="shorter than the wav2vec encoder's receptive field"):
        model.extract_features(torch.randn(1, 300))
    with pytest.raises(W2VError, match="needs a vq-wav2vec model"):
        model.extract_features(torch.randn(1, 4000), output="q")
    with pytest.raises(W2VError, match="no quantizer"):
        model.quantize(torch.randn(1, 4000))
    with pytest.raises(W2VError, match="no layers"):
        model.extract_features(torch.randn(1, 4000), layer=3)
    with pytest.raises(W2VError, match="unknown vq_type"):
        Wav2VecConfig(vq_type="rvq")


def test_config_round_trip():
    for family in ("wav2vec", "vq-wav2vec"):
        for make in PRESETS[family].values():
            cfg = make()
            assert Wav2VecConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("name", TINY)
def test_same_features_alone_or_padded_in_a_batch(name):
    model = tiny(name, seed=3).eval()
    torch.manual_seed(1)
    a, b = torch.randn(6000), torch.randn(3500)
    batch = torch.zeros(2, 6000)
    batch[0], batch[1, :3500] = a, b
    pad = torch.zeros(2, 6000, dtype=torch.bool)
    pad[1, 3500:] = True
    outputs = ["c", "z"] + (["q"] if model.vector_quantizer is not None else [])
    for out in outputs:
        batched = model.extract_features(batch, pad, output=out)
        alone_a = model.extract_features(a[None], output=out).features[0]
        alone_b = model.extract_features(b[None], output=out).features[0]
        nb = model.num_frames(3500)
        assert batched.padding_mask[1].sum() == batched.features.shape[1] - nb
        torch.testing.assert_close(batched.features[0], alone_a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.features[1, :nb], alone_b, atol=1e-5, rtol=1e-5)
        assert batched.features[1, nb:].abs().sum() == 0
    if model.vector_quantizer is not None:
        codes = model.quantize(batch, pad)
        assert torch.equal(codes[0], model.quantize(a[None])[0])
        assert torch.equal(codes[1, :nb], model.quantize(b[None])[0])
        assert (codes[1, nb:] == -1).all()


# --------------------------------------------------------------------------- negatives and the loss


def test_negatives_come_uniformly_from_the_same_utterance_and_never_the_positive():
    torch.manual_seed(0)
    preds = Wav2VecPredictionsModel(8, 8, 3, n_negatives=10, cross_sample_negatives=0, sample_distance=None,
                                    dropout=0.0, offset=1)
    bsz, tsz = 2, 12
    lengths = torch.tensor([12, 7])
    # y[b, :, t] encodes (b, t) so a drawn vector tells where it came from
    y = torch.zeros(bsz, 8, tsz)
    y[:, 0] = torch.arange(bsz)[:, None].float()
    y[:, 1] = torch.arange(tsz)[None, :].float()
    counts = torch.zeros(bsz, tsz, tsz)
    for _ in range(200):
        negs = preds.sample_negatives(y, lengths)  # (N, B, C, T)
        assert negs.shape == (10, bsz, 8, tsz)
        src_b, src_t = negs[:, :, 0].long(), negs[:, :, 1].long()
        assert (src_b == torch.arange(bsz)[None, :, None]).all()
        t_idx = torch.arange(tsz)[None, None, :]
        valid_t = t_idx < lengths[None, :, None]
        assert ((src_t != t_idx) | ~valid_t).all()  # never the positive's own frame
        assert (src_t < lengths[None, :, None]).all()  # never a padded frame
        for b in range(bsz):
            counts[b].index_put_((torch.arange(tsz).repeat(10), src_t[:, b].reshape(-1)), torch.ones(10 * tsz),
                                 accumulate=True)
    # utterance 0, frame 5: the 11 other frames are drawn about equally often (2000 draws)
    row = counts[0, 5]
    assert row[5] == 0
    others = row[torch.arange(12) != 5]
    assert others.min() > 0.6 * others.mean() and others.max() < 1.4 * others.mean()


def _fairseq_bce_reference(model: Wav2VecModel, x: torch.Tensor, y: torch.Tensor, negs: torch.Tensor):
    """fairseq's Wav2VecPredictionsModel.forward + BCE criterion, written out as fairseq loops."""
    preds = model.wav2vec_predictions
    x = preds.project_to_steps(x.unsqueeze(-1))
    targets = torch.cat([y.unsqueeze(0), negs], dim=0)
    copies = targets.size(0)
    bsz, dim, tsz, steps = x.shape
    steps = min(steps, tsz - preds.offset)
    logits, labels = [], []
    for i in range(steps):
        offset = i + preds.offset
        p = torch.einsum("bct,nbct->nbt", x[..., :-offset, i], targets[..., offset:]).flatten()
        lab = torch.zeros_like(p)
        lab[: p.numel() // copies] = 1.0
        logits.append(p)
        labels.append(lab)
    logits, labels = torch.cat(logits), torch.cat(labels)
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    return loss, int(labels.sum())


@pytest.mark.parametrize("name", TINY)
def test_loss_is_fairseqs_binary_cross_entropy(name, monkeypatch):
    model = tiny(name, seed=5).train()
    torch.manual_seed(2)
    source = torch.randn(2, 5000)
    fixed = {}
    original = Wav2VecPredictionsModel.sample_negatives

    def remember(self, y, lengths):
        fixed["negs"] = original(self, y, lengths)
        fixed["y"] = y
        return fixed["negs"]

    monkeypatch.setattr(Wav2VecPredictionsModel, "sample_negatives", remember)
    captured = {}
    agg = model.feature_aggregator
    orig_agg_forward = agg.forward

    def agg_forward(x, padding_mask=None):
        out = orig_agg_forward(x, padding_mask)
        captured["c"] = out
        return out

    monkeypatch.setattr(agg, "forward", agg_forward)
    # dropout off so the reference sees the same context
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    net_output = model(source)
    loss, sample_size, stats = model.pretraining_loss(net_output)
    with torch.no_grad():
        ref_loss, ref_size = _fairseq_bce_reference(model, captured["c"], fixed["y"], fixed["negs"])
    extra = 0.0
    if model.cfg.vq_type == "kmeans":  # --loss-weights [1]: + kmeans_loss * sample_size
        extra = net_output["kmeans_loss"].item() * ref_size
    assert sample_size == ref_size
    assert loss.item() == pytest.approx(float(ref_loss) + extra, rel=1e-5)
    assert stats["loss_contrastive"] == pytest.approx(float(ref_loss), rel=1e-5)
    assert 0.0 <= stats["accuracy"] <= 1.0
    if model.cfg.vq_type == "gumbel":
        assert {"prob_perplexity", "code_perplexity", "temp"} <= set(stats)
        assert "loss_quantizer" not in stats  # the published Gumbel recipe adds no extra loss
    loss.backward()
    assert model.feature_extractor.conv_layers[0][0].weight.grad.abs().sum() > 0


def test_padded_training_batch_counts_only_real_targets():
    model = tiny("wav2vec-tiny").train()
    source = torch.randn(2, 6000)
    pad = torch.zeros(2, 6000, dtype=torch.bool)
    pad[1, 3000:] = True
    out = model(source, pad)
    offset = model.wav2vec_predictions.offset
    lengths = [model.num_frames(6000), model.num_frames(3000)]
    steps = min(model.cfg.prediction_steps, lengths[0] - offset)
    expected = sum(max(n - (i + offset), 0) for i in range(steps) for n in lengths)
    assert out["cpc_logits"].shape == (expected, 1 + model.cfg.num_negatives)
    loss, sample_size, _ = model.pretraining_loss(out)
    assert sample_size == expected and torch.isfinite(loss)


def test_infonce_and_balanced_classes():
    model = tiny("wav2vec-tiny", infonce=True).train()
    with torch.no_grad():
        out = model(torch.randn(1, 4000))
    loss, size, _ = model.pretraining_loss(out)
    logits = out["cpc_logits"]
    assert size == logits.shape[0]
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, torch.zeros(size, dtype=torch.long),
                                                                reduction="sum")), rel=1e-5)
    model = tiny("wav2vec-tiny", balanced_classes=True).train()
    with torch.no_grad():
        out = model(torch.randn(1, 4000))
    loss, size, _ = model.pretraining_loss(out)
    lg = out["cpc_logits"]
    ref = F.softplus(-lg[:, 0]).sum() + F.softplus(lg[:, 1:]).sum() / model.cfg.num_negatives
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_gumbel_temperature_anneals():
    model = tiny("vq-wav2vec-gumbel-tiny").train()
    start, end, decay = model.cfg.vq_temp
    model.set_num_updates(0)
    assert model(torch.randn(1, 4000))["temp"] == pytest.approx(start)
    model.set_num_updates(100)
    assert model(torch.randn(1, 4000))["temp"] == pytest.approx(start * decay**100)
    model.set_num_updates(10**7)
    assert model(torch.randn(1, 4000))["temp"] == pytest.approx(end)


def test_negatives_are_drawn_with_torch_rng():
    """Same torch seed, same negatives and loss: saving the RNG state resumes exactly."""
    model = tiny("vq-wav2vec-gumbel-tiny").train()
    x = torch.randn(2, 4000)
    losses = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        losses.append(model.pretraining_loss(model(x))[0].item())
    a, b, c = losses
    assert a == b and a != c


# --------------------------------------------------------------------------- training on real speech


def _fsdd_batch(fsdd, n: int = 8, samples: int = 8000) -> torch.Tensor:
    from w2vtools.audio import load_audio

    files = sorted(fsdd.glob("*_jackson_1*.wav"))[:n]
    rows = []
    for f in files:
        wav = load_audio(str(f), sample_rate=16000)
        wav = np.pad(wav, (0, max(0, samples - len(wav))))[:samples]
        rows.append(torch.from_numpy(wav))
    return torch.stack(rows)


@pytest.mark.parametrize("name", TINY)
def test_a_few_adam_steps_reduce_the_loss(fsdd, name):
    torch.set_num_threads(2)
    batch = _fsdd_batch(fsdd)
    model = tiny(name, seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def eval_loss() -> float:
        state = torch.get_rng_state()
        torch.manual_seed(123)  # same negatives and Gumbel noise each time
        with torch.no_grad():
            loss, size, _ = model.pretraining_loss(model(batch))
        torch.set_rng_state(state)
        return float(loss) / size

    before = eval_loss()
    for step in range(20):
        model.set_num_updates(step)
        loss, size, _ = model.pretraining_loss(model(batch))
        opt.zero_grad()
        (loss / size).backward()
        opt.step()
    after = eval_loss()
    assert math.isfinite(after)
    print(f"{name}: loss per target {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before, (before, after)
