"""``log.jsonl`` records carry wall-clock time and elapsed seconds; a resumed run's elapsed time continues."""

from __future__ import annotations

import datetime
import json
import logging
import time

from w2vtools.train.run_log import RunLog


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_carry_time_and_elapsed_and_resume_continues(tmp_path, caplog):
    before = datetime.datetime.now(datetime.timezone.utc)
    run = RunLog(tmp_path, is_main=True, tensorboard=False)
    with caplog.at_level(logging.INFO, logger="w2v.train"):
        run.write({"kind": "train", "update": 1, "epoch": 0, "loss": 4.0})
        time.sleep(0.05)
        run.write({"kind": "valid", "update": 2, "epoch": 0, "loss": 3.0, "uer": 50.0})
        run.write({"kind": "train", "update": 3, "epoch": 0, "loss": 2.0})
    recs = _records(tmp_path / "log.jsonl")
    for r in recs:
        assert r["time"].endswith("Z")
        t = datetime.datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
        assert before - datetime.timedelta(seconds=1) <= t <= datetime.datetime.now(datetime.timezone.utc)
    assert 0 <= recs[0]["elapsed"] and recs[1]["elapsed"] >= recs[0]["elapsed"] + 0.04
    # the stderr line stays short: neither is on it
    assert "elapsed" not in caplog.text and "time" not in caplog.text and "uer 50" in caplog.text

    # resumed from update 2: the record of update 3 is dropped and elapsed goes on from update 2's
    resumed = RunLog(tmp_path, is_main=True, tensorboard=False)
    resumed.truncate_after(2)
    resumed.write({"kind": "train", "update": 3, "epoch": 0, "loss": 2.0})
    recs = _records(tmp_path / "log.jsonl")
    assert [r["update"] for r in recs] == [1, 2, 3]
    assert recs[2]["elapsed"] >= recs[1]["elapsed"]


def test_every_logged_name_is_documented_and_linked(w2v):
    from pathlib import Path

    from w2vtools.train import run_log

    repo = Path(__file__).resolve().parents[1]
    doc = (repo / "docs" / "training_logs.md").read_text()
    names = set(run_log._ORDER) | set(run_log._SHORT.values()) | run_log._NOT_ON_THE_LINE
    names |= {"loss_contrastive", "loss_quantizer", "diversity_loss", "features_pen", "kmeans_loss", "nonfinite",
              "loss_scale", "best_<metric>"}
    assert [n for n in sorted(names) if f"`{n}`" not in doc] == []
    assert "letter error rate" in doc
    assert "docs/training_logs.md" in (repo / "README.md").read_text()
    for cmd in ("pretrain", "finetune"):
        assert "docs/training_logs.md" in w2v(cmd, "--help").stdout.replace("\n  ", " ")
