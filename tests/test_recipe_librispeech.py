"""The librispeech recipe on a LibriSpeech-layout fixture built from real speech.

tests/librispeech_fixture.py arranges LJ Speech and FSDD clips as
``<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` with ``trans.txt``
transcripts, plus an openslr-like ``lm/`` (4-gram.arpa.gz, lexicon). The recipe
then runs stage 0 (nothing to download: --corpus/--lm-dir), stage 1 (data dirs,
manifests, subsets, lexicon, LM), stage 2 with a tiny wav2vec 2.0 pretrained for
a few updates in 2 CPU processes through torchrun (with --vq-bert true also a tiny
vq-wav2vec, its units and a tiny unit BERT), then stages 3-7: tiny fine-tuning,
featurization into Kaldi data dirs (wav2vec 2.0's and the unit BERT's), sharded
decoding with viterbi and the
4-gram, scoring, and self-training with pseudo-labels. The point is the
plumbing end to end; the models are far too small to recognize anything.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from http_mirror import serve
from librispeech_fixture import build_librispeech_fixture

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "recipes" / "librispeech" / "run.sh"
EVAL = ["test_clean", "test_other"]  # the recipe's default also decodes dev-clean and dev-other


def run_recipe(*args, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("W2V_PYTHON", sys.executable)
    return subprocess.run(["bash", str(RUN), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)


def read_table(path: Path) -> dict[str, str]:
    rows = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        rows[key] = value
    return rows


def test_librispeech_help_and_offline_download(tmp_path):
    p = run_recipe("--help", cwd=tmp_path)
    assert p.returncode == 0 and "--corpus DIR --lm-dir DIR" in p.stdout
    # stage 0 without --corpus downloads; pointed at an unreachable mirror it says what to do
    p = run_recipe("--workdir", tmp_path / "w", "--stop-stage", "0", "--parts", "dev-clean",
                   "--mirror", "http://127.0.0.1:9/resources", cwd=tmp_path, timeout=120)
    assert p.returncode != 0
    assert "could not download http://127.0.0.1:9/resources/12/md5sum.txt (offline?)" in p.stderr
    assert "--corpus DIR" in p.stderr
    assert "ERROR: stage 0 (download from openslr: dev-clean) failed" in p.stderr


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_librispeech_stage_0_downloads_and_checks_md5(tmp_path, shared_data):
    # an openslr-like mirror: resource 12 (a corpus part + md5sum.txt), resource 11 (LM files + md5sum.txt)
    site = tmp_path / "site"
    part = tmp_path / "pack/LibriSpeech/train-clean-360/19/198"
    part.mkdir(parents=True)
    wavs = sorted((shared_data / "ljspeech" / "wavs").glob("*.flac"))[:2]
    for i, wav in enumerate(wavs):
        shutil.copy(wav, part / f"19-198-{i:04d}.flac")
    (part / "19-198.trans.txt").write_text("19-198-0000 PRINTING\n19-198-0001 IN THE ONLY SENSE\n")
    (site / "12").mkdir(parents=True)
    for name in ("train-clean-360", "test-clean"):
        with tarfile.open(site / f"12/{name}.tar.gz", "w:gz") as tar:
            tar.add(part.parents[1], arcname=f"LibriSpeech/{name}")
    (site / "11").mkdir()
    with gzip.open(site / "11/4-gram.arpa.gz", "wt") as f:
        f.write("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\n-0.5\t</s>\n-0.5\tPRINTING\n\n\\end\\\n")
    (site / "11/librispeech-lexicon.txt").write_text("PRINTING P R IH1 N T IH0 NG\n")
    (site / "11/librispeech-vocab.txt").write_text("PRINTING\n")
    for res, names in (("12", ["train-clean-360.tar.gz", "test-clean.tar.gz"]),
                       ("11", ["4-gram.arpa.gz", "librispeech-lexicon.txt", "librispeech-vocab.txt"])):
        (site / res / "md5sum.txt").write_text("".join(f"{md5(site / res / n)}  {n}\n" for n in names))

    work = tmp_path / "w"
    with serve(site) as mirror:
        p = run_recipe("--workdir", work, "--stop-stage", "0", "--parts", "train-clean-360 lm",
                       "--mirror", mirror.url, cwd=tmp_path, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        got = work / "corpus/LibriSpeech/train-clean-360/19/198"
        assert sorted(f.name for f in got.iterdir()) == ["19-198-0000.flac", "19-198-0001.flac", "19-198.trans.txt"]
        assert (got / "19-198-0001.flac").read_bytes() == wavs[1].read_bytes()
        for name in ("4-gram.arpa.gz", "librispeech-lexicon.txt", "librispeech-vocab.txt"):
            assert (work / "corpus/lm" / name).read_bytes() == (site / "11" / name).read_bytes()

        # a part whose md5 this script knows, where the mirror publishes another: refused, nothing unpacked
        fetch = [str(REPO / "recipes/librispeech/local/download_librispeech.sh"), "--mirror", mirror.url]
        p = subprocess.run([*fetch, str(work / "corpus"), "test-clean"], capture_output=True, text=True)
        assert p.returncode != 0 and "this script knows 32fa31d27d2e1cad72775fee3f4849a9; refusing" in p.stderr
        assert not (work / "corpus/LibriSpeech/test-clean").exists()

        # an archive that does not match the published md5 (a broken transfer) is not unpacked
        fresh = tmp_path / "fresh"
        lines = (site / "12/md5sum.txt").read_text().replace(md5(site / "12/train-clean-360.tar.gz"), "0" * 32)
        (site / "12/md5sum.txt").write_text(lines)
        p = subprocess.run([*fetch, str(fresh), "train-clean-360"], capture_output=True, text=True)
        assert p.returncode != 0 and "does not match " + "0" * 32 in p.stderr
        assert not (fresh / "LibriSpeech").exists()

        # a part already unpacked is not fetched again
        before = len(mirror.requests)
        p = subprocess.run([*fetch, str(work / "corpus"), "train-clean-360"], capture_output=True, text=True)
        assert p.returncode == 0 and "already in" in p.stderr and len(mirror.requests) == before


@pytest.mark.slow
def test_librispeech_fixture_end_to_end(tmp_path, shared_data):
    fix = build_librispeech_fixture(shared_data, tmp_path / "corpus")
    work = tmp_path / "w"
    common = ["--workdir", work, "--corpus", fix, "--lm-dir", fix / "lm", "--finetune-presets", "10m",
              "--st-from", "10m", "--nj", "2", "--ngpu", "0",
              # dev-other: the tune set, where KenLM settings and the rescoring weight are chosen
              "--eval-sets", "dev-other test-clean test-other",
              "--feat-sets", "test-clean"]

    # stages 0-1: data dirs, manifests, the 10 min subset, lexicon, LM
    p = run_recipe(*common, "--stop-stage", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "nothing to download" in p.stderr
    for name in EVAL + ["dev_other", "train_clean_100", "train_other_500", "train_10m"]:
        assert (work / "data" / name / "wav.scp").is_file(), name
    assert read_table(work / "data/test_clean/text") == {
        k: v for f in (fix / "LibriSpeech/test-clean").rglob("*.trans.txt") for k, v in read_table(f).items()
    }
    assert (work / "data/manifest/train_clean_100.tsv").read_text().count("\n") == 17
    lexicon = (work / "data/lang/lexicon.txt").read_text().splitlines()
    assert "PRINTING P R I N T I N G |" in lexicon
    assert (work / (work / "data/lang/lm_path").read_text().strip()).is_file()

    # stage 2: a tiny wav2vec 2.0 stands in for BASE on 960 h, pretrained by the recipe
    # through torchrun in 2 CPU processes (gloo), as --ngpu N runs it on GPUs; with
    # --vq-bert true a tiny vq-wav2vec and a tiny unit BERT on its units stand in for the
    # paper's, each for 4 updates, the same way
    conf = tmp_path / "pretrain_tiny.yaml"
    conf.write_text("optim:\n  max_update: 4\n  warmup_updates: 1\nrun:\n  valid_interval: 4\n  threads: 1\n")
    vq_bert = ["--vq-bert", "true", "--vq-preset", "tiny", "--bert-preset", "tiny"]
    p = run_recipe(*common, *vq_bert, "--stage", "2", "--stop-stage", "2", "--pretrain-preset", "tiny",
                   "--pretrain-parts", "train-clean-100", "--pretrain-conf", conf, "--pretrain-update-freq", "1",
                   "--nproc", "2", "--vq-conf", conf, "--vq-update-freq", "1", "--bert-conf", conf,
                   "--bert-update-freq", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    for d in ("pretrain_tiny", "pretrain_vq_tiny", "unit_bert_tiny"):
        pt_log = (work / f"exp/{d}/log/pretrain.log").read_text()
        assert "2 process(es) x update_freq 1; device cpu" in pt_log, d
        assert re.search(r"valid \| update 4 \|", pt_log), d
        assert (work / f"exp/{d}/checkpoint_best.pt").is_file(), d
    # the vq-wav2vec's units ('g0-g1' per frame): one line per utterance of the pretraining
    # audio (train-clean-100 here) and of --pretrain-valid (dev-other), which the BERT read
    for name, part in (("pretrain", "train_clean_100"), ("dev_other", "dev_other")):
        units = read_table(work / f"exp/units_vq_tiny/{name}.txt")
        assert sorted(units) == sorted(read_table(work / f"data/{part}/wav.scp")), name
        for uid, toks in units.items():
            assert toks and all(re.fullmatch(r"\d+-\d+", t) for t in toks.split()), uid
    assert "arch: unit-bert" in (work / "exp/unit_bert_tiny/config.yaml").read_text()
    tiny = ["--pretrain-preset", "tiny", "--ft-recipe", "tiny", *vq_bert,
            "--finetune-sets", "--max-update 4 --freeze-updates 1 --valid-interval 4 --threads 1",
            "--beam", "8", "--word-score", "5", "--st-keep", "0.5", "--st-nbest", "3",
            # the pseudo-labels' n-best rescored by a (barely trained) tiny Transformer LM
            "--st-rescore", "true", "--st-lm-preset", "tiny", "--st-rescore-nbest", "3",
            "--st-lm-sets", "--max-update 4 --valid-interval 2 --set optim.warmup_updates=1 --threads 1",
            "--st-rescore-grid", "rescore_weight=0|1"]

    # stages 3-7 (the word score makes the barely trained model put out words,
    # so that there are pseudo-labels to select)
    p = run_recipe(*common, *tiny, "--stage", "3", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    assert re.findall(r"== stage (\d+):", p.stderr) == ["3", "4", "5", "6", "7"]

    # stage 4: Kaldi feature dirs readable by kaldiio, 20 ms frames
    import kaldiio

    fdir = work / "data/feats_w2v2/test_clean"
    assert (fdir / "frame_shift").read_text().strip() in ("0.02", "0.020")
    nframes = {k: int(v) for k, v in read_table(fdir / "utt2num_frames").items()}
    assert sorted(nframes) == sorted(read_table(work / "data/test_clean/wav.scp"))
    for uid, mat in kaldiio.load_scp(str(fdir / "feats.scp")).items():
        assert mat.shape[0] == nframes[uid] and mat.ndim == 2 and np.isfinite(mat).all()

    # stage 4 with --vq-bert true: the unit BERT's features of the vq-wav2vec's codes, one
    # vector of the BERT's width per 10 ms code frame, one matrix per utterance
    from w2vtools.models.checkpoint import read_checkpoint

    bert = read_checkpoint(work / "exp/unit_bert_tiny/checkpoint_best.pt")  # our safe loader, no unpickling
    vdir = work / "data/feats_vqbert/test_clean"
    assert (vdir / "frame_shift").read_text().strip() in ("0.01", "0.010")
    vq_frames = {k: int(v) for k, v in read_table(vdir / "utt2num_frames").items()}
    durs = {k: float(v) for k, v in read_table(work / "data/test_clean/utt2dur").items()}
    mats = dict(kaldiio.load_scp(str(vdir / "feats.scp")))
    assert sorted(mats) == sorted(vq_frames) == sorted(read_table(work / "data/test_clean/wav.scp"))
    for uid, mat in mats.items():
        assert mat.shape == (vq_frames[uid], bert["config"]["embed_dim"]) and np.isfinite(mat).all(), uid
        # the encoder's 30 ms receptive field costs 2-3 frames of the 100 per second
        assert 0 <= durs[uid] * 100 - mat.shape[0] < 3, (uid, durs[uid], mat.shape)

    # stages 5-6: every eval set decoded in shards with both decoders, scored, summarized
    results = (work / "exp/RESULTS").read_text()
    for s in EVAL:
        for dec in ("viterbi", "kenlm"):
            d = work / f"exp/finetune_10m/decode_{s}_{dec}"
            assert (d / "hyp.1.txt").is_file() and (d / "hyp.2.txt").is_file()
            assert sorted(read_table(d / "hyp.txt")) == sorted(read_table(work / f"data/{s}/text"))
            assert re.match(r"%WER [\d.]+ \[ \d+ / \d+, \d+ ins, \d+ del, \d+ sub \]", (d / "wer").read_text())
            assert f"exp/finetune_10m/decode_{s}_{dec}/wer" in results

    # stage 7 with --st-rescore true: the Transformer LM trained on the LM text, its weight chosen
    # on the tune set with the seed's KenLM settings, the unlabeled part decoded with both
    import yaml

    assert (work / "exp/nlm_tiny/checkpoint_best.pt").is_file()
    assert re.search(r"^perplexity [\d.]+ per word", (work / "exp/nlm_tiny/log/train.log").read_text(), re.M)
    rescore = yaml.safe_load((work / "exp/finetune_10m/rescore.yaml").read_text())
    kenlm = yaml.safe_load((work / "exp/finetune_10m/kenlm.yaml").read_text())
    assert rescore["rescore"] == "exp/nlm_tiny/checkpoint_best.pt" and rescore["nbest"] == 3
    assert rescore["rescore_weight"] in (0.0, 1.0) and rescore["lm_weight"] == kenlm["lm_weight"]
    nbest = (work / "exp/pseudo_10m/nbest.scores").read_text().splitlines()
    assert {line.split()[0].rsplit("-", 1)[1] for line in nbest} <= {"1", "2", "3"}

    # stage 7: pseudo-labels chosen by confidence, self-trained model decoded and scored
    pseudo = work / "data/train_other_500_pseudo_10m"
    conf = [l.split() for l in (pseudo / "confidence").read_text().splitlines()]
    assert len(conf) == 18
    kept = {c[0] for c in conf if c[3] == "1"}
    assert kept == set(read_table(pseudo / "text")) and 0 < len(kept) <= 9
    assert min(float(c[1]) for c in conf if c[0] in kept) >= max(
        (float(c[1]) for c in conf if c[0] not in kept), default=0.0) - 1e-9
    combined = read_table(work / "data/train_10m_st/text")
    assert len(combined) == len(read_table(work / "data/train_10m/text")) + len(kept)
    for s in EVAL:
        assert (work / f"exp/selftrain_10m/decode_{s}_kenlm/wer").is_file()
        assert f"exp/selftrain_10m/decode_{s}_kenlm/wer" in (work / "exp/RESULTS").read_text()

    # a plain rerun skips every finished stage
    p = run_recipe(*common, *tiny, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("done before, skipping") == 8
    assert "== stage" not in p.stderr

    # --pretrained MODEL: stage 2 has nothing to do
    p = run_recipe(*common, "--pretrained", work / "exp/pretrain_tiny/checkpoint_best.pt", "--stage", "2",
                   "--stop-stage", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "nothing to pretrain" in p.stderr
