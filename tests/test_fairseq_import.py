"""fairseq checkpoints (written by fairseq itself) import without fairseq and give fairseq's outputs.

The fixtures in tests/fixtures/fairseq/ were made by tools/make_fairseq_fixtures.py in a
fairseq 0.12 virtualenv: fairseq's own model classes with shrunken widths, saved in the
checkpoint layouts found in the wild (old ``args`` Namespace, pickled DictConfig ``cfg``,
plain-dict ``cfg``; fp16 weights), and the outputs fairseq computed from them on the
FSDD clip 0_jackson_0.wav (its samples fed as they are).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vtools.errors import W2VError
from w2vtools.models.fairseq import (
    load_fairseq,
    parse_layers,
    read_fairseq_checkpoint,
    resolve_interpolations,
    wav2vec_config,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "fairseq"
TOL = 1e-4

WAV2VEC_FIXTURES = [
    # file, prefix of the reference arrays, family, vq type
    ("wav2vec_args.pt", "wav2vec", "wav2vec", "none"),
    ("wav2vec_options_cfg.pt", "wav2vec_options", "wav2vec", "none"),
    ("vq_wav2vec_gumbel_dictconfig_fp16.pt", "vq_wav2vec_gumbel", "vq-wav2vec", "gumbel"),
    ("vq_wav2vec_kmeans_cfg.pt", "vq_wav2vec_kmeans", "vq-wav2vec", "kmeans"),
]
WAV2VEC2_FIXTURES = [
    ("wav2vec2_base_cfg.pt", "wav2vec2_base", False),
    ("wav2vec2_large_args_fp16.pt", "wav2vec2_large", True),
]


@pytest.fixture(scope="module")
def clip(shared_data) -> torch.Tensor:
    import soundfile as sf

    wav, sr = sf.read(shared_data / "fsdd" / "recordings" / "0_jackson_0.wav", dtype="float32")
    assert sr == 8000 and len(wav) == 5148  # the clip the fixtures were computed on
    return torch.from_numpy(wav).unsqueeze(0)


def ref(name: str) -> np.ndarray:
    return np.load(FIX / f"{name}.npy")


# --------------------------------------------------------------------------- wav2vec / vq-wav2vec


@pytest.mark.parametrize("fname,prefix,family,vq", WAV2VEC_FIXTURES, ids=[f[1] for f in WAV2VEC_FIXTURES])
def test_wav2vec_features_match_fairseq(clip, fname, prefix, family, vq):
    loaded = load_fairseq(FIX / fname)
    assert (loaded.family, loaded.task, loaded.source) == (family, "pretrain", "fairseq")
    assert loaded.config.vq_type == vq
    model = loaded.model
    assert not model.training
    outputs = ["z", "c"] + (["q"] if vq != "none" else [])
    for out in outputs:
        feats = model.extract_features(clip, output=out).features[0].numpy()
        expected = ref(f"{prefix}_{out}")
        assert feats.shape == expected.shape, out
        np.testing.assert_allclose(feats, expected, atol=TOL, rtol=0, err_msg=out)
    # the default output is the context network's
    default = model.extract_features(clip).features[0].numpy()
    np.testing.assert_allclose(default, ref(f"{prefix}_c"), atol=TOL, rtol=0)
    assert model.num_frames(clip.shape[1]) == ref(f"{prefix}_c").shape[0]


@pytest.mark.parametrize("fname,prefix", [(f[0], f[1]) for f in WAV2VEC_FIXTURES[2:]], ids=["gumbel", "kmeans"])
def test_vq_wav2vec_codes_match_fairseq(clip, fname, prefix):
    """codes = fairseq's vector_quantizer.forward_idx(z) (vq-wav2vec_featurize.py's idx)."""
    model = load_fairseq(FIX / fname).model
    codes = model.quantize(clip)
    expected = ref(f"{prefix}_codes")
    assert codes.dtype == torch.long and codes.shape == (1, *expected.shape[-2:])
    np.testing.assert_array_equal(codes[0].numpy(), expected.reshape(codes.shape[1:]))
    assert len(np.unique(expected)) > 3  # a real spread of codes, not one constant


@pytest.mark.parametrize(
    "fname,prefix",
    [("wav2vec_args.pt", "wav2vec"), ("wav2vec_options_cfg.pt", "wav2vec_options"),
     ("vq_wav2vec_kmeans_cfg.pt", "vq_wav2vec_kmeans")],
    ids=["wav2vec", "options", "kmeans"],
)
def test_pretraining_loss_matches_fairseqs_criterion(clip, fname, prefix, monkeypatch):
    """Same model, same negatives: our loss and sample size equal fairseq's Wav2vecCriterion's.

    The k-means model's file says ``loss_weights: [1]``, so its loss includes
    kmeans_loss x sample_size, as in fairseq. The "options" model has balanced classes,
    a separate target network (project_features "new"), a fixed offset and encoder skips.
    """
    import json

    from w2vtools.models.wav2vec import Wav2VecPredictionsModel

    idx = torch.from_numpy(ref(f"{prefix}_negatives"))  # (T, N) frame indices fairseq used

    def fixed(self, y, lengths):
        return y[0][:, idx].permute(2, 0, 1).unsqueeze(1)

    monkeypatch.setattr(Wav2VecPredictionsModel, "sample_negatives", fixed)
    model = load_fairseq(FIX / fname).model.train()
    loss, sample_size, stats = model.pretraining_loss(model(clip))
    expected = json.loads((FIX / f"{prefix}_loss.json").read_text())
    assert sample_size == expected["sample_size"]
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-5)


def test_legacy_torch_format(clip, tmp_path):
    """Checkpoints from torch < 1.6 (the 2019 wav2vec/vq-wav2vec releases) are not zip files."""
    state = torch.load(FIX / "wav2vec_args.pt", weights_only=False)  # our own fixture: trusted
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] != b"PK"
    feats = load_fairseq(legacy).model.extract_features(clip).features[0].numpy()
    np.testing.assert_allclose(feats, ref("wav2vec_c"), atol=TOL, rtol=0)


def test_wav2vec_config_from_old_args():
    ck = read_fairseq_checkpoint(FIX / "wav2vec_args.pt")
    assert ck.old_args and ck.arch == "wav2vec"
    cfg = wav2vec_config(ck.model, ck.criterion, old_args=True)
    assert cfg.conv_feature_layers[:2] == [(32, 10, 5), (32, 8, 4)] and len(cfg.conv_feature_layers) == 8
    assert [k for _, k, _ in cfg.conv_aggregator_layers] == [2, 3, 4, 5, 6, 7]
    assert cfg.skip_connections_agg and cfg.log_compression and cfg.residual_scale == 0.5
    # argparse-era defaults fill what a 2019 file lacks
    sparse = wav2vec_config({"arch": "wav2vec"}, {}, old_args=True)
    assert sparse.conv_aggregator_layers == [(512, 3, 1)] * 9 and not sparse.log_compression


def test_dictconfig_interpolation_and_fp16(clip):
    ck = read_fairseq_checkpoint(FIX / "vq_wav2vec_gumbel_dictconfig_fp16.pt")
    assert not ck.old_args
    assert ck.model["infonce"] is False  # was "${criterion.infonce}" in the pickled DictConfig
    assert ck.state_dict["vector_quantizer.vars"].dtype == torch.float16
    loaded = load_fairseq(FIX / "vq_wav2vec_gumbel_dictconfig_fp16.pt")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.config.vq_depth == 2 and loaded.config.combine_groups and loaded.config.activation == "gelu"


def test_kmeans_criterion_weights_are_read():
    cfg = load_fairseq(FIX / "vq_wav2vec_kmeans_cfg.pt").config
    assert cfg.loss_weights == [1.0] and cfg.vq_gamma == 0.25


def test_no_fairseq_needed():
    load_fairseq(FIX / "vq_wav2vec_gumbel_dictconfig_fp16.pt")
    assert "fairseq" not in sys.modules and "omegaconf" not in sys.modules


# --------------------------------------------------------------------------- wav2vec 2.0


@pytest.mark.parametrize("fname,prefix,large", WAV2VEC2_FIXTURES, ids=["base_cfg", "large_args_fp16"])
def test_wav2vec2_features_match_fairseq(clip, fname, prefix, large):
    loaded = load_fairseq(FIX / fname)
    assert (loaded.family, loaded.task) == ("wav2vec2", "pretrain")
    cfg = loaded.config
    assert cfg.layer_norm_first == large and cfg.normalize == large  # normalize comes from the task config
    assert cfg.extractor_mode == ("layer_norm" if large else "default")
    model = loaded.model
    torch.set_grad_enabled(False)
    try:
        _check_wav2vec2_outputs(model, clip, prefix)
    finally:
        torch.set_grad_enabled(True)


def _check_wav2vec2_outputs(model, clip, prefix):
    last = model.extract_features(clip).features[0].numpy()
    np.testing.assert_allclose(last, ref(f"{prefix}_x"), atol=TOL, rtol=0)
    z = model.extract_features(clip, output="z").features[0].numpy()
    np.testing.assert_allclose(z, ref(f"{prefix}_z"), atol=TOL, rtol=0)
    for i in (1, 2, 3):  # fairseq's layer_results[i-1]
        feats = model.extract_features(clip, output="layer", layer=i).features[0].numpy()
        np.testing.assert_allclose(feats, ref(f"{prefix}_layer{i}"), atol=TOL, rtol=0, err_msg=f"layer {i}")
    codes = model.quantize(clip)
    np.testing.assert_array_equal(codes[0].numpy(), ref(f"{prefix}_codes").reshape(codes.shape[1:]))


@pytest.mark.parametrize("fname", ["wav2vec2_ctc_cfg.pt", "wav2vec2_ctc_args.pt"], ids=["cfg", "old_args"])
def test_wav2vec2_ctc_matches_fairseq(clip, fname):
    loaded = load_fairseq(FIX / fname, dictionary=FIX / "dict.ltr.txt")
    assert (loaded.family, loaded.task) == ("wav2vec2", "ctc")
    letters = [line.split()[0] for line in (FIX / "dict.ltr.txt").read_text().splitlines()]
    assert loaded.dictionary == ["<s>", "<pad>", "</s>", "<unk>"] + letters
    with torch.no_grad():
        logits, pad = loaded.model(clip)
    assert pad is None
    np.testing.assert_allclose(logits[0].numpy(), ref("wav2vec2_ctc_logits"), atol=TOL, rtol=0)


def test_ctc_dictionary_rules(tmp_path):
    ctc = tmp_path / "model.pt"
    shutil.copy(FIX / "wav2vec2_ctc_cfg.pt", ctc)
    with pytest.raises(W2VError, match=r"32 outputs.*dict.ltr.txt"):
        load_fairseq(ctc)
    # a dictionary of the wrong size is caught
    short = tmp_path / "short.txt"
    short.write_text("A 1\nB 2\n")
    with pytest.raises(W2VError, match=r"32 outputs but .*short.txt gives 6"):
        load_fairseq(ctc, dictionary=short)
    # dict.ltr.txt next to the checkpoint is found; a token list works too
    shutil.copy(FIX / "dict.ltr.txt", tmp_path / "dict.ltr.txt")
    tokens = load_fairseq(ctc).dictionary
    assert tokens[4] == "|" and len(tokens) == 32
    assert load_fairseq(ctc, dictionary=tokens).dictionary == tokens


def test_ctc_dictionary_from_the_task_data_folder(tmp_path):
    """Like fairseq: dict.<labels>.txt in cfg.task.data (the fine-tuning data folder)."""
    state = torch.load(FIX / "wav2vec2_ctc_cfg.pt", weights_only=False)  # our fixture: trusted
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIX / "dict.ltr.txt", data / "dict.ltr.txt")
    state["cfg"]["task"]["data"] = str(data)
    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "ckpt" / "model.pt"
    torch.save(state, path)
    assert load_fairseq(path).dictionary[4:7] == ["|", "E", "T"]


def test_load_model_dispatches_fairseq_files(clip, tmp_path):
    """checkpoint.load_model reads fairseq files; saving them in our format keeps the outputs."""
    from w2vtools.models.checkpoint import save_model
    from w2vtools.models.loading import load_model

    loaded = load_model(FIX / "vq_wav2vec_kmeans_cfg.pt")
    assert loaded.source == "fairseq" and loaded.family == "vq-wav2vec"
    ours = tmp_path / "ours.pt"
    save_model(ours, loaded)
    torch.load(ours, weights_only=True)  # our format is plain data
    again = load_model(ours)
    assert again.source == "w2v" and again.config == loaded.config
    np.testing.assert_allclose(
        again.model.extract_features(clip).features[0].numpy(), ref("vq_wav2vec_kmeans_c"), atol=TOL, rtol=0
    )
    np.testing.assert_array_equal(again.model.quantize(clip)[0].numpy(), ref("vq_wav2vec_kmeans_codes"))


def test_ctc_round_trip_in_our_format(clip, tmp_path):
    from w2vtools.models.checkpoint import save_model
    from w2vtools.models.loading import load_model

    loaded = load_fairseq(FIX / "wav2vec2_ctc_args.pt", dictionary=FIX / "dict.ltr.txt")
    save_model(tmp_path / "ctc.pt", loaded)
    again = load_model(tmp_path / "ctc.pt")
    assert again.task == "ctc" and again.dictionary == loaded.dictionary
    with torch.no_grad():
        logits, _ = again.model(clip)
    np.testing.assert_allclose(logits[0].numpy(), ref("wav2vec2_ctc_logits"), atol=TOL, rtol=0)


# --------------------------------------------------------------------------- helpers


def test_parse_layers_is_not_eval():
    assert parse_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")[-1] == (512, 2, 2)
    assert len(parse_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")) == 7
    with pytest.raises(W2VError, match="cannot read"):
        parse_layers("__import__('os').system('true')")


def test_resolve_interpolations_nested():
    cfg = {"task": {"data": "/d", "normalize": True}, "model": {"n": "${task.normalize}", "x": ["${task.data}"],
                                                                "missing": "${nope.nothing}", "lit": "a${b}"}}
    out = resolve_interpolations(cfg)
    assert out["model"] == {"n": True, "x": ["/d"], "missing": None, "lit": "a${b}"}


def test_unsupported_architectures_are_named(tmp_path):
    path = tmp_path / "hubert.pt"
    torch.save({"args": None, "cfg": {"model": {"_name": "hubert"}, "task": {}}, "model": {}}, path)
    with pytest.raises(W2VError, match="fairseq model 'hubert' is not supported"):
        load_fairseq(path)
    path = tmp_path / "conformer.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2", "layer_type": "conformer"}, "task": {}}, "model": {}}, path)
    with pytest.raises(W2VError, match="layer_type='conformer' is not supported"):
        load_fairseq(path)


def test_mismatched_weights_are_reported(tmp_path):
    state = torch.load(FIX / "wav2vec2_base_cfg.pt", weights_only=False)
    state["cfg"]["model"]["encoder_layers"] = 4  # the file has 3
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(W2VError, match=r"missing: encoder\.layers\.3\."):
        load_fairseq(path)
