"""Hugging Face folders: export loads in transformers with the same outputs; import reads safetensors and .bin."""

from __future__ import annotations

import json

import pytest
import torch

from w2vtools.formats.labels import ctc_vocabulary
from w2vtools.models.checkpoint import LoadedModel

from w2vtools.models.ctc import CTCModel
from w2vtools.models.huggingface import export_huggingface
from w2vtools.models.loading import load_model
from w2vtools.models.presets import get_preset
from w2vtools.models.wav2vec2 import Wav2Vec2Model

transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)


def _tiny(layer_norm: bool = False) -> Wav2Vec2Model:
    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", "tiny")
    cfg.normalize = False
    if layer_norm:
        cfg.extractor_mode, cfg.layer_norm_first, cfg.conv_bias = "layer_norm", True, True
    model = Wav2Vec2Model(cfg)
    with torch.no_grad():  # exercise norms and biases too
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("layer_norm", [False, True])
def test_export_pretrain_loads_in_transformers(tmp_path, layer_norm):
    model = _tiny(layer_norm)
    export_huggingface(LoadedModel("wav2vec2", "pretrain", model, model.cfg), tmp_path)
    hf, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    wav = torch.randn(2, 12000)
    with torch.inference_mode():
        ours = model.extract_features(wav).features
        theirs = hf.wav2vec2(wav).last_hidden_state
        assert torch.allclose(ours, theirs, atol=1e-4)
        # same codebook and projections: the quantized targets agree
        codes = model.quantize(wav)
        feats = hf.wav2vec2.feature_projection.layer_norm(hf.wav2vec2.feature_extractor(wav).transpose(1, 2))
        hf_logits = hf.quantizer.weight_proj(feats).view(2, -1, 2, model.cfg.latent_vars)
        assert torch.equal(codes, hf_logits.argmax(-1))
    back = load_model(tmp_path)
    assert back.source == "huggingface" and back.task == "pretrain"
    with torch.inference_mode():  # the same path as ``ours``: a reloaded model computes exactly the same
        assert torch.equal(back.model.extract_features(wav).features, ours)
    assert torch.equal(back.model.quantizer.vars, model.quantizer.vars)


def test_ctc_export_and_import_with_hf_vocab_order(tmp_path):
    enc = _tiny()
    ctc = CTCModel(enc, 9).eval()
    loaded = LoadedModel("wav2vec2", "ctc", ctc, ctc.cfg, ctc_vocabulary(list("|ABCD")))
    export_huggingface(loaded, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab["<pad>"] == 0 and vocab["<s>"] == 1 and vocab["|"] == 4  # HF's names for fairseq's order
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    wav = torch.randn(1, 16000)
    with torch.inference_mode():
        assert torch.allclose(hf(wav).logits, ctc(wav)[0], atol=1e-4)
    tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    assert tok.pad_token_id == 0 and tok.decode([5, 5, 0, 6, 4, 7]) == "AB C"
    back = load_model(tmp_path)
    assert back.dictionary == loaded.dictionary
    with torch.inference_mode():
        assert torch.allclose(back.model(wav)[0], ctc(wav)[0], atol=1e-5)


def test_import_pytorch_model_bin_and_blank_not_first(tmp_path):
    """A .bin folder whose CTC blank (pad_token_id) is not index 0: moved to index 0."""
    enc = _tiny()
    ctc = CTCModel(enc, 6).eval()
    export_huggingface(LoadedModel("wav2vec2", "ctc", ctc, ctc.cfg, ctc_vocabulary(["|", "A"])), tmp_path)
    from safetensors.torch import load_file

    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    # put the blank last, as some HF vocabularies do
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    state["lm_head.weight"] = state["lm_head.weight"][perm]
    state["lm_head.bias"] = state["lm_head.bias"][perm]
    torch.save(state, tmp_path / "pytorch_model.bin")
    tokens = ["<s>", "</s>", "<unk>", "|", "A", "<pad>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["pad_token_id"] = 5
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = load_model(tmp_path)
    # blank first; HF's fairseq-style special names become fairseq's own
    assert back.dictionary == ["<s>", "<pad>", "</s>", "<unk>", "|", "A"]
    wav = torch.randn(1, 8000)
    with torch.inference_mode():
        assert torch.allclose(back.model(wav)[0], ctc(wav)[0], atol=1e-5)


def test_unsupported_folders_are_clear_errors(tmp_path):
    from w2vtools.errors import W2VError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert", "architectures": ["HubertModel"]}))
    with pytest.raises(W2VError, match="HubertModel is not supported"):
        load_model(tmp_path)
