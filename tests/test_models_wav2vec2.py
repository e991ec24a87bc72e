"""wav2vec 2.0 model: masking, distractors, loss, quantizers, CTC head, presets, real-audio training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from w2vtools.models.ctc import CTCConfig, CTCModel
from w2vtools.models.presets import count_preset_parameters, get_preset
from w2vtools.models.quantizers import GumbelVectorQuantizer, KmeansVectorQuantizer
from w2vtools.models import layers as layers_module
from w2vtools.models.layers import MultiheadAttention, dropout, keep_mask
from w2vtools.models import wav2vec2 as wav2vec2_module
from w2vtools.models.wav2vec2 import Wav2Vec2Model, compute_mask_indices

torch.set_num_threads(2)


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of runs of True."""
    runs, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


# --------------------------------------------------------------------------- masking


def test_mask_fraction_matches_fairseq_expectation():
    torch.manual_seed(0)
    mask = compute_mask_indices((64, 500), None, 0.65, 10, min_masks=2, require_same_masks=False)
    # 0.65 x 500 / 10 = 32.5 spans of 10 at random starts, overlapping: 1 - (1 - 0.065)^10 ~ 49 %
    expected = 1 - (1 - 0.065) ** 10
    assert abs(mask.float().mean().item() - expected) < 0.03


def test_mask_same_count_min_masks_and_padding():
    torch.manual_seed(1)
    pad = torch.zeros(4, 300, dtype=torch.bool)
    pad[1, 200:] = True
    pad[2, 40:] = True
    mask = compute_mask_indices((4, 300), pad, 0.65, 10, min_masks=2, require_same_masks=True)
    counts = mask.sum(-1)
    assert len(set(counts.tolist())) == 1 and counts[0] > 0
    assert not (mask & pad).any()
    # a 12-frame utterance still gets min_masks spans
    short = compute_mask_indices((1, 12), None, 0.65, 10, min_masks=2)
    assert short.sum() >= 10


def test_mask_no_overlap_keeps_spans_apart():
    torch.manual_seed(2)
    mask = compute_mask_indices((16, 400), None, 0.65, 10, min_masks=2, no_overlap=True, min_space=2,
                                require_same_masks=False)
    for row in mask:
        runs = _runs(row)
        assert runs and all(length == 10 for _, length in runs)  # disjoint spans never merge
        for (s1, _), (s2, _) in zip(runs, runs[1:]):
            assert s2 - (s1 + 10) >= 2


def test_mask_reproducible_from_torch_seed():
    torch.manual_seed(3)
    a = compute_mask_indices((3, 200), None, 0.65, 10, min_masks=2)
    torch.manual_seed(3)
    b = compute_mask_indices((3, 200), None, 0.65, 10, min_masks=2)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- pretraining pieces


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Wav2Vec2Model(get_preset("wav2vec2", "tiny"))


def test_negatives_come_from_other_frames_of_the_same_utterance(tiny):
    tiny.cfg.num_negatives = 50
    b, m = 3, 7
    # frame j of utterance i is the vector [i, j]: distinguishable everywhere
    y = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(m), indexing="ij"), -1).float()
    idx = tiny.sample_negatives(y, m)
    assert idx.shape == (b, m, 50)
    negs = y.reshape(b * m, 2)[idx]  # (B, M, N, 2)
    assert (negs[..., 0] == torch.arange(b).view(b, 1, 1)).all()  # same utterance
    assert (negs[..., 1] != torch.arange(m).view(1, m, 1)).all()  # never the positive
    assert len(torch.unique(negs[0, 0, :, 1])) == m - 1  # every other frame is drawn


def test_cross_sample_negatives_avoid_only_the_target(tiny):
    tiny.cfg.num_negatives, tiny.cfg.cross_sample_negatives = 0, 200
    b, m = 3, 4
    idx = tiny.sample_negatives(torch.randn(b, m, 8), m)
    assert idx.shape == (b, m, 200)
    own = torch.arange(b * m).view(b, m, 1)
    assert (idx != own).all() and idx.min() == 0 and idx.max() == b * m - 1
    assert (idx // m != torch.arange(b).view(b, 1, 1)).any()  # other utterances are drawn


@pytest.mark.parametrize("cross", [0, 3])
def test_logits_equal_cosines_of_gathered_distractors(tiny, cross):
    """The similarity-matrix logits equal fairseq's way: gather (N, B, M, C), cosine each."""
    tiny.cfg.num_negatives, tiny.cfg.cross_sample_negatives = 5, cross
    torch.manual_seed(1)
    b, m, c = 2, 6, 8
    x = torch.randn(b, m, c, requires_grad=True)
    y = torch.randn(b, m, c, requires_grad=True)
    y_dup = y.detach().clone()
    y_dup[0, 3] = y_dup[0, 1]  # the same code twice: a distractor may equal the target
    y2 = y_dup.requires_grad_()
    idx = tiny.sample_negatives(y2, m)
    idx[0, 1, 0] = 3  # make sure the duplicate is drawn as a distractor of frame 1
    logits = tiny.compute_preds(x, y2, idx)
    assert logits.shape == (1 + idx.size(-1), b, m)

    negs = y2.reshape(b * m, c)[idx].permute(2, 0, 1, 3)  # (N, B, M, C): fairseq's layout
    targets = torch.cat([y2.unsqueeze(0), negs], dim=0)
    expected = F.cosine_similarity(x.unsqueeze(0), targets, dim=-1) / 0.1
    dup = (y2.unsqueeze(0) == negs).all(-1)
    assert dup[0, 0, 1] and dup.sum() >= 1
    assert logits[1, 0, 1] == float("-inf")
    assert torch.equal(torch.isinf(logits[1:]), dup)
    finite = torch.isfinite(logits)
    torch.testing.assert_close(logits[finite], expected[finite], atol=1e-5, rtol=1e-5)
    # gradients of a loss over the finite logits agree too
    w = torch.randn_like(logits)
    gx, gy = torch.autograd.grad((logits[finite] * w[finite]).sum(), (x, y2))
    ex, ey = torch.autograd.grad((expected[finite] * w[finite]).sum(), (x, y2))
    torch.testing.assert_close(gx, ex, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gy, ey, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_duplicate_distractors_in_half_precision(tiny, dtype):
    """Under fp16/bf16 autocast the logits are half precision: a duplicate target still gets -inf
    (a finite 'large' fill such as -2**30 overflows float16), and the loss and its gradient stay finite."""
    tiny.cfg.num_negatives, tiny.cfg.cross_sample_negatives = 5, 0
    torch.manual_seed(1)
    b, m, c = 2, 6, 8
    x = torch.randn(b, m, c, dtype=dtype, requires_grad=True)
    y = torch.randn(b, m, c, dtype=dtype)
    y[0, 3] = y[0, 1]
    y.requires_grad_()
    idx = tiny.sample_negatives(y, m)
    idx[0, 1, 0] = 3
    logits = tiny.compute_preds(x, y, idx)
    assert logits.dtype == dtype and logits[1, 0, 1] == float("-inf")
    loss = F.cross_entropy(logits.permute(1, 2, 0).reshape(b * m, -1).float(), torch.zeros(b * m, dtype=torch.long))
    gx, gy = torch.autograd.grad(loss, (x, y))
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_positional_convolution_runs_in_float32_under_autocast(tiny, monkeypatch):
    monkeypatch.setattr(wav2vec2_module, "cpu_has_amx", lambda: False)  # what a CPU without AMX tiles does
    conv = tiny.encoder.pos_conv[0]
    x = torch.randn(2, conv.channels, 50, requires_grad=True)
    expected = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        assert torch.mm(x[0, :2], x[0, :2].t()).dtype == torch.bfloat16  # autocast is on around it
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    got.sum().backward()
    assert conv.weight_v.grad.dtype == torch.float32 and torch.isfinite(conv.weight_v.grad).all()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_first_convolution_runs_in_float32_under_cpu_autocast(tiny, native_bf16, monkeypatch):
    """In training under bf16 autocast the one-channel first convolution runs in float32 (its
    bf16 oneDNN kernel was 4x slower, and the group norm after it is float32 anyway); the
    convolutions after it run in bf16: as GEMMs on time-major frames where the CPU has native
    bf16 products (layers.cpu_has_native_bf16), else as oneDNN's convolutions."""
    monkeypatch.setattr(layers_module, "cpu_has_native_bf16", lambda: native_bf16)
    tiny.train()
    seen = {}
    hooks = [tiny.feature_extractor.conv_layers[i][0].register_forward_hook(
        lambda module, args, out, i=i: seen.__setitem__(i, (args[0].dtype, out.dtype))) for i in (0, 1)]
    gemm = wav2vec2_module.conv1d_time_major
    calls = []
    monkeypatch.setattr(wav2vec2_module, "conv1d_time_major", lambda *a: calls.append(a[0].dtype) or gemm(*a))
    wav = torch.randn(2, 4000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = tiny.feature_extractor(wav)
    for hook in hooks:
        hook.remove()
    assert seen[0] == (torch.float32, torch.float32)
    num_later = len(tiny.feature_extractor.conv_layers) - 1
    if native_bf16:  # the module is not called: its GEMMs are
        assert 1 not in seen and calls == [torch.float32] + [torch.bfloat16] * (num_later - 1)
    else:
        assert seen[1][1] == torch.bfloat16 and calls == []
    assert features.dtype == torch.bfloat16
    features.float().sum().backward()
    for block in tiny.feature_extractor.conv_layers:
        assert block[0].weight.grad.dtype == torch.float32 and torch.isfinite(block[0].weight.grad).all()


def test_positional_convolution_runs_in_bfloat16_under_cpu_autocast_with_amx(tiny, monkeypatch):
    """With AMX tiles oneDNN's bf16 grouped convolution is the faster one (BENCHMARKS.md), so
    bf16 autocast on the CPU leaves it to autocast; float16 autocast still runs it in float32."""
    monkeypatch.setattr(wav2vec2_module, "cpu_has_amx", lambda: True)
    conv = tiny.encoder.pos_conv[0]
    x = torch.randn(2, conv.channels, 50, requires_grad=True)
    expected = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
    assert got.dtype == torch.bfloat16
    assert float((got.detach().float() - expected.detach()).norm() / expected.detach().norm()) < 0.02
    got.float().sum().backward()
    assert conv.weight_v.grad.dtype == torch.float32 and torch.isfinite(conv.weight_v.grad).all()
    with torch.autocast("cpu", dtype=torch.float16):
        assert conv(x).dtype == torch.float32


def test_pretraining_loss_is_fairseq_sum(tiny):
    tiny.train()
    torch.manual_seed(5)
    wav = torch.randn(2, 16000)
    pad = torch.zeros(2, 16000, dtype=torch.bool)
    pad[1, 11000:] = True
    out = tiny(wav, pad)
    loss, sample_size, stats = tiny.pretraining_loss(out)
    logits = out["x"]
    n_neg = tiny.cfg.num_negatives
    assert logits.shape[0] == 1 + n_neg and logits.shape[1] == 2
    assert sample_size == logits.shape[1] * logits.shape[2] == out["mask_indices"].sum()
    ce = F.cross_entropy(logits.permute(1, 2, 0).reshape(-1, 1 + n_neg), torch.zeros(sample_size, dtype=torch.long),
                         reduction="sum")
    nv = out["num_vars"]
    expected = ce + 0.1 * (nv - out["prob_perplexity"]) / nv * sample_size + 10.0 * out["features_pen"] * sample_size
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert 0 <= stats["accuracy"] <= 1 and stats["count"] == sample_size
    assert 1 <= stats["code_perplexity"] <= nv and stats["temp"] == 2.0
    loss.backward()
    assert tiny.quantizer.vars.grad is not None and tiny.feature_extractor.conv_layers[0][0].weight.grad is not None


def test_temperature_annealing(tiny):
    tiny.set_num_updates(100_000)
    assert math.isclose(tiny.quantizer.curr_temp, max(2.0 * 0.999995**100_000, 0.5))
    tiny.set_num_updates(10_000_000)
    assert tiny.quantizer.curr_temp == 0.5


def test_layerdrop_skips_layers_in_training_only(tiny):
    tiny.encoder.layerdrop = 1.0
    tiny.cfg.mask_prob = 0.0
    wav = torch.randn(1, 8000)
    tiny.train()
    tiny.dropout_input.p = 0.0
    tiny.encoder.dropout = 0.0
    skipped = tiny.extract_features(wav).features
    tiny.eval()
    assert torch.allclose(skipped, tiny.extract_features(wav, layer=0).features, atol=1e-6)
    assert not torch.allclose(tiny.extract_features(wav).features, skipped)


# --------------------------------------------------------------------------- features


def test_frames_shift_and_receptive_field(tiny):
    assert tiny.num_frames(16000) == 49 and tiny.num_frames(400) == 1 and tiny.num_frames(399) == 0
    assert tiny.frame_shift == 0.02 and tiny.receptive_field == 0.025
    tiny.eval()
    out = tiny.extract_features(torch.randn(1, 16000), layer="all")
    assert [f.shape for f in out.features] == [torch.Size([1, 49, 64])] * 3
    assert out.padding_mask is None


def test_normalized_input_batched_equals_alone(tiny):
    assert tiny.cfg.normalize
    tiny.eval()
    torch.manual_seed(1)
    a, b = torch.randn(12000) * 3 + 0.5, torch.randn(7000) * 0.1
    batch = torch.zeros(2, 12000)
    batch[0], batch[1, :7000] = a, b
    pad = torch.zeros(2, 12000, dtype=torch.bool)
    pad[1, 7000:] = True
    with torch.inference_mode():
        out = tiny.extract_features(batch, pad)
        alone = tiny.extract_features(b.unsqueeze(0)).features
        codes = tiny.quantize(batch, pad)
        codes_alone = tiny.quantize(b.unsqueeze(0))
    t = tiny.num_frames(7000)
    assert (~out.padding_mask[1]).sum() == t
    assert torch.allclose(out.features[1, :t], alone[0], atol=1e-5)
    assert codes.shape == (2, 37, 2) and (codes[1, t:] == -1).all()
    assert torch.equal(codes[1, :t], codes_alone[0]) and codes[0].max() < 32 and codes[0].min() >= 0


@pytest.mark.parametrize("mode,conv_bias,dc_offset", [("default", False, 0.0), ("default", True, 1.0),
                                                     ("layer_norm", True, 0.0)])
def test_first_convolution_as_gemm_in_inference_equals_onednn(ljspeech, monkeypatch, mode, conv_bias, dc_offset):
    """Inference computes the one-channel first convolution as GEMMs over its windows, with
    a one-channel-per-group norm folded in (``mode="default"``); the features of real speech,
    batched with padding, are as close to a float64 computation as oneDNN's convolution and
    ``F.group_norm``'s, also for a quiet utterance on a DC offset (the folded statistics are
    float64 over the centred waveform)."""
    from w2vtools import audio
    from w2vtools.models import wav2vec2 as module

    clips = sorted((ljspeech / "wavs").glob("*.flac"))[:2]
    a, b = (torch.from_numpy(audio.load_audio(str(p), sample_rate=16000)) for p in clips)
    if dc_offset:
        b = 0.001 * b + dc_offset
    batch = torch.zeros(2, max(len(a), len(b)))
    batch[0, : len(a)], batch[1, : len(b)] = a, b
    lengths = torch.tensor([len(a), len(b)])
    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", "tiny")
    cfg.extractor_mode, cfg.conv_bias = mode, conv_bias
    model = Wav2Vec2Model(cfg).eval()
    for prm in model.feature_extractor.conv_layers[0].parameters():
        if prm.dim() == 1:  # the conv's bias and the norm's affine away from their initial values
            torch.nn.init.normal_(prm, 0.5, 0.2)
    calls = []
    for name, tag in (("_waveform_conv_as_gemm", "conv"), ("_waveform_conv_norm_as_gemm", "conv+norm")):
        monkeypatch.setattr(module, name,
                            lambda *a, f=getattr(module, name), tag=tag, **k: calls.append(tag) or f(*a, **k))
    with torch.inference_mode():
        fast = model.feature_extractor(batch, lengths)
        assert calls == (["conv+norm"] if mode == "default" else ["conv"])
        monkeypatch.setattr(module, "_gemm_first_conv", lambda conv, source: False)
        onednn = model.feature_extractor(batch, lengths)
        truth = model.double().feature_extractor(batch.double(), lengths).float()
    model.float()
    err_fast, err_onednn = (fast - truth).abs().max(), (onednn - truth).abs().max()
    # 1.5x: without the centring, the offset case is 1.7x oneDNN's error (measured)
    assert err_fast <= max(1.5 * err_onednn, 1e-6 * truth.abs().max()), (err_fast, err_onednn)
    monkeypatch.undo()
    calls.clear()
    for name in ("_waveform_conv_as_gemm", "_waveform_conv_norm_as_gemm"):
        monkeypatch.setattr(module, name, lambda *a, f=getattr(module, name), **k: calls.append(1) or f(*a, **k))
    model.train()
    model.extract_features(batch[:, :16000]).features.sum().backward()  # training: oneDNN's backward
    assert calls == [] and model.feature_extractor.conv_layers[0][0].weight.grad is not None


def test_first_block_as_gemm_under_bf16_autocast_in_inference(ljspeech, monkeypatch):
    """Under CPU bf16 autocast, inference still folds the first block (convolution, group norm,
    GELU) into float32 GEMMs and writes it in bf16, time-major, for the next convolution: the
    feature encoder's output on real speech, batched with padding, is as close to float64 as
    with the first block left to oneDNN and the float32 group norm."""
    from w2vtools import audio
    from w2vtools.models import wav2vec2 as module

    clips = sorted((ljspeech / "wavs").glob("*.flac"))[:2]
    a, b = (torch.from_numpy(audio.load_audio(str(p), sample_rate=16000)) for p in clips)
    batch = torch.zeros(2, max(len(a), len(b)))
    batch[0, : len(a)], batch[1, : len(b)] = a, b
    lengths = torch.tensor([len(a), len(b)])
    torch.manual_seed(0)
    model = Wav2Vec2Model(get_preset("wav2vec2", "tiny")).eval()
    outputs = []
    gemm = module._waveform_conv_norm_as_gemm
    monkeypatch.setattr(module, "_waveform_conv_norm_as_gemm",
                        lambda *a, **k: outputs.append(gemm(*a, **k)) or outputs[-1])
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model.feature_extractor(batch, lengths).float()
            assert [o.dtype for o in outputs] == [torch.bfloat16] and outputs[0].is_contiguous()
            monkeypatch.setattr(module, "_gemm_first_conv", lambda conv, source: False)
            onednn = model.feature_extractor(batch, lengths).float()
        truth = model.double().feature_extractor(batch.double(), lengths).float()
    model.float()
    frames = model.feature_extractor.output_lengths(lengths)
    for row, n in enumerate(frames.tolist()):  # over each utterance's valid frames
        err_fast = float((fast[row, :n] - truth[row, :n]).norm() / truth[row, :n].norm())
        err_onednn = float((onednn[row, :n] - truth[row, :n]).norm() / truth[row, :n].norm())
        assert err_fast <= 1.25 * err_onednn + 1e-4, (row, err_fast, err_onednn)


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_feature_encoder_as_time_major_gemms_equals_onednn_in_training(ljspeech, monkeypatch, mode):
    """On the CPU in float32, the strided convolutions after the first run as GEMMs on
    time-major frames (layers.conv1d_time_major); on two real utterances batched with
    padding, the features and every parameter's and the waveform's gradients are as close to
    a float64 computation as those of oneDNN's channels-first convolutions."""
    from w2vtools import audio
    from w2vtools.models import wav2vec2 as module

    clips = sorted((ljspeech / "wavs").glob("*.flac"))[2:4]
    a, b = (torch.from_numpy(audio.load_audio(str(p), sample_rate=16000)[:24000]) for p in clips)
    batch = torch.zeros(2, max(len(a), len(b)))
    batch[0, : len(a)], batch[1, : len(b)] = a, b
    lengths = torch.tensor([len(a), len(b)])
    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", "tiny")
    cfg.extractor_mode, cfg.conv_bias = mode, mode == "layer_norm"
    encoder = Wav2Vec2Model(cfg).feature_extractor.train()
    for p in encoder.parameters():
        if p.dim() == 1:  # norms and biases away from their initial values
            torch.nn.init.normal_(p, 0.5, 0.2)

    def run():
        wav = batch.to(encoder.conv_layers[0][0].weight.dtype, copy=True).requires_grad_()
        encoder.zero_grad()
        features = encoder(wav, lengths)
        (features * torch.linspace(-1, 1, features.numel(), dtype=wav.dtype).view_as(features)).sum().backward()
        return [features.detach(), wav.grad] + [p.grad.clone() for p in encoder.parameters()]

    calls = []
    gemm = module.conv1d_time_major
    monkeypatch.setattr(module, "conv1d_time_major", lambda *a: calls.append(1) or gemm(*a))
    ours = run()
    assert len(calls) == len(cfg.conv_feature_layers) - 1
    monkeypatch.setattr(module, "time_major_conv_applies", lambda conv, x: False)
    onednn = run()
    assert len(calls) == len(cfg.conv_feature_layers) - 1
    encoder.double()
    truth = [t.float() for t in run()]
    for x, y, t in zip(ours, onednn, truth):
        scale = t.abs().max()
        assert (x - t).abs().max() <= max(2 * (y - t).abs().max(), 1e-6 * scale), (x - t).abs().max() / scale


# --------------------------------------------------------------------------- quantizers


def test_gumbel_quantizer_straight_through_and_eval_argmax():
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(16, 8, (2.0, 0.5, 0.999995), 2, False, 12, time_first=True)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = q(x, produce_targets=True)
    out["x"].sum().backward()
    assert out["x"].shape == (2, 5, 12) and x.grad is not None and x.grad.abs().sum() > 0
    q.eval()
    res = q(x, produce_targets=True)
    codes = res["targets"]
    expected = torch.cat([q.vars[0, codes[..., g] + g * 8] for g in range(2)], -1)
    assert torch.allclose(res["x"], expected)
    assert torch.equal(codes, q.logits(x).argmax(-1))


def test_kmeans_quantizer_nearest_codeword():
    torch.manual_seed(0)
    q = KmeansVectorQuantizer(16, 10, 2, False, 16, time_first=True, gamma=0.25)
    x = torch.randn(2, 6, 16, requires_grad=True)
    out = q(x, produce_targets=True)
    ze = q.projection(x.transpose(1, 2)).transpose(1, 2).reshape(2, 6, 2, 8)
    d = ((ze.unsqueeze(-2) - q.embedding.transpose(0, 1).unsqueeze(0).unsqueeze(0)) ** 2).sum(-1)  # (B,T,G,V)
    assert torch.equal(out["targets"], d.argmin(-1))
    (out["x"].sum() + out["kmeans_loss"]).backward()
    assert x.grad is not None and q.embedding.grad is not None
    assert out["x"].shape == (2, 6, 16) and float(out["kmeans_loss"].detach()) > 0


def test_kmeans_codewords_start_on_the_scale_of_the_projections():
    """Codewords at the origin (fairseq's 0.01 scale) are all about |ze| away from every
    frame, so the first ones pulled out to the data take every frame; here they start
    where the group-normed projections are."""
    torch.manual_seed(0)
    q = KmeansVectorQuantizer(64, 32, 2, True, 64, time_first=True)
    with torch.no_grad():
        ze = q.projection(torch.randn(4, 64, 200) * 5.0)
    assert 0.7 < q.embedding.detach().std().item() / ze.std().item() < 1.3


# --------------------------------------------------------------------------- CPU dropout


def test_cpu_dropout_mask_rate_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    y = dropout(x, 0.1, True)
    kept = y != 0
    assert abs(1 - float(kept.float().mean()) - 0.1) < 0.003  # drop rate p
    p_used = 6554 / 65536  # p rounded to 1/65536
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / (1 - p_used)))  # survivors scaled by 1/(1-p)
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * (1 / (1 - p_used)))  # the gradient goes through the same mask
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x


def test_cpu_dropout_mask_is_uniform_in_every_16_bit_lane():
    """Each 64-bit draw gives four mask values: all four positions drop at rate p (a draw
    whose top bit were always 0 would make every fourth position keep everything)."""
    torch.manual_seed(0)
    for p in (0.05, 0.1, 0.5, 0.9):
        keep, p_used = keep_mask((200_000, 4), p)
        assert abs(p_used - p) <= 1 / 131072
        drop_rates = 1 - keep.float().mean(dim=0)
        assert torch.allclose(drop_rates, torch.full((4,), p), atol=0.005), (p, drop_rates)
    assert keep_mask((3, 5, 7), 0.2)[0].shape == (3, 5, 7)
    assert bool(keep_mask((1000,), 0.0)[0].all())


def test_cpu_training_attention_is_sdpa_with_dropout(monkeypatch):
    """The written-out attention of CPU training equals SDPA's (padding mask included)
    when its dropout is the identity, and drops attention weights when it is not."""
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4, dropout=0.1)
    x = torch.randn(2, 7, 32)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    attn.eval()
    ref = attn(x, mask)  # SDPA, no dropout
    attn.train()
    monkeypatch.setattr(layers_module, "dropout", lambda t, p, training: t)
    torch.testing.assert_close(attn(x, mask), ref, atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    assert not torch.allclose(attn(x, mask), ref, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masked_half_attention_on_cuda_avoids_cudnn():
    """A padded batch in float16 on CUDA runs SDPA without the cuDNN backend (masked_cuda_sdpa),
    and gives what the float32 math path gives."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    attn = MultiheadAttention(64, 4).eval().cuda()
    x = torch.randn(3, 50, 64, device="cuda")
    mask = torch.ones(3, 1, 1, 50, dtype=torch.bool, device="cuda")
    mask[1, ..., 30:] = False
    ref = attn(x, mask)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16), profile(
        activities=[ProfilerActivity.CPU]
    ) as prof:
        out = attn(x, mask)
    assert not any("cudnn_attention" in e.key for e in prof.key_averages())
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------- CTC


def test_ctc_finetuning_regularization(tiny):
    cfg = CTCConfig(vocab_size=10, mask_prob=0.5, mask_channel_prob=0.5, mask_channel_length=8, layerdrop=0.0,
                    feature_grad_mult=0.0)
    ctc = CTCModel(tiny, 10, cfg)
    wav = torch.randn(2, 16000)
    ctc.eval()
    ref, _ = ctc(wav)
    ctc.train()
    logits, _ = ctc(wav)
    assert logits.shape == (2, 49, 10) and not torch.allclose(logits, ref)  # masking in train mode
    # no freezing of its own (the trainer freezes: run.freeze_updates, test_train.py)
    logits.sum().backward()
    assert ctc.encoder.encoder.layers[0].fc1.weight.grad is not None and ctc.proj.weight.grad is not None
    assert all(p.grad is None for p in ctc.encoder.feature_extractor.parameters())  # feature_grad_mult 0


def test_feature_grad_mult_scales_gradients():
    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", "tiny")
    wav = torch.randn(1, 8000)
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        model = CTCModel(Wav2Vec2Model(cfg), 6, CTCConfig(vocab_size=6, apply_mask=False, layerdrop=0.0,
                                                          activation_dropout=0.0, feature_grad_mult=mult))
        model.train()
        model(wav)[0].pow(2).sum().backward()
        grads[mult] = model.encoder.feature_extractor.conv_layers[0][0].weight.grad
    assert (grads[0.1] - grads[1.0] * 0.1).abs().max() < 1e-5 * grads[0.1].abs().max()


# --------------------------------------------------------------------------- presets


def test_preset_parameter_counts_match_papers():
    millions = {name: count_preset_parameters("wav2vec2", name) / 1e6
                for name in ("base", "large", "xls-r-300m", "xls-r-1b", "xls-r-2b")}
    assert 94 < millions["base"] < 96
    assert 315 < millions["large"] < 319 and 315 < millions["xls-r-300m"] < 319
    assert 950 < millions["xls-r-1b"] < 980
    assert 2100 < millions["xls-r-2b"] < 2200


# --------------------------------------------------------------------------- real audio


def test_tiny_model_learns_on_fsdd(fsdd):
    from w2vtools.audio import load_audio

    files = sorted(fsdd.glob("*_jackson_1?.wav"))[:8]
    wavs = [torch.from_numpy(load_audio(str(f), sample_rate=16000)) for f in files]
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    pad = torch.arange(batch.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)
    torch.manual_seed(0)
    model = Wav2Vec2Model(get_preset("wav2vec2", "tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def fixed_loss():
        # the same masks and distractors every time: a fair before/after comparison
        model.eval()
        state = torch.get_rng_state()
        torch.manual_seed(1234)
        with torch.no_grad():
            loss, n, _ = model.pretraining_loss(model(batch, pad))
        torch.set_rng_state(state)
        return float(loss) / n

    before = fixed_loss()
    model.train()
    for step in range(20):
        model.set_num_updates(step)
        loss, n, _ = model.pretraining_loss(model(batch, pad))
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)
