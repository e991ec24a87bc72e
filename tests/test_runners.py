"""Recipe shell utilities: parse_options.sh, the local and Slurm job runners, stages.sh.

These run the real bash scripts in subprocesses. The Slurm runner is exercised
through a stand-in ``sbatch`` on PATH that runs the array tasks on this machine
the way Slurm would (SLURM_ARRAY_TASK_ID set, %N throttle parsed, --wait
semantics), and records the arguments it was given.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UTILS = REPO / "recipes" / "utils"


def bash(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        ["bash", "-c", script, "test.sh", *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=120
    )


# --------------------------------------------------------------------------- parse_options

PARSE = f"""
set -euo pipefail
stage=0
stop_stage=100
nj=4
quick=false
corpus=
lm_order=3
help_message="Usage: run.sh [--nj N] [--quick]"
. {UTILS}/parse_options.sh
echo "stage=$stage stop_stage=$stop_stage nj=$nj quick=$quick corpus=$corpus lm_order=$lm_order"
echo "opts=$cmdline_options"
echo "rest=$*"
"""


def test_parse_options_values_switches_and_positionals(tmp_path):
    p = bash(PARSE, "--stage", "3", "--stop-stage=5", "--quick", "--corpus", "/data/x y", "a", "b", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "stage=3 stop_stage=5 nj=4 quick=true corpus=/data/x y lm_order=3"
    assert lines[1] == "opts=stage stop_stage quick corpus"
    assert lines[2] == "rest=a b"


def test_parse_options_switch_takes_explicit_boolean(tmp_path):
    p = bash(PARSE, "--quick", "false", "--nj", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].startswith("stage=0 stop_stage=100 nj=2 quick=false")
    bad = bash(PARSE, "--quick=maybe", cwd=tmp_path)
    assert bad.returncode != 0 and "takes true or false" in bad.stderr


def test_parse_options_rejects_unknown_and_missing_value(tmp_path):
    p = bash(PARSE, "--stgae", "3", cwd=tmp_path)
    assert p.returncode != 0
    assert "unknown option --stgae" in p.stderr
    p = bash(PARSE, "--nj", cwd=tmp_path)
    assert p.returncode != 0 and "needs a value" in p.stderr


def test_parse_options_config_file_then_override(tmp_path):
    conf = tmp_path / "my.conf"
    conf.write_text("nj=8\nlm_order=5\n")
    p = bash(PARSE, "--config", str(conf), "--nj", "3", "--", "--not-an-option", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "nj=3 " in p.stdout and "lm_order=5" in p.stdout
    assert "rest=--not-an-option" in p.stdout


def test_parse_options_help(tmp_path):
    p = bash(PARSE, "--help", cwd=tmp_path)
    assert p.returncode == 0
    assert p.stdout.strip() == "Usage: run.sh [--nj N] [--quick]"


# --------------------------------------------------------------------------- run_local.sh


def run_local(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(UTILS / "run_local.sh"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_run_local_substitutes_job_in_args_and_log(tmp_path):
    p = run_local("JOB=1:4", "log/echo.JOB.log", "echo", "job=JOB", "out/JOB.txt", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for j in range(1, 5):
        text = (tmp_path / f"log/echo.{j}.log").read_text()
        assert f"job={j} out/{j}.txt" in text
        assert text.startswith(f"# echo job={j} out/{j}.txt\n# Started at ")
        assert re.search(r"# Accounting: time=\d+ threads=1\n# Ended \(code 0\) at ", text)


def test_run_local_escaped_pipe_and_quoting(tmp_path):
    # `\|` reaches the job as a pipe; a word with spaces stays one word.
    p = run_local(
        "JOB=2:3", "log/p.JOB.log", "echo", "a b JOB", "|", "tr", "a-z", "A-Z", ">", "out.JOB", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out.2").read_text() == "A B 2\n"
    assert (tmp_path / "out.3").read_text() == "A B 3\n"
    assert not (tmp_path / "log/p.1.log").exists()  # the range starts at 2
    quoted = run_local("log/q.log", "echo", "it's here", cwd=tmp_path)
    assert quoted.returncode == 0
    assert "\nit's here\n" in (tmp_path / "log/q.log").read_text()


def test_run_local_names_failed_jobs_and_pipefail(tmp_path):
    p = run_local("JOB=1:4", "exp/log/t.JOB.log", "test", "JOB", "-ne", "3", cwd=tmp_path)
    assert p.returncode == 1
    assert "job 3 failed (exit 1), log: exp/log/t.3.log" in p.stderr
    assert "1 / 4 failed" in p.stderr
    assert "job 1 failed" not in p.stderr
    assert "# Ended (code 1)" in (tmp_path / "exp/log/t.3.log").read_text()
    # A failure early in a pipe fails the job (bash -o pipefail).
    p = run_local("log/pipe.log", "false", "|", "cat", cwd=tmp_path)
    assert p.returncode == 1 and "log: log/pipe.log" in p.stderr


def test_run_local_bounds_parallelism(tmp_path):
    # Each job records start/end times; with --max-jobs-run 2 never more than 2 overlap,
    # and with 4 slots all 4 do overlap.
    def overlap(max_jobs: int) -> int:
        d = tmp_path / f"m{max_jobs}"
        d.mkdir()
        p = run_local(
            "--max-jobs-run", str(max_jobs), "JOB=1:4", "log/s.JOB.log",
            "date", "+%s.%N", ">", "t.JOB", ";", "sleep", "0.6", ";", "date", "+%s.%N", ">>", "t.JOB",
            cwd=d,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        spans = [tuple(map(float, (d / f"t.{j}").read_text().split())) for j in range(1, 5)]
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
        cur = best = 0
        for _, delta in events:
            cur += delta
            best = max(best, cur)
        return best

    assert overlap(2) == 2
    assert overlap(4) == 4


def test_run_local_usage_errors(tmp_path):
    p = run_local("JOB=1:3", "log/nojob.log", "true", cwd=tmp_path)
    assert p.returncode == 1 and "must contain JOB" in p.stderr
    p = run_local("--bogus", "1", "log/x.log", "true", cwd=tmp_path)
    assert p.returncode == 1 and "unknown option --bogus" in p.stderr
    p = run_local("JOB=3:1", "log/x.JOB.log", "true", cwd=tmp_path)
    assert p.returncode == 1 and "empty job range" in p.stderr


# --------------------------------------------------------------------------- slurm.sh

FAKE_SBATCH = r"""#!/usr/bin/env bash
# Stand-in for sbatch: records its arguments, runs the array tasks here.
printf '%s\n' "$@" > "$FAKE_SBATCH_ARGS"
array= ; out= ; wait=0 ; script=
for a in "$@"; do
  case "$a" in
    --array=*) array=${a#--array=} ;;
    --output=*) out=${a#--output=} ;;
    --wait) wait=1 ;;
    --*) ;;
    *) script=$a ;;
  esac
done
range=${array%%%*}
first=${range%-*}; last=${range#*-}
echo 4242
rc=0
for ((i=first; i<=last; i++)); do
  SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_JOB_ID=4242 bash "$script" > "${out//%a/$i}" 2>&1 || rc=1
done
[ $wait = 1 ] && exit $rc
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    sb = bindir / "sbatch"
    sb.write_text(FAKE_SBATCH)
    sb.chmod(sb.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    env["FAKE_SBATCH_ARGS"] = str(tmp_path / "sbatch_args.txt")
    return env


def slurm(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(UTILS / "slurm.sh"), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_slurm_array_same_convention(tmp_path, fake_slurm):
    work = tmp_path / "work"
    work.mkdir()
    p = slurm(
        "--max-jobs-run", "2", "--gpu", "1", "--mem", "8G", "--time", "1:00:00", "--num-threads", "3",
        "JOB=1:3", "exp/log/dec.JOB.log", "echo", "part JOB", "|", "tr", "a-z", "A-Z", ">", "hyp.JOB",
        cwd=work, env=fake_slurm,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    args = (tmp_path / "sbatch_args.txt").read_text().splitlines()
    assert "--array=1-3%2" in args and "--wait" in args
    assert "--gres=gpu:1" in args and "--mem=8G" in args and "--time=1:00:00" in args
    assert "--cpus-per-task=3" in args
    for j in (1, 2, 3):
        assert (work / f"hyp.{j}").read_text() == f"PART {j}\n"
        log = (work / f"exp/log/dec.{j}.log").read_text()
        assert log.startswith(f"# echo 'part {j}' | tr a-z A-Z > hyp.{j}\n")
        assert "# Ended (code 0)" in log and "Slurm job 4242_" in log


def test_slurm_names_failed_tasks(tmp_path, fake_slurm):
    p = slurm("JOB=1:3", "log/t.JOB.log", "test", "JOB", "!=", "2", cwd=tmp_path, env=fake_slurm)
    assert p.returncode == 1
    assert "job 2 failed (exit 1), log: log/t.2.log" in p.stderr
    assert "1 / 3 failed" in p.stderr


def test_slurm_without_sbatch_says_so(tmp_path):
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:/bin"
    if any(Path(d, "sbatch").exists() for d in env["PATH"].split(os.pathsep)):
        pytest.skip("a real sbatch is installed")
    p = slurm("log/x.log", "true", cwd=tmp_path, env=env)
    assert p.returncode == 1 and "sbatch not found" in p.stderr


# --------------------------------------------------------------------------- stages.sh

STAGES = f"""
set -euo pipefail
stage=0
stop_stage=100
fail_at=-1
. {UTILS}/parse_options.sh
. {UTILS}/stages.sh
for n in 1 2 3; do
  if stage_begin $n "step $n"; then
    echo "ran $n" >> ran.txt
    [ $n -ne $fail_at ] || false
    stage_end
  fi
done
"""


def test_stages_skip_done_rerun_range_and_name_failure(tmp_path):
    p = bash(STAGES, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "ran.txt").read_text() == "ran 1\nran 2\nran 3\n"
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d test.sh: == stage 1: step 1 ==$", p.stderr, re.M)
    # A second run skips every finished stage.
    p = bash(STAGES, cwd=tmp_path)
    assert p.returncode == 0
    assert (tmp_path / "ran.txt").read_text().count("ran") == 3
    assert p.stderr.count("done before, skipping") == 3
    # An explicit range reruns exactly that range.
    p = bash(STAGES, "--stage", "2", "--stop-stage", "2", cwd=tmp_path)
    assert p.returncode == 0
    assert (tmp_path / "ran.txt").read_text().splitlines()[3:] == ["ran 2"]
    # A failing stage stops the script and is named; its marker is gone.
    p = bash(STAGES, "--stage", "2", "--fail-at", "2", cwd=tmp_path)
    assert p.returncode != 0
    assert "ERROR: stage 2 (step 2) failed (exit 1)" in p.stderr
    assert not (tmp_path / "exp/.stages/2.done").exists()
    assert (tmp_path / "ran.txt").read_text().splitlines()[4:] == ["ran 2"]  # stage 3 never started


def test_log_timestamps(tmp_path):
    p = bash(f". {UTILS}/log.sh; log hello world", cwd=tmp_path)
    assert p.returncode == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d test.sh: hello world\n", p.stderr)


# --------------------------------------------------------------------------- split_data.sh / combine_data.sh


def _make_data_dir(d: Path, speakers: dict[str, int], prefix: str = "") -> list[str]:
    d.mkdir(parents=True)
    uids = sorted(f"{prefix}{spk}-u{i:02d}" for spk, n in speakers.items() for i in range(n))
    (d / "wav.scp").write_text("".join(f"{u} /audio/{u}.wav\n" for u in uids))
    (d / "text").write_text("".join(f"{u} WORD {u.upper()}\n" for u in uids))
    (d / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in uids))
    spk2utt = {}
    for u in uids:
        spk2utt.setdefault(u.split("-")[0], []).append(u)
    (d / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))
    (d / "frame_shift").write_text("0.02\n")
    return uids


def test_split_data_covers_every_utterance_once(tmp_path):
    data = tmp_path / "data" / "test"
    uids = _make_data_dir(data, {"a": 5, "b": 1, "c": 4})
    p = subprocess.run([str(UTILS / "split_data.sh"), str(data), "3"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    seen = []
    for j in (1, 2, 3):
        part = data / "split3" / str(j)
        lines = (part / "utt2spk").read_text().splitlines()
        assert len(lines) in (3, 4)  # balanced in utterances
        keys = [l.split()[0] for l in lines]
        seen += keys
        for f in ("text", "wav.scp"):
            assert [l.split()[0] for l in (part / f).read_text().splitlines()] == keys
        # spk2utt is rebuilt from the part's own utt2spk
        spk2utt = {l.split()[0]: l.split()[1:] for l in (part / "spk2utt").read_text().splitlines()}
        assert sorted(u for us in spk2utt.values() for u in us) == sorted(keys)
        assert (part / "frame_shift").read_text() == "0.02\n"
    assert seen == uids
    p = subprocess.run([str(UTILS / "split_data.sh"), str(data), "11"], capture_output=True, text=True)
    assert p.returncode == 1 and "has 10 utterances, cannot make 11 parts" in p.stderr


def test_combine_data_merges_and_refuses_duplicates(tmp_path):
    a = _make_data_dir(tmp_path / "a", {"x": 2, "y": 1})
    b = _make_data_dir(tmp_path / "b", {"z": 2})
    p = subprocess.run([str(UTILS / "combine_data.sh"), str(tmp_path / "c"), str(tmp_path / "a"), str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    keys = [l.split()[0] for l in (tmp_path / "c" / "text").read_text().splitlines()]
    assert keys == sorted(a + b)
    assert (tmp_path / "c" / "spk2utt").read_text().splitlines()[2] == "z z-u00 z-u01"
    p = subprocess.run([str(UTILS / "combine_data.sh"), str(tmp_path / "d"), str(tmp_path / "a"), str(tmp_path / "a")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "occur in more than one source" in p.stderr
