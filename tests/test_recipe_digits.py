"""The digits recipe (FSDD) end to end with --quick, in a work dir under tmp_path.

Checks the Kaldi recipe contract: stage gates, .done markers (a rerun skips
every finished stage), --stage/--stop-stage reruns exactly those stages, a
failing stage stops the run with the stage named, and the final WER table.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from http_mirror import serve

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "recipes" / "digits" / "run.sh"


def run_recipe(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("W2V_PYTHON", sys.executable)  # bin/w2v runs the interpreter running the tests
    return subprocess.run(["bash", str(RUN), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def test_digits_help_and_bad_option(tmp_path):
    p = run_recipe("--help", cwd=tmp_path)
    assert p.returncode == 0
    assert "--corpus DIR" in p.stdout and "--quick" in p.stdout
    p = run_recipe("--stgae", "1", cwd=tmp_path)
    assert p.returncode != 0 and "unknown option --stgae" in p.stderr


def test_digits_bad_corpus_names_stage_0(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_recipe("--corpus", str(empty), "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert p.returncode != 0
    assert "holds no FSDD recordings" in p.stderr
    assert "ERROR: stage 0 (get the Free Spoken Digit Dataset) failed" in p.stderr
    assert not (tmp_path / "w" / "exp" / ".stages" / "0.done").exists()


def test_digits_stage_0_1_data(tmp_path, shared_data):
    work = tmp_path / "w"
    # relative --corpus and --workdir are taken from the caller's directory
    p = run_recipe("--corpus", os.path.relpath(shared_data / "fsdd", tmp_path), "--workdir", "w",
                   "--stop-stage", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = (work / "data/train/text").read_text().splitlines()
    test_text = (work / "data/test/text").read_text().splitlines()
    assert len(text) == 2700 and len(test_text) == 300
    # speaker-prefixed ids, index 0-4 in test only
    assert all(re.fullmatch(r"([a-z]+)-\d_\1_([5-9]|[1-4]\d) [A-Z]+", l) for l in text)
    assert all(re.fullmatch(r"([a-z]+)-\d_\1_[0-4] [A-Z]+", l) for l in test_text)
    assert len((work / "data/train_1pct/text").read_text().splitlines()) == 27
    assert len((work / "data/train_10pct/text").read_text().splitlines()) == 270
    assert (work / "data/manifest/train.tsv").read_text().count("\n") == 2701
    lexicon = (work / "data/lang/lexicon.txt").read_text().split("\n")
    assert "SEVEN S E V E N |" in lexicon and len([l for l in lexicon if l]) == 10
    assert (work / "exp/.stages/1.done").exists()


def test_digits_stage_0_downloads_and_resumes_the_release(tmp_path, shared_data):
    # the release archive as GitHub makes it from the tag, on a local mirror
    site = tmp_path / "site"
    site.mkdir()
    archive = site / "v1.0.10.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(shared_data / "fsdd" / "recordings", arcname="free-spoken-digit-dataset-1.0.10/recordings")
    data = archive.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    sample = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))[123]

    for ranges in (True, False):
        work = tmp_path / f"w-{ranges}"
        # an earlier run was cut off half-way through the download
        (work / "corpus/fsdd").mkdir(parents=True)
        (work / "corpus/fsdd/fsdd-v1.0.10.tar.gz.part").write_bytes(data[: len(data) // 2])
        with serve(site, ranges=ranges) as mirror:
            p = run_recipe("--workdir", str(work), "--stop-stage", "0", "--fsdd-url", f"{mirror.url}/v1.0.10.tar.gz",
                           cwd=tmp_path, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        if ranges:  # resumed: one request, for the second half
            assert mirror.requests == [("/v1.0.10.tar.gz", f"bytes={len(data) // 2}-")]
        else:  # the server ignores ranges: downloaded again from the start
            assert "cannot resume" in p.stderr and mirror.requests[-1] == ("/v1.0.10.tar.gz", None)
        recordings = work / "corpus/fsdd/recordings"
        assert (work / "data/recordings_dir").read_text().strip() == str(recordings)
        assert len(list(recordings.glob("*.wav"))) == 3000
        assert (recordings / sample.name).read_bytes() == sample.read_bytes()
        assert f"sha256 {sha}" in (work / "corpus/fsdd/.complete").read_text().splitlines()

    # a rerun of the stage finds the release there and downloads nothing
    with serve(site) as mirror:
        p = run_recipe("--workdir", str(work), "--stage", "0", "--stop-stage", "0", "--fsdd-url",
                       f"{mirror.url}/v1.0.10.tar.gz", cwd=tmp_path)
    assert p.returncode == 0 and "already holds FSDD v1.0.10" in p.stderr and mirror.requests == []

    # an archive that is not an FSDD release stops stage 0 with the reason
    bad = site / "other.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(sample, arcname="x/readme.wav")
    with serve(site) as mirror:
        p = run_recipe("--workdir", str(tmp_path / "w-bad"), "--stop-stage", "0", "--fsdd-url",
                       f"{mirror.url}/other.tar.gz", cwd=tmp_path)
    assert p.returncode != 0 and "has no recordings/ folder" in p.stderr
    assert "ERROR: stage 0 (get the Free Spoken Digit Dataset) failed" in p.stderr


@pytest.mark.slow
def test_digits_quick_end_to_end(tmp_path, shared_data):
    work = tmp_path / "w"
    t0 = time.time()
    p = run_recipe("--corpus", str(shared_data / "fsdd"), "--workdir", str(work), "--quick", cwd=tmp_path, timeout=1800)
    elapsed = time.time() - t0
    assert p.returncode == 0, p.stderr[-4000:]
    # the 5-minute promise holds on an otherwise idle machine; on a shared, busy one
    # (load far above the core count) the time says nothing about the recipe
    if os.getloadavg()[0] < 1.5 * (os.cpu_count() or 1):
        assert elapsed < 300, f"--quick took {elapsed:.0f} s"
    # the table: one row per budget, a WER per system and decoder
    table = [l for l in p.stdout.splitlines() if l.startswith("| ")]
    assert table[0].startswith("| labels")
    rows = {l.split("|")[1].strip().split()[0]: l for l in table[1:]}
    assert set(rows) == {"1", "10", "100"}
    for row in rows.values():
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 6 and all(re.fullmatch(r"\d+\.\d\d", c) for c in cells), row
    wer = (work / "exp/w2v2_ft_100pct/decode_test_viterbi/wer").read_text()
    assert re.search(r"%WER [\d.]+ \[ \d+ / 300,", wer)
    for n in range(7):
        assert (work / f"exp/.stages/{n}.done").exists()

    # a second run skips every finished stage and prints the same table
    p2 = run_recipe("--corpus", str(shared_data / "fsdd"), "--workdir", str(work), "--quick", cwd=tmp_path)
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert p2.stderr.count("done before, skipping") == 7
    assert "== stage" not in p2.stderr
    assert [l for l in p2.stdout.splitlines() if l.startswith("| ")] == table

    # --stage 6 --stop-stage 6 reruns exactly the scoring stage
    before = (work / "exp/.stages/5.done").stat().st_mtime
    p3 = run_recipe("--workdir", str(work), "--quick", "--stage", "6", "--stop-stage", "6", cwd=tmp_path)
    assert p3.returncode == 0, p3.stderr[-2000:]
    assert re.findall(r"== stage (\d+):", p3.stderr) == ["6"]
    assert (work / "exp/.stages/5.done").stat().st_mtime == before
    assert [l for l in p3.stdout.splitlines() if l.startswith("| ")] == table
