"""Downstream CTC models on stored features: the model, the feature dataset, the feature route of
``w2v finetune`` and decoding its checkpoints, on real FSDD fbank features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vtools.errors import W2VError
from w2vtools.formats.features import open_feature_writer
from w2vtools.models.checkpoint import LoadedModel, save_model
from w2vtools.models.downstream import DownstreamConfig, DownstreamModel
from w2vtools.models.loading import load_model
from w2vtools.models.presets import downstream_config
from w2vtools.train.data import BatchKey, BatchSampler
from w2vtools.train.features_data import FeatureDataset

DIGITS = "zero one two three four five six seven eight nine".split()


@pytest.mark.parametrize("arch", ["blstm", "conv"])
def test_batched_equals_alone_and_padding_does_not_leak(arch):
    torch.manual_seed(0)
    cfg = downstream_config(arch, "tiny", input_dim=13, vocab_size=9)
    model = DownstreamModel(cfg).eval()
    model.set_normalization(torch.randn(13), torch.rand(13) + 0.5)
    a, b = torch.randn(17, 13), torch.randn(30, 13)
    source = torch.zeros(2, 30, 13)
    source[0, :17], source[1] = a, b
    source[0, 17:] = 1e3  # garbage in the padding must not change the real frames' output
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, 17:] = True
    with torch.no_grad():
        batched, out_mask = model(source, mask)
        alone_a, _ = model(a[None], None)
        alone_b, _ = model(b[None], None)
    assert batched.shape == (2, 30, 9)
    assert torch.equal(out_mask, mask)
    torch.testing.assert_close(batched[0, :17], alone_a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1], alone_b[0], atol=1e-5, rtol=1e-5)


def test_blstm_equals_torch_lstm_on_a_packed_sequence():
    # The model runs each direction as its own LSTM over reversed-within-length
    # utterances (oneDNN's kernel); nn.LSTM on a packed batch is the reference.
    torch.manual_seed(0)
    cfg = downstream_config("blstm", "tiny", input_dim=13, vocab_size=9, dropout=0.0)
    model = DownstreamModel(cfg)
    lengths = torch.tensor([23, 40, 1, 31])
    x = torch.randn(4, 40, 64, requires_grad=True)
    mask = torch.arange(40)[None, :] >= lengths[:, None]
    ours = model._blstm(x, mask)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = torch.nn.utils.rnn.pad_packed_sequence(model.lstm(packed)[0], batch_first=True, total_length=40)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    weights = torch.randn_like(ref)
    inputs = [x, *model.lstm.parameters()]
    ours_grad = torch.autograd.grad((ours * weights).sum(), inputs)
    ref_grad = torch.autograd.grad((ref * weights).sum(), inputs)
    for a, b in zip(ours_grad, ref_grad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model._blstm(x, None), model.lstm(x)[0], atol=1e-6, rtol=1e-5)


def test_config_checks():
    with pytest.raises(ValueError, match="odd"):
        DownstreamConfig(arch="conv", conv_channels=[8], conv_kernels=[4])
    with pytest.raises(ValueError, match="blstm or conv"):
        DownstreamConfig(arch="transformer")
    with pytest.raises(ValueError, match="not a DownstreamConfig field"):
        downstream_config("blstm", "tiny", hidden=3)


def test_time_and_channel_masks_only_in_training():
    torch.manual_seed(1)
    cfg = downstream_config("conv", "tiny", input_dim=8, vocab_size=5, time_mask_prob=0.3, channel_mask_prob=0.3,
                            dropout=0.0)
    model = DownstreamModel(cfg)
    x = torch.randn(2, 40, 8)
    model.train()
    masked = model._augment(x, None)
    assert (masked == 0).any() and not torch.equal(masked, x)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])  # deterministic in eval mode


def test_save_load_keeps_normalization_and_features(tmp_path):
    cfg = downstream_config("blstm", "tiny", input_dim=6, vocab_size=7, frame_shift=0.02,
                            features={"family": "wav2vec2", "layer": "6"})
    model = DownstreamModel(cfg)
    model.set_normalization(torch.arange(6.0), torch.full((6,), 2.0))
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]
    save_model(tmp_path / "m.pt", LoadedModel("wav2vec2", "downstream", model, cfg, tokens))
    loaded = load_model(tmp_path / "m.pt")
    assert (loaded.task, loaded.family, loaded.dictionary) == ("downstream", "wav2vec2", tokens)
    assert isinstance(loaded.model, DownstreamModel)
    assert loaded.model.frame_shift == 0.02 and loaded.config.features["layer"] == "6"
    torch.testing.assert_close(loaded.model.feature_mean, torch.arange(6.0))
    x = torch.randn(1, 11, 6)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], model(x)[0])


def _write_h5(path: Path, mats: dict[str, np.ndarray], frame_shift=0.01):
    with open_feature_writer(str(path), attrs={"frame_shift": frame_shift, "family": "fbank", "model": "fbank"},
                             resume=False) as w:
        for uid, x in mats.items():
            w.write(uid, x)


def test_feature_dataset_joins_labels_and_measures_statistics(tmp_path, caplog):
    rng = np.random.default_rng(0)
    mats = {f"u{i}": rng.normal(3.0, 2.0, size=(10 + i, 4)).astype(np.float32) for i in range(6)}
    _write_h5(tmp_path / "f.h5", mats)
    labels = {"u0": [4, 5], "u1": [5], "u2": [4], "u3": [5, 5, 4], "u4": [4], "other": [4]}
    ds = FeatureDataset(str(tmp_path / "f.h5"), labels, min_frames=11, name="train")
    # u5 has no labels, u0 is too short (10 frames), "other" has no features
    assert ds.uids == ["u1", "u2", "u3", "u4"]
    assert (ds.num_unlabelled, ds.num_too_short, ds.num_missing) == (1, 1, 1)
    assert ds.dim == 4 and ds.frame_rate == pytest.approx(100.0)
    allx = np.concatenate([mats[u] for u in ds.uids]).astype(np.float64)
    np.testing.assert_allclose(ds.mean.numpy(), allx.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.std.numpy(), allx.std(0), rtol=1e-4)
    batch = ds[BatchKey(0, 0, (0, 2))]
    assert batch["source"].shape == (2, 13, 4)
    assert batch["padding_mask"][0].tolist() == [False] * 11 + [True] * 2
    assert batch["targets"].tolist() == [[5, 0, 0], [5, 5, 4]] and batch["target_lengths"].tolist() == [1, 3]
    assert batch["num_samples"] == 11 + 13
    np.testing.assert_array_equal(batch["source"][1].numpy(), mats["u3"])
    # uncached reads give the same batch
    lazy = FeatureDataset(str(tmp_path / "f.h5"), labels, min_frames=11, cache_bytes=0)
    assert lazy._cache is None
    assert torch.equal(lazy[BatchKey(0, 0, (0, 2))]["source"], batch["source"])
    with pytest.raises(W2VError, match="train: no utterances left to train on .* with --labels"):
        FeatureDataset(str(tmp_path / "f.h5"), {"x": [4]})
    # the validation set says so, and names its own option
    with pytest.raises(W2VError, match=r"valid: no utterances left to validate on .*\(6 with features, 1 with "
                                       r"labels; no id is in both: .* with --valid-labels\)"):
        FeatureDataset(str(tmp_path / "f.h5"), {"x": [4]}, name="valid")
    sampler = BatchSampler(ds.sizes_for_batching, max_samples=30, seed=1)
    assert sorted(i for b in sampler.plan(0) for i in b) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# The feature route on real FSDD fbank features


def _fsdd_split(fsdd: Path, out: Path, *, train_per_digit_speaker: int, test_per_digit_speaker: int):
    """A TSV + Kaldi text of FSDD (index 0-4 test, 5-49 train), a few takes per digit and speaker."""
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(fsdd.glob("*.wav"))
    rows = {"train": [], "test": []}
    for f in files:
        digit, _, idx = f.stem.split("_")
        idx = int(idx)
        if idx < 5 and idx < test_per_digit_speaker:
            rows["test"].append(f)
        elif 5 <= idx < 5 + train_per_digit_speaker:
            rows["train"].append(f)
    with open(out / "text", "w") as text:
        for name, fs in rows.items():
            with open(out / f"{name}.tsv", "w") as t:
                t.write(f"{fsdd}\n")
                for f in fs:
                    t.write(f"{f.name}\t{sf.info(f).frames}\n")
                    text.write(f"{f.stem} {DIGITS[int(f.stem[0])]}\n")
    return out


def _valid_records(save_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (save_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == "valid"]


def _wer(ref: dict[str, str], hyp_file: Path) -> float:
    import jiwer

    hyp = {}
    for line in hyp_file.read_text().splitlines():
        uid, _, words = line.partition(" ")
        hyp[uid] = words.strip()
    uids = sorted(ref)
    return 100 * jiwer.wer([ref[u].upper() for u in uids], [hyp.get(u, "") for u in uids])


def test_feature_route_trains_saves_and_decodes(fsdd, tmp_path, w2v):
    data = _fsdd_split(fsdd, tmp_path / "data", train_per_digit_speaker=3, test_per_digit_speaker=1)
    for name in ("train", "test"):
        w2v("featurize", data / f"{name}.tsv", tmp_path / f"{name}.h5", "--model", "fbank", "--no-progress")
    save = tmp_path / "exp"
    proc = w2v("finetune", "--features", tmp_path / "train.h5", "--labels", data / "text",
               "--valid-features", tmp_path / "test.h5", "--arch", "conv", "--preset", "tiny",
               "--max-update", "40", "--valid-interval", "20", "--save-dir", save, "--threads", "1")
    assert "arch: conv" in proc.stdout  # the resolved configuration is printed
    records = _valid_records(save)
    assert [r["update"] for r in records] == [20, 40]
    for r in records:
        assert {"loss", "wer", "cer", "uer"} <= set(r) and 0 <= r["cer"] <= 100 * 5
    assert records[-1]["loss"] < records[0]["loss"]
    assert (save / "checkpoint_best.pt").is_file() and (save / "dict.ltr.txt").is_file()
    loaded = load_model(save / "checkpoint_best.pt")
    assert loaded.task == "downstream" and loaded.family == "fbank"
    assert loaded.dictionary[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and "|" in loaded.dictionary
    assert loaded.model.cfg.arch == "conv" and loaded.model.cfg.input_dim == 80
    # the input normalization was measured on the training features, not left at 0/1
    assert loaded.model.feature_std.min() > 0 and loaded.model.feature_mean.abs().sum() > 1
    # w2v decode takes the features: its greedy WER is the best validation's WER
    hyp = tmp_path / "hyp.txt"
    w2v("decode", "--model", save / "checkpoint_best.pt", "--features", tmp_path / "test.h5", "-o", hyp)
    ref = dict(line.split(" ", 1) for line in (data / "text").read_text().splitlines())
    test_ids = [line.split("\t")[0][:-4] for line in (data / "test.tsv").read_text().splitlines()[1:]]
    assert sorted(line.split(" ")[0] for line in hyp.read_text().splitlines()) == sorted(test_ids)
    best = min(records, key=lambda r: r["wer"])
    assert _wer({u: ref[u] for u in test_ids}, hyp) == pytest.approx(best["wer"], abs=1e-6)
    bad = w2v("decode", data / "test.tsv", "--model", save / "checkpoint_best.pt", "-o", tmp_path / "x", check=False)
    assert bad.returncode == 1 and "--features" in bad.stderr
    # resume refuses to start over a finished run without --resume
    again = w2v("finetune", "--features", tmp_path / "train.h5", "--labels", data / "text", "--arch", "conv",
                "--preset", "tiny", "--save-dir", save, check=False)
    assert again.returncode == 1 and "--resume" in again.stderr
    # waveform augmentation cannot apply to stored features: one line, not a silent no-op
    augmented = w2v("finetune", "--features", tmp_path / "train.h5", "--labels", data / "text", "--arch", "conv",
                    "--preset", "tiny", "--save-dir", tmp_path / "aug", "--set", "data.speed_perturb=[0.9,1.1]",
                    check=False)
    assert augmented.returncode == 1 and "data.speed_perturb and data.noise_snr_db augment audio" in augmented.stderr
    assert [line for line in augmented.stderr.splitlines() if "error" in line] == [augmented.stderr.splitlines()[-1]]


@pytest.mark.slow
def test_blstm_on_fbank_reaches_under_5_percent_wer_on_fsdd(fsdd, tmp_path, w2v):
    """All 2700 training utterances, the official 300-utterance test split; greedy WER < 5 %."""
    data = _fsdd_split(fsdd, tmp_path / "data", train_per_digit_speaker=45, test_per_digit_speaker=5)
    for name in ("train", "test"):
        w2v("featurize", data / f"{name}.tsv", tmp_path / f"{name}.h5", "--model", "fbank", "--no-progress")
    save = tmp_path / "blstm"
    w2v("finetune", "--features", tmp_path / "train.h5", "--labels", data / "text", "--valid-features",
        tmp_path / "test.h5", "--arch", "blstm", "--preset", "tiny", "--save-dir", save, "--threads", "1")
    records = _valid_records(save)
    wers = [r["wer"] for r in records]
    print("BiLSTM fbank FSDD valid WER by update:", [(r["update"], round(r["wer"], 2)) for r in records])
    assert min(wers) < 5.0
    hyp = tmp_path / "hyp.txt"
    w2v("decode", "--model", save / "checkpoint_best.pt", "--features", tmp_path / "test.h5", "-o", hyp)
    ref = dict(line.split(" ", 1) for line in (data / "text").read_text().splitlines())
    test_ids = {line.split("\t")[0][:-4] for line in (data / "test.tsv").read_text().splitlines()[1:]}
    wer = _wer({u: ref[u] for u in test_ids}, hyp)
    assert wer == pytest.approx(min(wers), abs=1e-6)
    assert wer < 5.0
