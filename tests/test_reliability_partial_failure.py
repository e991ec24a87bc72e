"""Issue 15, partial failure: every long-running command treats a bad utterance the same way.

featurize, quantize and decode name each bad utterance and the reason on one line
(``<uid>: skipped: <reason>``), skip it and go on. Exit status 3 when some were
left out (the rest are written), 1 with no output file when all were. decode
used to stop at the first bad file and write nothing; a run where every input
failed used to exit 3 with an empty output. NaN weights gave NaN features and
empty hypotheses silently; now each such utterance is a named failure.
"""

from __future__ import annotations

import h5py
import pytest
from reliability_helpers import bad_wav, tiny_ctc, tiny_wav2vec2, wav_scp

from w2vtools.formats.text import read_text_table


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"ctc": tiny_ctc(d / "ctc.pt"), "nan": tiny_ctc(d / "nan.pt", nan=True), "w2v2": tiny_wav2vec2(d / "w.pt")}


@pytest.fixture
def corpora(tmp_path, fsdd):
    good = sorted(fsdd.glob("5_nicolas_*.wav"))[:2]
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good[0].read_bytes()[:2000])
    mixed = {"bad": bad_wav(tmp_path / "bad.wav"), good[0].stem: good[0], "cut": truncated, good[1].stem: good[1]}
    return {
        "mixed": wav_scp(tmp_path / "mixed.scp", mixed),
        "all_bad": wav_scp(tmp_path / "all_bad.scp", {"bad": tmp_path / "bad.wav", "cut": truncated,
                                                      "gone": tmp_path / "missing.wav"}),
        "good": [g.stem for g in good],
    }


def _skip_lines(stderr):
    return [line for line in stderr.splitlines() if ": skipped: " in line]


def _no_output_left(tmp_path, name):
    return not [p.name for p in tmp_path.iterdir() if p.name.startswith((name, f".{name}"))]


def test_decode_skips_bad_recordings_and_writes_the_rest(tmp_path, corpora, models, w2v):
    p = w2v("decode", corpora["mixed"], "--model", models["ctc"], "-o", tmp_path / "hyp.txt",
            "--ctm", tmp_path / "hyp.ctm", check=False)
    assert p.returncode == 3, p.stderr
    skipped = _skip_lines(p.stderr)
    assert len(skipped) == 2
    assert any("bad: skipped:" in s and "bad.wav" in s for s in skipped)
    assert any("cut: skipped:" in s and "truncated WAV" in s for s in skipped)
    assert "2 of 4 utterances failed (bad, cut)" in p.stderr.splitlines()[-1]
    assert list(read_text_table(tmp_path / "hyp.txt")) == corpora["good"]


@pytest.mark.parametrize("command", ["featurize", "quantize", "decode"])
def test_all_inputs_failing_is_an_error_with_no_output(tmp_path, corpora, models, w2v, command):
    out = {"featurize": tmp_path / "out.h5", "quantize": tmp_path / "out.txt", "decode": tmp_path / "out.txt"}[command]
    args = {"featurize": [corpora["all_bad"], out, "--model", "fbank"],
            "quantize": [corpora["all_bad"], out, "--model", models["w2v2"]],
            "decode": [corpora["all_bad"], "--model", models["ctc"], "-o", out]}[command]
    p = w2v(command, *args, check=False)
    assert p.returncode == 1, p.stderr
    assert len(_skip_lines(p.stderr)) == 3
    assert "all 3 utterances failed" in p.stderr.splitlines()[-1] and "nothing written" in p.stderr
    assert _no_output_left(tmp_path, "out"), sorted(x.name for x in tmp_path.iterdir())


def test_quantize_skips_bad_recordings(tmp_path, corpora, models, w2v):
    p = w2v("quantize", corpora["mixed"], tmp_path / "codes.txt", "--model", models["w2v2"], check=False)
    assert p.returncode == 3, p.stderr
    assert len(_skip_lines(p.stderr)) == 2
    assert [line.split()[0] for line in (tmp_path / "codes.txt").read_text().splitlines()] == corpora["good"]


def test_nan_weights_are_named_not_written(tmp_path, corpora, models, w2v, fsdd):
    good = sorted(fsdd.glob("5_nicolas_*.wav"))[:2]
    scp = wav_scp(tmp_path / "good.scp", {g.stem: g for g in good})
    p = w2v("featurize", scp, tmp_path / "f.h5", "--model", models["nan"], check=False)
    assert p.returncode == 1 and "NaN" in p.stderr.splitlines()[-1], p.stderr
    assert p.stderr.count("weight tensors hold NaN or Inf") == 1  # warned once, before the first utterance
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.partial").exists()
    p = w2v("decode", scp, "--model", models["nan"], "-o", tmp_path / "hyp.txt", check=False)
    assert p.returncode == 1 and "NaN" in p.stderr.splitlines()[-1], p.stderr
    assert p.stderr.count("weight tensors hold NaN or Inf") == 1
    assert not (tmp_path / "hyp.txt").exists()


def test_featurize_some_failing_keeps_exit_3(tmp_path, corpora, w2v):
    p = w2v("featurize", corpora["mixed"], tmp_path / "f.h5", "--model", "fbank", check=False)
    assert p.returncode == 3 and len(_skip_lines(p.stderr)) == 2, p.stderr
    with h5py.File(tmp_path / "f.h5") as f:
        assert sorted(f) == sorted(corpora["good"])
