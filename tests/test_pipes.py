"""Stages chained by pipes on real FSDD audio give what the file route gives.

``w2v manifest DIR --dest - | w2v featurize - feats.h5`` (a corpus list on stdin),
``w2v featurize DATA ark:- | w2v decode --features ark:- --model M | w2v score REF -``
(features streamed), and the one stage that cannot read a pipe (finetune: several
passes) says so in one line and names the file route.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import REPO

DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]


def sh(script: str, cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess:
    """Run a bash pipeline with this checkout's ``bin/w2v`` first on PATH; pipefail on."""
    env = dict(os.environ, W2V_PYTHON=sys.executable, PATH=f"{REPO / 'bin'}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", "set -o pipefail\n" + script], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def corpus(fsdd, tmp_path_factory) -> Path:
    """One speaker's digits: wav/train (takes 5-7), wav/test (take 0), a Kaldi text of both."""
    root = tmp_path_factory.mktemp("pipes")
    lines = []
    for split, takes in (("train", (5, 6, 7)), ("test", (0,))):
        (root / "wav" / split).mkdir(parents=True)
        for d in range(10):
            for i in takes:
                name = f"{d}_jackson_{i}"
                (root / "wav" / split / f"{name}.wav").symlink_to(fsdd / f"{name}.wav")
                lines.append(f"{name} {DIGITS[d]}\n")
    (root / "text").write_text("".join(sorted(lines)))
    return root


@pytest.fixture(scope="module")
def piped_model(corpus) -> Path:
    """manifest | featurize - (a corpus list on stdin) for both splits, then a tiny BiLSTM on the result."""
    for split in ("train", "test"):
        sh(f"w2v manifest wav/{split} --dest - --ext wav --valid-percent 0 "
           f"| w2v featurize - fb_{split}.h5 --model fbank --no-progress", corpus)
    sh("w2v finetune --features fb_train.h5 --labels text --valid-features fb_test.h5 --valid-labels text "
       "--arch blstm --preset tiny --max-update 30 --valid-interval 30 --threads 1 --save-dir exp/blstm >/dev/null",
       corpus)
    # the file route's inputs and hypotheses, to compare with
    sh("w2v manifest wav/test --dest data --name test --ext wav --valid-percent 0 "
       "&& w2v featurize data/test.tsv ark,scp:fb.ark,fb.scp --model fbank --no-progress "
       "&& w2v decode --model exp/blstm/checkpoint_best.pt --features fb_test.h5 -o hyp_file.txt", corpus)
    return corpus / "exp" / "blstm" / "checkpoint_best.pt"


def test_manifest_piped_into_featurize_equals_the_file_route(corpus, piped_model):
    sh("w2v manifest wav/train --dest data --name train --ext wav --valid-percent 0 "
       "&& w2v featurize data/train.tsv file_train.h5 --model fbank --no-progress", corpus)
    with h5py.File(corpus / "fb_train.h5") as piped, h5py.File(corpus / "file_train.h5") as filed:
        assert sorted(piped) == sorted(filed) and len(piped) == 30
        for key in filed:
            np.testing.assert_array_equal(piped[key][()], filed[key][()])


def test_featurize_decode_score_through_pipes_equals_the_file_route(corpus, piped_model):
    filed = sh("w2v score text hyp_file.txt --mode present", corpus)
    piped = sh(f"w2v featurize data/test.tsv ark:- --model fbank --no-progress "
               f"| w2v decode --features ark:- --model {piped_model} "
               f"| tee hyp_pipe.txt | w2v score text - --mode present", corpus)
    assert piped.stdout == filed.stdout and "Scored 10 sentences" in piped.stdout
    # the same hypotheses; a stream keeps featurize's order, the HDF5 file its key order
    assert sorted((corpus / "hyp_pipe.txt").read_text().splitlines()) == \
        sorted((corpus / "hyp_file.txt").read_text().splitlines())
    # '-' is ark:- too, and nothing warns (kaldiio's read-only arrays are copied where they are read)
    dash = sh(f"w2v featurize data/test.tsv - --model fbank --no-progress "
              f"| w2v decode --features - --model {piped_model} -o hyp_dash.txt", corpus)
    assert (corpus / "hyp_dash.txt").read_text() == (corpus / "hyp_pipe.txt").read_text()
    assert "Warning" not in piped.stderr + dash.stderr


def test_emissions_stream_from_one_decode_into_another(corpus, piped_model):
    sh(f"w2v decode --features fb_test.h5 --model {piped_model} --dump-emissions ark:- -o /dev/null "
       "| w2v decode --emissions - --dict exp/blstm/dict.ltr.txt -o hyp_em.txt", corpus)  # an ark has no token list
    assert sorted((corpus / "hyp_em.txt").read_text().splitlines()) == \
        sorted((corpus / "hyp_file.txt").read_text().splitlines())


@pytest.mark.parametrize("spec", ["scp:fb.scp", "ark:fb.ark"])
def test_decode_kaldi_features_leaks_no_numpy_warning(corpus, piped_model, spec):
    proc = sh(f"w2v decode --features {spec} --model {piped_model} -o hyp_kaldi.txt", corpus)
    assert "Warning" not in proc.stderr and "not writable" not in proc.stderr
    assert sorted((corpus / "hyp_kaldi.txt").read_text().splitlines()) == \
        sorted((corpus / "hyp_file.txt").read_text().splitlines())


def test_stages_that_cannot_stream_say_so_and_name_the_file_route(corpus, piped_model):
    train = sh("cat fb.ark | w2v finetune --features ark:- --labels text --valid-features fb_test.h5 --valid-labels text "
               "--save-dir exp/from_pipe", corpus, check=False)
    assert train.returncode == 1
    assert train.stderr.strip().splitlines()[-1] == (
        "w2v finetune: error: ark:-: finetune reads its train features several times, a pipe only once: "
        "write them to a file (w2v featurize ... feats.h5) and give that")
    shard = sh(f"cat fb.ark | w2v decode --features ark:- --model {piped_model} --shard 1/2", corpus, check=False)
    assert shard.returncode == 1 and "--shard needs a file" in shard.stderr


def test_a_streamed_ark_is_read_one_utterance_at_a_time(corpus, piped_model, monkeypatch):
    """Iterating ark:- holds no table: memory stays flat however long the stream."""
    from w2vtools.formats.features import open_features

    with open(corpus / "fb.ark", "rb") as f:
        monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": f})())
        reader = open_features("ark:-")
        assert reader.is_stream
        first = next(iter(reader))
        assert reader._table is None and first[1].flags.writeable


@pytest.mark.slow
def test_piped_stages_hold_memory_flat_in_the_corpus(corpus, piped_model, fsdd):
    """Measured, not assumed: peak RSS of manifest | featurize | decode on 3000 utterances against
    300. The 3000 are the same 300 recordings linked under 10 names each, so the set of shapes
    (what oneDNN and the allocator cache per length) is the same in both runs and only the
    stream's length differs: a stage that held its input would grow by the extra utterances'
    features. Each stage may grow by less than a third of that.

    glibc's malloc is pinned to a fixed mmap threshold here: by default the threshold rises
    as large blocks are freed, and the heap then fragments by 50-90 MB over 3000 utterances
    whatever a stage holds (measured: 711 -> 788 MB for decode by default, 697 -> 699 MB
    pinned), which would hide a held stream of 35 MB. It is noise of the allocator's, bounded
    by its 32 MB ceiling per arena, not memory that grows with the corpus."""
    root = corpus / "memory"
    wavs = sorted(fsdd.glob("*.wav"))[::10]
    assert len(wavs) == 300
    for n in (300, 3000):
        (root / f"wav{n}").mkdir(parents=True)
        for copy in range(n // 300):
            for p in wavs:
                (root / f"wav{n}" / f"r{copy}_{p.name}").symlink_to(p)
    peak = {}
    feature_mb = {}
    for n in (300, 3000):
        sh("export MALLOC_MMAP_THRESHOLD_=65536\n"
           f"/usr/bin/time -f %M -o m{n}.manifest w2v manifest wav{n} --dest - --ext wav --valid-percent 0 "
           f"| /usr/bin/time -f %M -o m{n}.featurize w2v featurize - ark:- --model fbank --no-progress "
           f"| tee feats{n}.ark "
           f"| /usr/bin/time -f %M -o m{n}.decode w2v decode --features ark:- --model {piped_model} -o hyp{n}.txt",
           root)
        peak[n] = {stage: int((root / f"m{n}.{stage}").read_text().split()[-1]) / 1024  # MB
                   for stage in ("manifest", "featurize", "decode")}
        feature_mb[n] = (root / f"feats{n}.ark").stat().st_size / 2**20
        assert len((root / f"hyp{n}.txt").read_text().splitlines()) == n
    extra = feature_mb[3000] - feature_mb[300]
    assert extra > 25, feature_mb  # the stream is large enough for a held table to show
    for stage in ("manifest", "featurize", "decode"):
        grew = peak[3000][stage] - peak[300][stage]
        assert grew < extra / 3, (stage, peak, feature_mb)
