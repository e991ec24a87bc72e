"""Emission sources: a downstream model over stored features, stored emissions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from w2vtools.emissions import feature_log_probs, stored_emissions
from w2vtools.errors import W2VError
from w2vtools.formats.features import open_feature_writer
from w2vtools.models.downstream import DownstreamModel
from w2vtools.models.presets import downstream_config


def _write_h5(path: Path, mats: dict[str, np.ndarray], frame_shift=0.01):
    with open_feature_writer(str(path), attrs={"frame_shift": frame_shift, "family": "fbank", "model": "fbank"},
                             resume=False) as w:
        for uid, x in mats.items():
            w.write(uid, x)


def test_feature_log_probs_batches_like_alone(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    mats = {f"u{i}": rng.normal(size=(5 + 3 * i, 4)).astype(np.float32) for i in range(5)}
    _write_h5(tmp_path / "f.h5", mats)
    model = DownstreamModel(downstream_config("blstm", "tiny", input_dim=4, vocab_size=6))
    big = dict(feature_log_probs(model, str(tmp_path / "f.h5"), batch_frames=1000))
    one = dict(feature_log_probs(model, str(tmp_path / "f.h5"), batch_frames=1))
    assert list(big) == list(mats)
    for uid in mats:
        assert big[uid].shape == (mats[uid].shape[0], 6)
        torch.testing.assert_close(big[uid], one[uid], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(big[uid].exp().sum(-1), torch.ones(mats[uid].shape[0]))
    with pytest.raises(W2VError, match="takes"):
        list(feature_log_probs(DownstreamModel(downstream_config("conv", "tiny", input_dim=3, vocab_size=6)),
                               str(tmp_path / "f.h5")))


def test_stored_emissions_shard_and_attributes(tmp_path):
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "A"]
    mats = {f"u{i}": np.zeros((3 + i, len(tokens)), np.float32) for i in range(5)}
    with open_feature_writer(str(tmp_path / "em.h5"), attrs={"tokens": tokens, "frame_shift": 0.04, "log_probs": True},
                             resume=False) as w:
        for uid, x in mats.items():
            w.write(uid, x)
    src = stored_emissions(str(tmp_path / "em.h5"), shard=(2, 2))
    assert (src.tokens, src.frame_shift, src.total) == (tokens, 0.04, 2)
    assert [(uid, tuple(x.shape)) for uid, x in src.items] == [("u3", (6, 6)), ("u4", (7, 6))]
    with pytest.raises(W2VError, match="no such file"):
        stored_emissions(str(tmp_path / "missing.h5"))
