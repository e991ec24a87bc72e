"""The collapse guard: a partial code-book collapse is reported, a healthy run is left alone.

The collapsing curve is the one of issue #14: the code perplexity of a 2 x 160 code book
rises to ~50 during the warm-up, then, once the Gumbel temperature reaches its floor, falls
to ~10 and stays there while the accuracy keeps climbing. The guard's old rule (under 2 %
of the codes) never fired on it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.test_train import ToyContrastive, fsdd_manifest, make_trainer, small_config  # noqa: F401
from w2vtools.errors import W2VError
from w2vtools.train.config import TrainConfig, validate_config
from w2vtools.train.guards import CollapseGuard
from w2vtools.train.objectives import Guard

WARMUP = 10  # log intervals (of 200 updates)
TEMP = (2.0, 0.5, 0.99995)  # reaches its floor 0.5 after ~27.7k updates


def record(interval: int, ppl: float, accuracy: float) -> dict:
    update = 200 * (interval + 1)
    temp = max(TEMP[0] * TEMP[2] ** update, TEMP[1])
    return {"kind": "train", "update": update, "epoch": 0, "loss": 4.0, "accuracy": accuracy,
            "code_perplexity": ppl, "prob_perplexity": 1.5 * ppl, "temp": temp}


def collapsing_run(intervals: int = 60) -> list[dict]:
    """~50 codes in use by the end of the warm-up, falling to ~10 once the temperature
    bottoms out (interval ~140 = update ~28k), with accuracy climbing throughout."""
    out = []
    for i in range(intervals):
        u = 200 * (i + 1)
        if u < 28_000:
            ppl = 10 + 40 * min(1.0, i / WARMUP)
        else:
            ppl = 10 + 40 * math.exp(-(u - 28_000) / 1500)
        ppl *= 1 + 0.03 * math.sin(1.7 * i)  # batch-to-batch noise
        out.append(record(i, ppl, accuracy=min(0.9, 0.2 + 0.01 * i)))
    return out


def healthy_run(intervals: int = 60, num_codes: int = 320) -> list[dict]:
    """Rises during the warm-up and keeps climbing slowly, with noise and two bad single batches."""
    out = []
    for i in range(intervals):
        ppl = 0.15 * num_codes + 0.45 * num_codes * (1 - math.exp(-i / 15))
        ppl *= 1 + 0.08 * math.sin(2.3 * i)
        if i in (30, 45):
            ppl *= 0.2  # one odd batch: not three in a row
        out.append(record(i, ppl, accuracy=min(0.7, 0.2 + 0.01 * i)))
    return out


def run_guard(records: list[dict], guard: CollapseGuard) -> list[dict]:
    return [w for r in records for w in guard.check(r)]


def guard_for(num_codes: int = 320, **kw) -> CollapseGuard:
    return CollapseGuard(Guard(chance_bits=math.log2(101), num_codes=num_codes, groups=2), after=200 * WARMUP, **kw)


def test_partial_collapse_at_the_temperature_floor_is_reported():
    records = collapsing_run(200)
    late = [r for r in records if r["update"] > 35_000]
    # the old rule (2 % of the codes) never saw it
    assert min(r["code_perplexity"] for r in late) > 0.02 * 320
    warnings = run_guard(records, guard_for())
    kinds = [w["warning"] for w in warnings]
    assert kinds.count("codes_fell") == 1 and kinds.count("codes_few") == 1, warnings
    fell = next(w for w in warnings if w["warning"] == "codes_fell")
    assert fell["kind"] == "warning" and 28_000 < fell["update"] < 34_000
    assert fell["peak"] == pytest.approx(50, rel=0.05) and fell["code_perplexity"] < 0.25 * fell["peak"]
    assert "accuracy" in fell["message"] and "temperature 0.5" in fell["message"]
    few = next(w for w in warnings if w["warning"] == "codes_few")
    assert few["threshold"] == pytest.approx(16.0) and few["code_perplexity"] < 16.0
    assert 28_000 < few["update"] < 34_000


def test_a_fall_from_the_peak_is_reported_while_many_codes_remain():
    # a big code book: 300 -> 60 of 640 codes is still above 5 % of the book, but a collapse
    records = [record(i, 300.0 if i < 20 else 60.0, accuracy=0.5) for i in range(40)]
    warnings = run_guard(records, guard_for(640))
    assert [w["warning"] for w in warnings] == ["codes_fell"]
    assert warnings[0]["update"] == 200 * 23 and warnings[0]["peak_update"] == 200 * WARMUP
    assert run_guard(records, guard_for(640, peak_fraction=0.0)) == []  # the rule can be turned off


@pytest.mark.parametrize("num_codes", [64, 320, 640])
def test_healthy_runs_are_left_alone(num_codes):
    assert run_guard(healthy_run(num_codes=num_codes), guard_for(num_codes)) == []


def test_warm_up_is_ignored_and_the_peak_survives_a_resume():
    guard = guard_for()
    # during the warm-up the perplexity is high, then low: neither counts
    assert run_guard([record(i, 300.0 if i < 5 else 12.0 * 2, accuracy=0.3) for i in range(WARMUP - 1)], guard) == []
    assert guard.peak is None
    records = collapsing_run(200)
    first, second = records[:120], records[120:]
    run_guard(first, guard)
    resumed = guard_for()
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))  # it goes through the checkpoint
    assert resumed.peak == guard.peak
    assert "codes_fell" in [w["warning"] for w in run_guard(second, resumed)]


def test_total_collapse_and_chance_are_still_reported():
    records = [record(i, 2.0, accuracy=0.01) | {"loss": math.log2(101)} for i in range(WARMUP + 5)]
    kinds = sorted(w["warning"] for w in run_guard(records, guard_for()))
    assert kinds == ["chance", "codes_few"]


def test_fractions_are_checked():
    cfg = TrainConfig()
    cfg.run.collapse_peak_fraction = 1.5
    with pytest.raises(W2VError, match="run.collapse_peak_fraction"):
        validate_config(cfg)


class CollapsingToy(ToyContrastive):
    """Reports a code perplexity of a 2 x 160 code book that falls from 50 to 10 at update 6."""

    latent_groups = 2
    latent_vars = 160
    quantize_targets = True

    def pretraining_loss(self, out):
        loss, n, stats = super().pretraining_loss(out)
        return loss, n, {**stats, "code_perplexity": 50.0 if self.num_updates < 5 else 10.0}


def test_trainer_writes_the_warning_to_log_jsonl(fsdd_manifest, tmp_path, caplog):  # noqa: F811
    cfg = small_config()  # warm-up 3 updates, a record every update
    cfg.optim.max_update = 9
    t = make_trainer(fsdd_manifest, tmp_path / "run", cfg, model=CollapsingToy())
    assert t.collapse.code_threshold == pytest.approx(16.0)
    with caplog.at_level("WARNING", logger="w2v.train"):
        t.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    warnings = [r for r in records if r["kind"] == "warning"]
    assert [(w["warning"], w["update"]) for w in warnings] == [("codes_few", 8), ("codes_fell", 8)], warnings
    assert warnings[1]["peak"] == 50.0 and "update 8: code perplexity 10.0 of 320 codes" in caplog.text
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert state["collapse"]["peak"] == 50.0
