"""fairseq itself reads what ``w2v manifest`` writes: FileAudioDataset on the TSVs, Dictionary on the labels.

fairseq lives in its own virtual environment (it pins old dependencies), given by
``$W2V_FAIRSEQ_PYTHON`` (default ``.peers/fairseq/bin/python``, made by ``benchmarks/setup_peers.sh``); the test skips
with the reason when that interpreter cannot import fairseq.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from w2vtools.formats import labels
from w2vtools.formats.manifest import read_manifest

FAIRSEQ_PYTHON = os.environ.get("W2V_FAIRSEQ_PYTHON") or str(Path(__file__).resolve().parents[1] / ".peers" / "fairseq" / "bin" / "python")

CHECK = r"""
import json, sys
import torch
from fairseq.data import Dictionary
from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

tsv, rate, ltr, dict_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ds = FileAudioDataset(tsv, sample_rate=rate, shuffle=False)
lengths = []
for i in range(len(ds)):
    item = ds[i]
    lengths.append(int(item["source"].shape[0]))
batch = ds.collater([ds[i] for i in range(min(4, len(ds)))])
def name(f):
    f = f.as_py() if hasattr(f, "as_py") else f  # pyarrow scalars when pyarrow is installed
    return ds.text_compressor.decompress(f) if isinstance(f, bytes) else str(f)
out = {"n": len(ds), "fnames": [name(f) for f in ds.fnames], "sizes": [int(s) for s in ds.sizes],
       "lengths": lengths, "root": ds.root_dir, "batch": list(batch["net_input"]["source"].shape)}
if ltr != "-":
    d = Dictionary.load(dict_path)
    out["symbols"] = d.symbols
    unk = 0
    for line in open(ltr):
        ids = d.encode_line(line, append_eos=False, add_if_not_exist=False)
        unk += int((ids == d.unk()).sum())
    out["unk"] = unk
print(json.dumps(out))
"""


def _fairseq_available() -> str | None:
    if not Path(FAIRSEQ_PYTHON).exists():
        return f"no fairseq interpreter at {FAIRSEQ_PYTHON} (set W2V_FAIRSEQ_PYTHON)"
    proc = subprocess.run([FAIRSEQ_PYTHON, "-c", "import fairseq.data.audio.raw_audio_dataset"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"{FAIRSEQ_PYTHON} cannot import fairseq: {proc.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def fairseq_python():
    reason = _fairseq_available()
    if reason:
        pytest.skip(reason)
    return FAIRSEQ_PYTHON


def _fairseq_load(python, tsv, rate, ltr="-", dict_path="-"):
    proc = subprocess.run(
        [python, "-c", CHECK, str(tsv), str(rate), str(ltr), str(dict_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fairseq_file_audio_dataset_loads_fsdd_manifests(tmp_path, fsdd, w2v, fairseq_python):
    w2v("manifest", fsdd, "--dest", tmp_path, "--ext", "wav", "--valid-percent", "0.1")
    total = 0
    for split in ("train", "valid"):
        man = read_manifest(tmp_path / f"{split}.tsv")
        got = _fairseq_load(fairseq_python, tmp_path / f"{split}.tsv", 8000)
        assert got["root"] == man.root
        assert got["n"] == len(man.items)
        assert got["fnames"] == [it.relpath for it in man.items]
        assert got["sizes"] == [it.num_samples for it in man.items]
        # What fairseq actually reads has exactly the length we wrote.
        assert got["lengths"] == got["sizes"]
        assert got["batch"][0] == 4
        total += got["n"]
    assert total == 3000


def test_fairseq_reads_labels_and_dictionary(tmp_path, ljspeech, fairseq_python, w2v):
    root = tmp_path / "lj"
    root.mkdir()
    for f in sorted((ljspeech / "wavs").glob("*.flac"))[:6]:
        os.symlink(f, root / f.name)
    w2v("manifest", root, "--dest", tmp_path / "d", "--valid-percent", "0", "--labels", ljspeech / "metadata.csv")
    got = _fairseq_load(
        fairseq_python, tmp_path / "d" / "train.tsv", 22050, tmp_path / "d" / "train.ltr", tmp_path / "d" / "dict.ltr.txt"
    )
    assert got["lengths"] == [sf.info(root / it.relpath).frames for it in read_manifest(tmp_path / "d" / "train.tsv").items]
    ours = labels.ctc_vocabulary(labels.read_dictionary(tmp_path / "d" / "dict.ltr.txt"))
    assert got["symbols"] == ours  # fairseq's order: <s> <pad> </s> <unk>, then the file
    assert got["unk"] == 0


def test_same_bytes_as_fairseq_wav2vec_manifest(tmp_path, fsdd, fairseq_python, w2v):
    """fairseq's own examples/wav2vec/wav2vec_manifest.py and ours agree row for row (ours sorted)."""
    where = subprocess.run(
        [fairseq_python, "-c", "import fairseq, os; print(os.path.dirname(fairseq.__file__))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    script = Path(where) / "examples" / "wav2vec" / "wav2vec_manifest.py"
    if not script.is_file():
        pytest.skip(f"{script} not installed with fairseq")
    root = tmp_path / "corpus"
    for i, f in enumerate(sorted(fsdd.glob("6_*_1*.wav"))[:30]):
        sub = root / f"s{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f.name).write_bytes(f.read_bytes())
    theirs = tmp_path / "fairseq"
    subprocess.run(
        [fairseq_python, str(script), str(root), "--dest", str(theirs), "--ext", "wav", "--valid-percent", "0"],
        check=True, capture_output=True,
    )
    w2v("manifest", root, "--dest", tmp_path / "ours", "--ext", "wav", "--valid-percent", "0")
    fairseq_lines = (theirs / "train.tsv").read_text().splitlines(keepends=True)
    ours = (tmp_path / "ours" / "train.tsv").read_text()
    assert ours == fairseq_lines[0] + "".join(sorted(fairseq_lines[1:]))
