"""wav2vec 2.0 BASE and LARGE match Hugging Face transformers and torchaudio on real speech.

Random weights (every parameter perturbed, so layer norms and biases are exercised)
are built in transformers, mapped onto our model with the import mapping of
``w2vtools.models.huggingface`` and onto torchaudio with its own importer; all three
run on three LJ Speech clips (resampled to 16 kHz, cropped to 2-4 s):

* each utterance alone: every hidden layer and the final output agree to 1e-4
  (relative to the layer's largest magnitude);
* a padded batch, in the mode each peer supports: LARGE (layer-norm feature
  encoder) with an attention mask; BASE (group norm) without one, as transformers
  prescribes for such models, because padding shifts the group-norm statistics;
* ours with a padding mask gives each utterance exactly what it gets alone (1e-5),
  for both (BASE through the masked group norm), i.e. equals the peers run alone.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
torchaudio = pytest.importorskip("torchaudio")

from w2vtools.audio import load_audio  # noqa: E402
from w2vtools.models.huggingface import config_from_hf, state_dict_from_hf  # noqa: E402
from w2vtools.models.wav2vec2 import Wav2Vec2Model  # noqa: E402

CROPS = {"LJ001-0004": 3.0, "LJ001-0006": 2.0, "LJ001-0001": 2.5}  # seconds kept of each clip


@pytest.fixture(scope="module")
def clips(ljspeech):
    out = []
    for uid, seconds in CROPS.items():
        wav = load_audio(str(ljspeech / "wavs" / f"{uid}.flac"), sample_rate=16000)
        out.append(torch.from_numpy(wav[: int(seconds * 16000)].copy()))
    return out


def _pad(clips):
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        batch[i, : len(c)] = c
    pad = torch.arange(batch.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)
    return batch, pad, lengths


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random values for every parameter: scale-preserving weights, perturbed norms and biases."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in module.state_dict().items():
        if name.endswith("parametrizations.weight.original0"):  # weight-norm magnitudes
            value = 1.0 + 0.1 * torch.rand(p.shape, generator=g)
        elif p.dim() >= 2:
            fan_in = p[0].numel()
            value = torch.randn(p.shape, generator=g) / fan_in**0.5
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        else:
            value = 0.1 * torch.randn(p.shape, generator=g)
        state[name] = value
    return state


def _build(kind: str):
    if kind == "base":
        hf_cfg = transformers.Wav2Vec2Config()
    else:
        hf_cfg = transformers.Wav2Vec2Config(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            conv_bias=True,
        )
    # Build on the meta device and assign random weights: no slow initialisation.
    with torch.device("meta"):
        hf = transformers.Wav2Vec2Model(hf_cfg)
    hf.load_state_dict(_random_state(hf, seed=0), strict=True, assign=True)
    hf.eval()
    cfg = config_from_hf(hf_cfg.to_dict(), normalize=False)
    with torch.device("meta"):
        ours = Wav2Vec2Model(cfg)
    enc, head, ignored = state_dict_from_hf(hf.state_dict(), cfg)
    assert not head and not ignored
    missing, unexpected = ours.load_state_dict(enc, strict=False, assign=True)
    assert not unexpected
    assert set(missing) <= {"quantizer.vars", "quantizer.weight_proj.weight", "quantizer.weight_proj.bias",
                            "project_q.weight", "project_q.bias", "final_proj.weight", "final_proj.bias"}
    ours.eval()
    ta = torchaudio.models.wav2vec2.utils.import_huggingface_model(hf).eval()
    return hf, ours, ta, cfg


@pytest.fixture(scope="module", params=["base", pytest.param("large", marks=pytest.mark.slow)])
def run(request, clips):
    """Every forward pass the tests compare, computed once per architecture."""
    kind = request.param
    hf, ours, ta, cfg = _build(kind)
    batch, pad, lengths = _pad(clips)
    r = {"kind": kind, "cfg": cfg, "ours": ours, "alone": [], "lengths": lengths}
    with torch.inference_mode():
        for wav in clips:
            x = wav.unsqueeze(0)
            hf_out = hf(x, output_hidden_states=True)
            r["alone"].append({
                "hf_hidden": hf_out.hidden_states,
                "hf_last": hf_out.last_hidden_state,
                "hf_z": hf_out.extract_features,
                "ta_layers": ta.extract_features(x)[0],
                "all": ours.extract_features(x, layer="all").features,
                "final": ours.extract_features(x).features,
                "z": ours.extract_features(x, output="z").features,
                "layer3": ours.extract_features(x, layer=3).features,
            })
        r["batched_all"] = ours.extract_features(batch, pad, layer="all")
        r["batched_final"] = ours.extract_features(batch, pad).features
        if kind == "large":
            # layer-norm feature encoder: the peers support attention masks
            hf_out = hf(batch, attention_mask=(~pad).long(), output_hidden_states=True)
            r["peer_hidden"] = hf_out.hidden_states
            r["peer_last"] = hf_out.last_hidden_state
            r["ta_batched"], r["ta_lengths"] = ta(batch, lengths)
        else:
            # group norm: the peers are batched without an attention mask (padding counts as signal)
            hf_out = hf(batch, output_hidden_states=True)
            r["peer_hidden"] = hf_out.hidden_states
            r["peer_last"] = hf_out.last_hidden_state
            r["ta_batched"] = ta(batch)[0]
            r["nomask_all"] = ours.extract_features(batch, None, layer="all").features
    return r


def test_each_utterance_alone_matches_hf_and_torchaudio(run):
    kind, n_layers = run["kind"], run["cfg"].encoder_layers
    for a in run["alone"]:
        assert len(a["all"]) == n_layers + 1
        assert _rel(a["z"], a["hf_z"]) < 1e-4
        # HF hidden_states: [Transformer input, raw output of layer 1, ..., layer N];
        # last_hidden_state: after the final layer norm of pre-LN models
        for i in range(n_layers + 1):
            assert _rel(a["all"][i], a["hf_hidden"][i]) < 1e-4, f"{kind} layer {i}"
        assert _rel(a["final"], a["hf_last"]) < 1e-4
        # torchaudio: the raw output of every layer (before a pre-LN model's final layer norm)
        assert len(a["ta_layers"]) == n_layers
        for i, t in enumerate(a["ta_layers"], start=1):
            assert _rel(a["all"][i], t) < 1e-4, f"{kind} torchaudio layer {i}"
        # a single layer on its own (early exit) is that layer of the full stack
        assert torch.equal(a["layer3"], a["all"][3])


def test_padded_batch_equals_alone_and_peers(run):
    kind, n_layers, ours = run["kind"], run["cfg"].encoder_layers, run["ours"]
    out = run["batched_all"]
    frames = [ours.num_frames(int(n)) for n in run["lengths"]]
    assert out.padding_mask is not None
    assert (~out.padding_mask).sum(-1).tolist() == frames
    for i, (a, t) in enumerate(zip(run["alone"], frames)):
        for layer, (b, alone) in enumerate(zip(out.features, a["all"])):
            assert _rel(b[i, :t], alone[0]) < 1e-5, f"{kind}: batched != alone at layer {layer}"
        assert _rel(run["batched_final"][i, :t], a["final"][0]) < 1e-5
        # ... hence equal to the peers run alone
        assert _rel(run["batched_final"][i, :t], a["hf_last"][0]) < 1e-4
    if kind == "large":
        assert run["ta_lengths"].tolist() == frames
        for i, t in enumerate(frames):
            assert _rel(run["batched_final"][i, :t], run["peer_last"][i, :t]) < 1e-4
            assert _rel(run["batched_final"][i, :t], run["ta_batched"][i, :t]) < 1e-4
            for layer in range(n_layers + 1):
                assert _rel(out.features[layer][i, :t], run["peer_hidden"][layer][i, :t]) < 1e-4
    else:
        # without a padding mask ours computes what the peers compute on a padded batch
        for layer in range(n_layers + 1):
            assert _rel(run["nomask_all"][layer], run["peer_hidden"][layer]) < 1e-4
        assert _rel(run["nomask_all"][-1], run["ta_batched"]) < 1e-4
        # and the masked group norm is what makes batched == alone: padding does shift
        # the peers' statistics
        i = min(range(len(frames)), key=frames.__getitem__)  # the most padded row
        t = frames[i]
        assert _rel(run["peer_last"][i, :t], run["alone"][i]["hf_last"][0]) > 1e-3
