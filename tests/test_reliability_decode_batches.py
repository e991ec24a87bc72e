"""Issue 15: ``w2v decode CORPUS --model M`` on batches that need no padding.

``collate()`` returns ``mask=None`` when every waveform of a batch has the same
length; decode crashed on it (``'NoneType' object has no attribute 'to'``) for a
one-utterance corpus, equal-length utterances, and one recording longer than
``--batch-seconds`` (alone in its batch), and wrote nothing. These decode such
batches from audio, end to end, and check each hypothesis is the one the same
recording gets decoded alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from reliability_helpers import tiny_ctc, wav_scp

from w2vtools.formats.text import read_text_table


@pytest.fixture(scope="module")
def ctc(tmp_path_factory):
    return tiny_ctc(tmp_path_factory.mktemp("ctc") / "ctc.pt")


def _decode(w2v, scp, ctc, out, *extra):
    p = w2v("decode", scp, "--model", ctc, "-o", out, *extra)
    return p, read_text_table(out)


def test_one_utterance_corpus(tmp_path, fsdd, ctc, w2v):
    f = sorted(fsdd.glob("3_jackson_*.wav"))[0]
    p, hyp = _decode(w2v, wav_scp(tmp_path / "wav.scp", {f.stem: f}), ctc, tmp_path / "hyp.txt")
    assert "decoded 1 utterances" in p.stderr and list(hyp) == [f.stem]


def test_equal_length_utterances(tmp_path, fsdd, ctc, w2v):
    f = sorted(fsdd.glob("3_jackson_*.wav"))[0]
    data, sr = sf.read(f, dtype="float32")
    entries = {}
    for i in range(3):  # three recordings of exactly the same length, different content
        p = tmp_path / f"eq{i}.wav"
        sf.write(p, np.roll(data, 400 * i), sr, subtype="PCM_16")
        entries[p.stem] = p
    _, together = _decode(w2v, wav_scp(tmp_path / "wav.scp", entries), ctc, tmp_path / "hyp.txt")
    assert list(together) == list(entries)
    for uid, path in entries.items():  # batched without padding == alone
        _, alone = _decode(w2v, wav_scp(tmp_path / f"{uid}.scp", {uid: path}), ctc, tmp_path / f"{uid}.txt")
        assert alone[uid] == together[uid]


def test_recording_longer_than_the_batch(tmp_path, ljspeech, fsdd, ctc, w2v):
    long = sorted((ljspeech / "wavs").glob("*.flac"))[0]  # several seconds
    short = sorted(fsdd.glob("3_jackson_*.wav"))[0]
    scp = wav_scp(tmp_path / "wav.scp", {"long": long, "short": short})
    p, hyp = _decode(w2v, scp, ctc, tmp_path / "hyp.txt", "--batch-seconds", "1")
    assert "decoded 2 utterances" in p.stderr and list(hyp) == ["long", "short"]
