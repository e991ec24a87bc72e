"""Waveform augmentation of training audio (w2vtools.augment) and its use by the loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from w2vtools.audio import load_utterance
from w2vtools.augment import Augmentation
from w2vtools.errors import W2VError
from w2vtools.formats.corpus import read_corpus
from w2vtools.formats.manifest import Manifest, ManifestItem, write_manifest
from w2vtools.train.config import TrainConfig, apply_sets, training_augmentation, validate_config
from w2vtools.train.data import AudioDataset, BatchKey, BatchSampler


@pytest.fixture(scope="module")
def fsdd_utts(fsdd: Path, tmp_path_factory):
    """16 FSDD recordings (8 kHz, resampled to 16 kHz by the loader)."""
    paths = sorted(fsdd.glob("*_theo_1*.wav"))[:16]
    out = tmp_path_factory.mktemp("augment") / "train.tsv"
    write_manifest(out, Manifest(str(fsdd), [ManifestItem(p.name, sf.info(str(p)).frames) for p in paths]))
    return read_corpus(out)


def _peak_hz(wav: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spectrum) * rate / len(wav))


def test_speed_perturbation_changes_tempo_and_pitch_together():
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for speed in (0.9, 1.1):
        out = Augmentation(speeds=(speed,))(tone, np.random.default_rng(0), rate)
        # as sox's speed: 1 s becomes 1/speed s, 440 Hz becomes 440 * speed Hz
        assert abs(len(out) - rate / speed) <= 1
        assert _peak_hz(out, rate) == pytest.approx(440 * speed, abs=2)
        assert out.dtype == np.float32
    assert len(tone) == rate  # the input is not modified


def test_noise_comes_at_the_drawn_snr(fsdd_utts):
    wav = load_utterance(fsdd_utts[0], 16000)
    aug = Augmentation(snr_db=(5.0, 20.0))
    snrs = []
    for seed in range(20):
        out = aug(wav, np.random.default_rng(seed), 16000)
        noise = out.astype(np.float64) - wav
        snrs.append(10 * math.log10(np.mean(wav.astype(np.float64) ** 2) / np.mean(noise**2)))
    assert all(4.5 < s < 20.5 for s in snrs)
    assert max(snrs) - min(snrs) > 5  # drawn per utterance, not fixed
    # noise_prob: about that share of the utterances get noise
    half = Augmentation(snr_db=(10.0, 10.0), noise_prob=0.5)
    noisy = sum(not np.array_equal(half(wav, np.random.default_rng(s), 16000), wav) for s in range(200))
    assert 70 < noisy < 130


def test_config_turns_it_on_and_names_bad_settings():
    cfg = apply_sets(TrainConfig(), ["data.speed_perturb=[0.9, 1.0, 1.1]", "data.noise_snr_db=[10, 30]",
                                     "data.noise_prob=0.5"])
    validate_config(cfg)
    aug = training_augmentation(cfg.data)
    assert aug == Augmentation(speeds=(0.9, 1.0, 1.1), snr_db=(10.0, 30.0), noise_prob=0.5)
    assert training_augmentation(TrainConfig().data) is None  # off by default
    assert training_augmentation(apply_sets(TrainConfig(), ["data.speed_perturb=[1.0]"]).data) is None
    for bad in (["data.speed_perturb=[0.1]"], ["data.noise_snr_db=[30, 10]"], ["data.noise_snr_db=[10]"],
                ["data.noise_snr_db=[5, 10]", "data.noise_prob=2"]):
        with pytest.raises(W2VError, match="data.speed_perturb / data.noise_snr_db"):
            validate_config(apply_sets(TrainConfig(), bad))


def test_dataset_augments_deterministically_within_the_planned_size(fsdd_utts):
    aug = Augmentation(speeds=(0.9, 1.1), snr_db=(10.0, 20.0))
    plain = AudioDataset(fsdd_utts, sample_rate=16000, min_sample_size=3000, max_sample_size=8000, seed=3)
    ds = AudioDataset(fsdd_utts, sample_rate=16000, min_sample_size=3000, max_sample_size=8000, seed=3, augment=aug)
    ids = tuple(range(6))
    batch = ds[BatchKey(0, 2, ids)]
    # a slowed-down utterance does not make the cropped batch longer than planned
    assert batch["source"].shape[1] <= int(ds.sizes_for_batching[list(ids)].min())
    assert torch.equal(ds[BatchKey(0, 2, ids)]["source"], batch["source"])  # same key, same audio (resume)
    assert not torch.equal(ds[BatchKey(1, 2, ids)]["source"], batch["source"])
    # the unaugmented dataset, same seed: the same utterances, but other samples
    clean = plain[BatchKey(0, 2, ids)]["source"]
    n = min(clean.shape[1], batch["source"].shape[1])
    assert batch["id"] == plain[BatchKey(0, 2, ids)]["id"]
    assert not torch.allclose(clean[:, :n], batch["source"][:, :n], atol=1e-3)


def test_padded_batches_are_planned_for_the_longest_perturbed_length(fsdd_utts):
    aug = Augmentation(speeds=(0.9,))
    labels = {u.uid: [4, 5] for u in fsdd_utts}
    ds = AudioDataset(fsdd_utts, sample_rate=16000, pad=True, labels=labels, max_sample_size=10**6, augment=aug)
    assert np.array_equal(ds.sizes_for_batching, np.ceil(ds.sizes / 0.9).astype(np.int64))
    sampler = BatchSampler(ds.sizes_for_batching, max_samples=60_000, seed=1)
    for ids in sampler.plan(0):
        batch = ds[BatchKey(0, 0, tuple(ids))]
        assert batch["source"].numel() <= 60_000
        assert batch["source"].shape[1] >= int(ds.sizes[list(ids)].max() / 0.9) - 1


def test_unit_bert_refuses_audio_augmentation(tmp_path, w2v):
    units = tmp_path / "units.txt"
    units.write_text("u1 3-1 3-1 7-2 5-0\nu2 7-2 5-0 3-1\n")
    proc = w2v("pretrain", units, "--arch", "unit-bert", "--preset", "tiny", "--save-dir", tmp_path / "bert",
               "--set", "data.speed_perturb=[0.9,1.1]", check=False)
    assert proc.returncode == 1 and "a unit BERT trains on units" in proc.stderr.splitlines()[-1]
