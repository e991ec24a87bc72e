"""w2v quantize: model codes (vq-wav2vec, wav2vec 2.0, checked against fairseq) and k-means units."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from w2vtools.audio import load_audio
from w2vtools.quantize import CodeStats, fit_kmeans, format_codes

FAIRSEQ = Path(__file__).resolve().parent / "fixtures" / "fairseq"


def _read_lines(path):
    return {line.split()[0]: line.split()[1:] for line in Path(path).read_text().splitlines()}


def test_format_codes_and_stats():
    codes = np.array([[3, 1], [3, 1], [0, 2], [3, 1]])
    assert format_codes(codes) == ["3-1", "3-1", "0-2", "3-1"]
    assert format_codes(codes, num_vars=4, index=True) == ["13", "13", "2", "13"]
    assert format_codes(codes, dedup=True) == ["3-1", "0-2", "3-1"]
    s = CodeStats(2, 4)
    s.add(codes)
    assert s.usage() == [0.5, 0.5]
    p = s.perplexity()[0]  # distribution (1/4, 3/4)
    assert p == pytest.approx(np.exp(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75))))


@pytest.fixture(scope="module")
def vq_ckpt(tmp_path_factory):
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    torch.manual_seed(1)
    cfg = get_preset("vq-wav2vec", "gumbel-tiny")
    model = model_class_for("vq-wav2vec")(cfg).eval()
    path = tmp_path_factory.mktemp("vq") / "vq.pt"
    save_model(path, LoadedModel(family="vq-wav2vec", task="pretrain", model=model, config=cfg))
    return path, model


def test_vq_wav2vec_codes_per_utterance(tmp_path, w2v, fsdd, vq_ckpt):
    path, model = vq_ckpt
    files = sorted(fsdd.glob("*_yweweler_*.wav"))[:5]
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"{f.stem} {f}\n" for f in files))
    p = w2v("quantize", scp, tmp_path / "codes.txt", "--model", path)
    assert "codebook usage" in p.stderr and "perplexity" in p.stderr
    w2v("quantize", scp, tmp_path / "index.txt", "--model", path, "--index")
    lines = _read_lines(tmp_path / "codes.txt")
    index = _read_lines(tmp_path / "index.txt")
    assert list(lines) == [f.stem for f in files]  # corpus order
    V = model.vector_quantizer.num_vars
    for f in files:
        wav = torch.from_numpy(load_audio(str(f), sample_rate=16000))[None]
        ref = model.quantize(wav)[0].numpy()
        assert lines[f.stem] == [f"{a}-{b}" for a, b in ref]
        assert index[f.stem] == [str(a * V + b) for a, b in ref]


@pytest.mark.parametrize(
    "ckpt,codes",
    [
        ("vq_wav2vec_gumbel_dictconfig_fp16.pt", "vq_wav2vec_gumbel_codes.npy"),
        ("vq_wav2vec_kmeans_cfg.pt", "vq_wav2vec_kmeans_codes.npy"),
        ("wav2vec2_base_cfg.pt", "wav2vec2_base_codes.npy"),
    ],
)
def test_codes_equal_fairseq(tmp_path, w2v, shared_data, ckpt, codes):
    """fairseq's own models and codes (tests/fixtures/fairseq, made by tools/make_fairseq_fixtures.py)."""
    if not (FAIRSEQ / ckpt).is_file():
        pytest.skip(f"fixture {ckpt} not present")
    pytest.importorskip("w2vtools.models.fairseq")
    # fairseq was fed the clip's 8 kHz samples unchanged: give them to us as "16 kHz" so nothing resamples
    wav, _ = sf.read(shared_data / "fsdd" / "recordings" / "0_jackson_0.wav", dtype="float32")
    sf.write(tmp_path / "clip.wav", wav, 16000, subtype="FLOAT")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"clip {tmp_path / 'clip.wav'}\nclip2 {tmp_path / 'clip.wav'}\n")
    w2v("quantize", scp, tmp_path / "codes.txt", "--model", FAIRSEQ / ckpt)
    ref = np.load(FAIRSEQ / codes)
    got = _read_lines(tmp_path / "codes.txt")
    assert got["clip"] == [f"{a}-{b}" for a, b in ref]


def _blobs(path, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 10]], np.float32)
    truth = {}
    with h5py.File(path, "w") as f:
        for u in range(6):
            labels = np.repeat(rng.integers(0, 3, size=8), 3)
            x = centers[labels] + 0.1 * rng.standard_normal((len(labels), 3)).astype(np.float32)
            f[f"utt{u}"] = x
            truth[f"utt{u}"] = labels
    return truth


def test_kmeans_recovers_clusters_and_assigns(tmp_path, w2v):
    truth = _blobs(tmp_path / "feats.h5")
    p = w2v("quantize", "--kmeans", "3", "--fit", tmp_path / "feats.h5", "--codebook", tmp_path / "km.npy",
            tmp_path / "feats.h5", tmp_path / "units.txt")
    assert "usage 100.0%" in p.stderr
    cb = np.load(tmp_path / "km.npy")
    assert cb.shape == (3, 3)
    units = _read_lines(tmp_path / "units.txt")
    # the learned labels are a relabelling of the true clusters
    mapping = {}
    for uid, labels in truth.items():
        assert len(units[uid]) == len(labels)
        for t, u in zip(labels, units[uid]):
            assert mapping.setdefault(int(t), u) == u
    assert len(set(mapping.values())) == 3
    # assign later with the saved codebook, collapsing repeats
    w2v("quantize", tmp_path / "feats.h5", tmp_path / "dedup.txt", "--codebook", tmp_path / "km.npy", "--dedup")
    dedup = _read_lines(tmp_path / "dedup.txt")
    for uid in truth:
        full = units[uid]
        assert dedup[uid] == [t for i, t in enumerate(full) if i == 0 or t != full[i - 1]]


def test_kmeans_on_featurized_speech_is_deterministic(tmp_path, w2v, fsdd):
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"{f.stem} {f}\n" for f in sorted(fsdd.glob("*_lucas_*.wav"))[:10]))
    w2v("featurize", scp, f"ark,scp:{tmp_path}/m.ark,{tmp_path}/m.scp", "--model", "mfcc")
    a = fit_kmeans(f"scp:{tmp_path}/m.scp", 16, seed=3)
    b = fit_kmeans(f"scp:{tmp_path}/m.scp", 16, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 13)


def test_quantize_errors(tmp_path, w2v, fsdd):
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"{f.stem} {f}\n" for f in sorted(fsdd.glob("*.wav"))[:2]))
    p = w2v("quantize", scp, tmp_path / "c.txt", "--model", "fbank", check=False)
    assert p.returncode == 1 and "no quantizer" in p.stderr
    p = w2v("quantize", scp, tmp_path / "c.txt", check=False)
    assert p.returncode == 1 and "--model" in p.stderr
    p = w2v("quantize", "--kmeans", "3", check=False)
    assert p.returncode == 1 and "--fit" in p.stderr
