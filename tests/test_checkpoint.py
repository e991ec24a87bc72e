"""Our checkpoint format, load_model dispatch and the `w2v checkpoint` command."""

from __future__ import annotations

import json

import pytest
import torch

from w2vtools.errors import W2VError
from w2vtools.formats.labels import ctc_vocabulary
from w2vtools.models.checkpoint import LoadedModel, save_model
from w2vtools.models.ctc import CTCModel
from w2vtools.models.loading import load_model
from w2vtools.models.presets import get_preset, list_presets
from w2vtools.models.registry import FAMILIES
from w2vtools.models.wav2vec2 import Wav2Vec2Model

torch.set_num_threads(2)


@pytest.fixture
def tiny_ctc():
    torch.manual_seed(0)
    enc = Wav2Vec2Model(get_preset("wav2vec2", "tiny"))
    model = CTCModel(enc, 9)
    return LoadedModel("wav2vec2", "ctc", model, model.cfg, ctc_vocabulary(list("|ABCD")))


def test_round_trip_pretrain_and_ctc_weights_only(tmp_path, tiny_ctc):
    torch.manual_seed(1)
    enc = Wav2Vec2Model(get_preset("wav2vec2", "tiny")).eval()
    save_model(tmp_path / "enc.pt", LoadedModel("wav2vec2", "pretrain", enc, enc.cfg), extra={"num_updates": 7})
    save_model(tmp_path / "ctc.pt", tiny_ctc)
    # loadable without unpickling anything but data
    raw = torch.load(tmp_path / "ctc.pt", weights_only=True)
    assert raw["task"] == "ctc" and raw["dictionary"][:5] == ["<s>", "<pad>", "</s>", "<unk>", "|"]
    wav = torch.randn(1, 8000)
    loaded = load_model(tmp_path / "enc.pt")
    assert loaded.source == "w2v" and loaded.extra["num_updates"] == 7 and not loaded.model.training
    assert torch.equal(loaded.model.extract_features(wav).features, enc.extract_features(wav).features)
    ctc = load_model(tmp_path / "ctc.pt")
    tiny_ctc.model.eval()
    assert ctc.dictionary == tiny_ctc.dictionary and ctc.config.vocab_size == 9
    assert torch.equal(ctc.model(wav)[0], tiny_ctc.model(wav)[0])
    # fine-tuning settings survive the round trip
    assert ctc.model.encoder.cfg.mask_channel_length == 64


def test_other_families_round_trip(tmp_path):
    for family, name in [("wav2vec", "tiny"), ("vq-wav2vec", "gumbel-tiny")]:
        if (family, name) not in list_presets():
            pytest.skip(f"{family} presets not available")
        cfg = get_preset(family, name)
        from w2vtools.models.registry import model_class_for

        model = model_class_for(family)(cfg).eval()
        save_model(tmp_path / f"{family}.pt", LoadedModel(family, "pretrain", model, cfg))
        back = load_model(tmp_path / f"{family}.pt")
        wav = torch.randn(1, 8000)
        assert back.family == family
        assert torch.equal(back.model.extract_features(wav).features, model.extract_features(wav).features)


def test_registry_lists_every_family():
    assert set(FAMILIES) == {"wav2vec2", "wav2vec", "vq-wav2vec", "unit-bert"}


def test_refuses_foreign_classes_and_mismatched_weights(tmp_path, tiny_ctc):
    save_model(tmp_path / "ctc.pt", tiny_ctc)
    data = torch.load(tmp_path / "ctc.pt", weights_only=True)
    data["model_class"] = "os:system"
    torch.save(data, tmp_path / "evil.pt")
    with pytest.raises(W2VError, match="only w2vtools.models"):
        load_model(tmp_path / "evil.pt")
    data = torch.load(tmp_path / "ctc.pt", weights_only=True)
    data["state_dict"].pop("proj.weight")
    torch.save(data, tmp_path / "broken.pt")
    with pytest.raises(W2VError, match="missing: proj.weight"):
        load_model(tmp_path / "broken.pt")


def test_load_model_errors(tmp_path):
    with pytest.raises(W2VError, match="not a known model name|unknown model"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(W2VError, match="without config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        load_model(tmp_path / "junk.pt")


def test_cli_inspect_preset_and_checkpoint(w2v, tmp_path, tiny_ctc):
    out = w2v("checkpoint", "inspect", "--preset", "wav2vec2-base").stdout
    assert "parameters: 95,044,608" in out
    assert "frame rate: 50 Hz (20 ms shift, 25 ms receptive field)" in out
    assert "12 x 768" in out and "post-LN" in out and "group norm in the first layer" in out
    large = json.loads(w2v("checkpoint", "inspect", "--preset", "wav2vec2-large", "--json").stdout)
    assert 315e6 < large["parameters"] < 319e6 and large["layers"] == 24
    save_model(tmp_path / "ctc.pt", tiny_ctc)
    info = w2v("checkpoint", "inspect", str(tmp_path / "ctc.pt")).stdout
    assert "task: ctc" in info and "dictionary: 9 tokens (index 0 = CTC blank): <s> <pad> </s> <unk> | A B C D" in info
    bad = w2v("checkpoint", "inspect", "--preset", "wav2vec2-huge", check=False)
    assert bad.returncode == 1 and "unknown wav2vec2 preset" in bad.stderr


def test_cli_convert_to_ours_and_huggingface(w2v, tmp_path, tiny_ctc):
    save_model(tmp_path / "ctc.pt", tiny_ctc)
    w2v("checkpoint", "convert", str(tmp_path / "ctc.pt"), str(tmp_path / "hf"), "--to", "huggingface")
    assert {"config.json", "model.safetensors", "vocab.json", "preprocessor_config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()}
    w2v("checkpoint", "convert", str(tmp_path / "hf"), str(tmp_path / "back.pt"))
    back = load_model(tmp_path / "back.pt")
    wav = torch.randn(1, 8000)
    tiny_ctc.model.eval()
    assert back.dictionary == tiny_ctc.dictionary
    assert torch.allclose(back.model(wav)[0], tiny_ctc.model(wav)[0], atol=1e-5)
