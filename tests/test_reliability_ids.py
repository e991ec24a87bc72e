"""Issue 15, ids: validated where they enter, never accepted early and refused after the work.

The rule (:func:`w2vtools.batching.check_ids`): an utterance id may hold any
character, non-ASCII included, except whitespace (Kaldi tables split on it), and
may not be empty. featurize, quantize and decode check it right after reading the
corpus, before any model loads; the error names the file, the line and the audio.
Only a TSV manifest can produce such an id (from a file name). Before, such ids
were accepted by featurize and refused by decode after the model had run.
Non-ASCII ids are accepted everywhere: HDF5, ark/scp, text, ctm, trn.
"""

from __future__ import annotations

import shutil

import h5py
import kaldiio
import pytest
import soundfile as sf
from reliability_helpers import tiny_ctc, tiny_wav2vec2

from w2vtools.formats.text import read_text_table


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"ctc": tiny_ctc(d / "ctc.pt"), "w2v2": tiny_wav2vec2(d / "w.pt")}


def _tsv(tmp_path, fsdd, names):
    """A TSV manifest over copies of FSDD files named ``names`` (ids = names)."""
    root = tmp_path / "audio"
    root.mkdir(exist_ok=True)
    rows = []
    for name, src in zip(names, sorted(fsdd.glob("4_yweweler_*.wav"))):
        shutil.copy(src, root / f"{name}.wav")
        rows.append(f"{name}.wav\t{sf.info(str(src)).frames}\n")
    tsv = tmp_path / "test.tsv"
    tsv.write_text(f"{root}\n" + "".join(rows), encoding="utf-8")
    return tsv


@pytest.mark.parametrize("command", ["featurize", "quantize", "decode"])
def test_an_id_with_whitespace_is_refused_before_the_model_runs(tmp_path, fsdd, models, w2v, command):
    tsv = _tsv(tmp_path, fsdd, ["ok_0", "my take 1", "ok_2"])
    out = tmp_path / "out"
    args = {"featurize": [tsv, f"{out}.h5", "--model", models["w2v2"]],
            "quantize": [tsv, out, "--model", models["w2v2"]],
            "decode": [tsv, "--model", models["ctc"], "-o", out]}[command]
    p = w2v(command, *args, check=False)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr  # one line, nothing logged by a model run before it
    assert f"{tsv}: line 3: utterance id 'my take 1'" in lines[0] and "my take 1.wav" in lines[0]
    assert "whitespace" in lines[0]
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(("out", ".out"))]


def test_non_ascii_ids_are_accepted_everywhere(tmp_path, fsdd, models, w2v):
    ids = ["ñandú_0", "Łódź_1", "数字_2"]
    tsv = _tsv(tmp_path, fsdd, ids)
    w2v("featurize", tsv, tmp_path / "f.h5", "--model", "fbank")
    w2v("featurize", tsv, f"ark,scp:{tmp_path}/f.ark,{tmp_path}/f.scp", "--model", "fbank")
    with h5py.File(tmp_path / "f.h5") as f:
        assert sorted(f) == sorted(ids)
    assert sorted(kaldiio.load_scp(str(tmp_path / "f.scp"))) == sorted(ids)
    w2v("decode", tsv, "--model", models["ctc"], "-o", tmp_path / "hyp.txt", "--ctm", tmp_path / "hyp.ctm",
        "--trn", tmp_path / "hyp.trn", "--dump-emissions", tmp_path / "em.h5")
    assert list(read_text_table(tmp_path / "hyp.txt")) == ids
    assert all(f"({uid})" in (tmp_path / "hyp.trn").read_text(encoding="utf-8") for uid in ids)
    w2v("decode", "--emissions", tmp_path / "em.h5", "-o", tmp_path / "again.txt")
    assert read_text_table(tmp_path / "again.txt") == read_text_table(tmp_path / "hyp.txt")
