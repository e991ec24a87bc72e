"""Corpus planning: shards, the utterance-length rule, work plans."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from w2vtools.batching import parse_shard, plan_jobs, select_shard, utterance_length
from w2vtools.errors import W2VError
from w2vtools.formats.utterance import Utterance


def test_select_shard_is_deterministic_partition():
    utts = [Utterance(f"u{i}", "x") for i in range(23)]
    parts = [select_shard(utts, (k, 5)) for k in range(1, 6)]
    assert [u for p in parts for u in p] == utts
    assert parts == [select_shard(utts, (k, 5)) for k in range(1, 6)]


def test_parse_shard():
    assert parse_shard(None) is None and parse_shard("3/8") == (3, 8)
    with pytest.raises(W2VError, match="between 1 and N"):
        parse_shard("4/3")


def test_utterance_length_rule(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(8000, np.float32), 8000)
    # header, resampled to the model's rate
    assert utterance_length(Utterance("a", str(wav)), 16000) == 16000
    # the manifest's count, when given, wins over the header
    assert utterance_length(Utterance("a", str(wav), num_samples=4000), 16000) == 8000
    # a segment is cut from the header's length; its end is clipped to the recording
    assert utterance_length(Utterance("a", str(wav), start=0.25, end=5.0), 8000) == 6000
    assert utterance_length(Utterance("a", str(wav), start=0.25, end=-1), 8000) == 6000
    # a command is run (or, when asked not to, its length is unknown)
    cmd = Utterance("c", f"cat {wav} |")
    assert utterance_length(cmd, 8000) == 8000
    assert utterance_length(cmd, 8000, run_commands=False) is None


def test_plan_jobs_puts_unknown_and_long_utterances_alone():
    utts = [Utterance(u, f"{u}.wav") for u in "abcd"]
    jobs = plan_jobs(utts, [16000, 16000, None, 10 * 16000], sample_rate=16000, batch_seconds=10, chunk_seconds=5)
    assert [(j.chunked, [u.uid for u in j.utts]) for j in jobs] == [(False, ["a", "b"]), (True, ["d"]), (True, ["c"])]
