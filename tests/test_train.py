"""The training machinery (data, trainer, objectives, config) on a small stand-in model and real FSDD audio.

The stand-in is a contrastive toy defined here (not in the package): a strided conv
encoder, random frame masks and distractors drawn with torch on the device, a
summed InfoNCE loss, dropout, and ``feature_extractor``/``proj`` parameter names
so freezing can be checked. It runs a few updates in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from w2vtools.audio import load_utterance
from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.formats.corpus import read_corpus
from w2vtools.formats.manifest import Manifest, ManifestItem, write_manifest
from w2vtools.models.presets import get_preset
from w2vtools.models.unit_bert import unit_bert_preset
from w2vtools.train.config import PRESETS, TrainConfig, config_from_dict, resolve_config
from w2vtools.train.data import AudioDataset, BatchKey, BatchSampler
from w2vtools.train.objectives import CTCObjective, PretrainObjective
from w2vtools.train.checkpoints import find_trainer_state
from w2vtools.train.distributed import DistInfo
from w2vtools.train.trainer import Trainer


class ToyContrastive(nn.Module):
    sample_rate = 16000

    def __init__(self, dim: int = 16, num_negatives: int = 5, nan_calls: set[int] | None = None):
        super().__init__()
        self.num_negatives = num_negatives
        self.feature_extractor = nn.Conv1d(1, dim, 400, stride=320)
        self.context = nn.Conv1d(dim, dim, 3, padding=1)
        self.dropout = nn.Dropout(0.2)
        self.proj = nn.Linear(dim, dim)
        self.nan_calls = nan_calls or set()
        self.calls = 0
        self.num_updates = 0

    def set_num_updates(self, n: int) -> None:
        self.num_updates = n

    def forward(self, source, padding_mask=None):
        z = self.feature_extractor(source[:, None]).transpose(1, 2)  # (B, T, D)
        b, t, _ = z.shape
        mask = torch.rand(b, t, device=z.device) < 0.5
        mask[:, :2] = True
        x = z.masked_fill(mask[..., None], 0.0)
        c = self.proj(self.dropout(self.context(x.transpose(1, 2)).transpose(1, 2)))
        neg_idx = torch.randint(0, t, (b, t, self.num_negatives), device=z.device)
        negs = torch.gather(z[:, None].expand(b, t, t, z.size(-1)), 2,
                            neg_idx[..., None].expand(-1, -1, -1, z.size(-1)))
        targets = torch.cat([z[:, :, None], negs], dim=2)  # (B, T, 1+K, D)
        logits = F.cosine_similarity(c[:, :, None], targets, dim=-1) / 0.1
        return {"logits": logits[mask]}

    def pretraining_loss(self, out):
        self.calls += 1
        logits = out["logits"]
        target = torch.zeros(logits.size(0), dtype=torch.long)
        loss = F.cross_entropy(logits, target, reduction="sum")
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        correct = int((logits.argmax(-1) == 0).sum())
        return loss, logits.size(0), {"correct": correct, "count": logits.size(0), "accuracy": 0.5}


class ToyCTC(nn.Module):
    def __init__(self, vocab: int = 6):
        super().__init__()
        self.feature_extractor = nn.Conv1d(1, 8, 400, stride=320)
        self.proj = nn.Linear(8, vocab)

    def forward(self, source, padding_mask=None):
        x = self.proj(self.feature_extractor(source[:, None]).transpose(1, 2))
        return x, None


@pytest.fixture(scope="module")
def fsdd_manifest(tmp_path_factory, fsdd: Path) -> Path:
    """40 FSDD training files (8 kHz) as a TSV manifest."""
    files = sorted(p for p in fsdd.glob("*.wav") if int(p.stem.split("_")[2]) >= 5)[::60][:40]
    out = tmp_path_factory.mktemp("fsdd") / "train.tsv"
    write_manifest(out, Manifest(str(fsdd), [ManifestItem(p.name, sf.info(str(p)).frames) for p in files]))
    return out


def small_config(**run) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.max_samples_per_batch = 32_000
    cfg.data.max_sample_size = 8_000
    cfg.data.min_sample_size = 3_000
    cfg.data.num_workers = 0
    cfg.optim.lr = 3e-3
    cfg.optim.max_update = 16
    cfg.optim.warmup_updates = 3
    cfg.optim.clip_norm = 5.0
    cfg.run.log_interval = 1
    cfg.run.valid_interval = 0
    cfg.run.save_interval = 0
    cfg.run.tensorboard = False
    for k, v in run.items():
        setattr(cfg.run, k, v)
    return cfg


def save_toy(path: str, model: nn.Module, extra: dict) -> None:
    """The toys have no checkpoint format of their own: ``{"model": state_dict, **extra}``."""
    with atomic_write(path, "wb") as f:
        torch.save({"model": model.state_dict(), **extra}, f)


def load_toy(path: str) -> tuple[dict, dict]:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return raw["model"], find_trainer_state(raw, path)


def make_trainer(manifest, save_dir, cfg, model=None, valid=False, objective=None) -> Trainer:
    torch.manual_seed(0)
    model = model or ToyContrastive()
    utts = read_corpus(manifest)
    d = cfg.data
    train_set = AudioDataset(utts, sample_rate=16000, min_sample_size=d.min_sample_size,
                             max_sample_size=d.max_sample_size, seed=cfg.run.seed)
    valid_set = None
    if valid:
        valid_set = AudioDataset(utts[:12], sample_rate=16000, min_sample_size=d.min_sample_size,
                                 max_sample_size=d.max_sample_size, seed=cfg.run.seed, name="valid")
    return Trainer(model, objective or PretrainObjective(), cfg, train_set=train_set, valid_set=valid_set,
                   save_dir=save_dir, save_fn=save_toy, load_fn=load_toy, dist_info=DistInfo())


def train_losses(trainer: Trainer) -> dict[int, float]:
    return {r["update"]: r["loss"] for r in trainer.history if r["kind"] == "train"}


# ------------------------------------------------------------------------------------------ data


def test_dataset_resamples_filters_and_crops(fsdd_manifest, caplog):
    utts = read_corpus(fsdd_manifest)
    with caplog.at_level("WARNING", logger="w2v.train"):
        ds = AudioDataset(utts, sample_rate=16000, min_sample_size=6000, max_sample_size=7000, seed=3)
    # lengths come from the 8 kHz headers, doubled by resampling to 16 kHz
    full = [2 * sf.info(u.source).frames for u in utts]
    assert ds.num_too_short == sum(n < 6000 for n in full) > 0
    assert len(ds) == len(utts) - ds.num_too_short
    assert "left out %d of %d utterances shorter than 6000" % (ds.num_too_short, len(utts)) in caplog.text
    assert sorted(ds.sizes.tolist()) == sorted(n for n in full if n >= 6000)
    ids = tuple(range(4))
    batch = ds[BatchKey(0, 5, ids)]
    target = min(min(ds.sizes[list(ids)]), 7000)
    assert batch["source"].shape == (4, target) and batch["padding_mask"] is None
    assert batch["num_samples"] == 4 * target
    # each row is a contiguous window of the resampled audio, at a seeded offset
    wav = load_utterance(ds.utterances[0], 16000)
    row = batch["source"][0].numpy()
    offsets = [i for i in range(len(wav) - target + 1) if np.allclose(wav[i : i + target], row)]
    assert len(offsets) == 1
    again = ds[BatchKey(0, 5, ids)]
    assert torch.equal(again["source"], batch["source"])  # same batch key -> same crops
    other = ds[BatchKey(1, 5, ids)]
    assert not torch.equal(other["source"], batch["source"])  # another epoch -> other crops


def test_dataset_pads_with_labels(fsdd_manifest):
    utts = read_corpus(fsdd_manifest)[:5]
    labels = {u.uid: [4 + i % 3] * (i + 1) for i, u in enumerate(utts[:4])}  # the 5th has none
    ds = AudioDataset(utts, sample_rate=16000, pad=True, labels=labels, max_sample_size=10**6)
    assert ds.num_unlabelled == 1 and len(ds) == 4
    batch = ds[BatchKey(0, 0, (0, 1, 2, 3))]
    lengths = (~batch["padding_mask"]).sum(1).tolist()
    assert lengths == ds.sizes.tolist()
    assert batch["source"].shape[1] == max(lengths)
    assert batch["target_lengths"].tolist() == [1, 2, 3, 4]
    assert batch["targets"][3].tolist() == labels[ds.utterances[3].uid]


def test_batch_sampler_bounds_buckets_and_shards():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1000, 20_000, size=500)
    one = BatchSampler(sizes, max_samples=60_000, seed=7, world_size=1, update_freq=4)
    plan = one.plan(0)
    assert len(plan) % 4 == 0
    for batch in plan:
        assert len(batch) * sizes[list(batch)].max() <= 60_000
    # length bucketing: items of a batch are neighbours in length
    spread = np.mean([sizes[list(b)].max() - sizes[list(b)].min() for b in plan])
    assert spread < 0.05 * (sizes.max() - sizes.min())
    # deterministic per (seed, epoch); another epoch reorders
    assert BatchSampler(sizes, max_samples=60_000, seed=7, update_freq=4).plan(0) == plan
    assert one.plan(1) != plan
    # 2 ranks x update_freq 2 read the same plan, split disjointly by index parity
    ranks = [BatchSampler(sizes, max_samples=60_000, seed=7, world_size=2, rank=r, update_freq=2) for r in (0, 1)]
    seen = [[(k.index, k.ids) for k in s] for s in ranks]
    assert ranks[0].plan(0) == plan
    assert {i for i, _ in seen[0]}.isdisjoint({i for i, _ in seen[1]})
    assert sorted(seen[0] + seen[1]) == [(i, b) for i, b in enumerate(plan)]
    # resuming mid-epoch yields the tail
    ranks[1].set_epoch(0, start=6)
    assert [k.index for k in ranks[1]][:2] == [7, 9]
    with pytest.raises(W2VError, match="longer than the batch bound"):
        BatchSampler([70_000], max_samples=60_000)


# ------------------------------------------------------------------------------------------ config


def _model_config(cfg):
    return dataclasses.replace(get_preset(cfg.model.arch, cfg.model.model_preset), **cfg.model.overrides)


def _plain_value(value):
    return [_plain_value(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_presets_reproduce_published_recipes():
    base = resolve_config("wav2vec2", "base")
    assert (base.optim.lr, tuple(base.optim.betas), base.optim.eps, base.optim.weight_decay) == (5e-4, (0.9, 0.98), 1e-6, 0.01)
    assert (base.optim.schedule, base.optim.warmup_updates, base.optim.max_update) == ("polynomial", 32_000, 400_000)
    assert (base.data.max_samples_per_batch, base.data.max_sample_size) == (1_400_000, 250_000)
    m = _model_config(base)
    assert (m.diversity_weight, m.feature_pen_weight, m.feature_grad_mult) == (0.1, 10.0, 0.1)
    assert m.extractor_mode == "default" and m.normalize is False
    large = resolve_config("wav2vec2", "large")
    m = _model_config(large)
    assert m.extractor_mode == "layer_norm" and m.normalize is True and m.feature_pen_weight == 0.0
    assert large.optim.lr != base.optim.lr and m.latent_temp[1] == 0.1
    # a recipe states only what differs from its model preset
    for arch, table in PRESETS.items():
        for name in table:
            cfg = resolve_config(arch, name)
            # a unit BERT's size depends on its units' vocabulary: its preset takes one
            preset = (unit_bert_preset(cfg.model.model_preset, 100) if arch == "unit-bert"
                      else get_preset(arch, cfg.model.model_preset))
            for key, value in cfg.model.overrides.items():
                assert _plain_value(getattr(preset, key)) != _plain_value(value), (arch, name, key)
    assert set(PRESETS) == {"wav2vec", "vq-wav2vec", "wav2vec2", "unit-bert"}
    assert all("tiny" in table for table in PRESETS.values())


def test_config_yaml_and_set_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lr: 0.002\n  update_freq: 4\nmodel:\n  overrides:\n    encoder_layers: 3\n")
    cfg = resolve_config("wav2vec2", "tiny", config_file=y,
                         sets=["optim.lr=1e-3", "model.mask_prob=0.5", "run.amp=bf16", "optim.betas=[0.9,0.99]"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.update_freq == 4  # --set wins over YAML, YAML over preset
    assert cfg.model.overrides["encoder_layers"] == 3 and cfg.model.overrides["mask_prob"] == 0.5
    assert cfg.run.amp == "bf16" and cfg.optim.betas == (0.9, 0.99)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(W2VError, match="unknown setting optim.learning_rate"):
        resolve_config("wav2vec2", "tiny", sets=["optim.learning_rate=1"])
    with pytest.raises(W2VError, match="must be an integer"):
        resolve_config("wav2vec2", "tiny", sets=["optim.update_freq=two"])
    with pytest.raises(W2VError, match="unknown preset"):
        resolve_config("wav2vec2", "huge")


# ------------------------------------------------------------------------------------------ trainer


def test_resume_mid_epoch_is_exact(fsdd_manifest, tmp_path):
    full = make_trainer(fsdd_manifest, tmp_path / "full", small_config())
    assert full.sampler.updates_per_epoch(0) < 16  # the run crosses an epoch boundary
    full.train()
    expected = train_losses(full)
    assert sorted(expected) == list(range(1, 17))

    first = make_trainer(fsdd_manifest, tmp_path / "cut", small_config(stop_at_update=5))
    first.train()
    assert first.num_updates == 5 and (tmp_path / "cut" / "checkpoint_last.pt").is_file()
    # records written after the last checkpoint (then lost in a crash) are dropped on resume
    with open(tmp_path / "cut" / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "update": 6, "loss": 99.0}) + "\n" + '{"kind": "tr')
    second = make_trainer(fsdd_manifest, tmp_path / "cut", small_config())
    second.train(resume=tmp_path / "cut" / "checkpoint_last.pt")
    resumed = train_losses(second)
    assert sorted(resumed) == list(range(6, 17))
    for n in range(6, 17):
        assert resumed[n] == pytest.approx(expected[n], abs=1e-5), n
    logged = [json.loads(line)["update"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 17))
    # and the same weights at the end
    for (name, a), b in zip(full.core.state_dict().items(), second.core.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_nonfinite_updates_are_skipped_and_counted(fsdd_manifest, tmp_path, caplog):
    model = ToyContrastive(nan_calls={3, 4})
    cfg = small_config()
    cfg.optim.max_update = 8
    t = make_trainer(fsdd_manifest, tmp_path / "nan", cfg, model=model)
    with caplog.at_level("WARNING", logger="w2v.train"):
        summary = t.train()
    assert summary["nonfinite"] == 2 and summary["num_updates"] == 8
    assert model.calls == 10  # two forwards produced no update
    assert "non-finite loss, update skipped" in caplog.text
    assert all(math.isfinite(p.detach().sum().item()) for p in model.parameters())

    cfg.run.max_nonfinite = 3
    stuck = make_trainer(fsdd_manifest, tmp_path / "nan2", cfg, model=ToyContrastive(nan_calls=set(range(2, 99))))
    with pytest.raises(W2VError, match="3 non-finite losses/gradients in a row"):
        stuck.train()


def test_checkpoints_logs_and_validation(fsdd_manifest, tmp_path):
    cfg = small_config(save_interval=4, keep_last=2, valid_interval=6, tensorboard=True,
                       best_metric="accuracy", maximize_best=True)
    cfg.optim.max_update = 12
    t = make_trainer(fsdd_manifest, tmp_path / "ck", cfg, valid=True)
    t.train()
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert {"checkpoint_8.pt", "checkpoint_12.pt", "checkpoint_last.pt", "checkpoint_best.pt", "log.jsonl"} <= set(names)
    assert "checkpoint_4.pt" not in names  # keep_last=2
    assert not [n for n in names if n.startswith(".")]  # no temporary files left
    ck = torch.load(tmp_path / "ck" / "checkpoint_last.pt", weights_only=True)
    st = ck["trainer"]
    assert st["num_updates"] == 12 and st["world_size"] == 1 and len(st["rng"]) == 1
    assert isinstance(st["rng"][0]["torch"], torch.Tensor)
    records = [json.loads(line) for line in (tmp_path / "ck" / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["update"] for r in valid] == [6, 12]
    for key in ("loss", "accuracy", "lr", "gnorm", "audio_s_per_s", "mem_mb"):
        assert all(key in r for r in train), key
    assert 0 <= valid[-1]["accuracy"] <= 1 and valid[-1]["best_accuracy"] == max(r["accuracy"] for r in valid)
    best = torch.load(tmp_path / "ck" / "checkpoint_best.pt", weights_only=True)["trainer"]
    assert best["best"]["value"] == valid[-1]["best_accuracy"]
    assert list((tmp_path / "ck" / "tensorboard").glob("events.out.tfevents.*"))


def test_freezing_feature_encoder_and_first_updates(fsdd_manifest, tmp_path):
    cfg = small_config(freeze_feature_encoder=True, freeze_updates=3, train_during_freeze=["proj."], stop_at_update=3)
    model = ToyContrastive()
    t = make_trainer(fsdd_manifest, tmp_path / "fz", cfg, model=model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t.train()
    after3 = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(before["feature_extractor.weight"], after3["feature_extractor.weight"])
    assert torch.equal(before["context.weight"], after3["context.weight"])  # frozen for 3 updates
    assert not torch.equal(before["proj.weight"], after3["proj.weight"])  # the head trains
    cfg.run.stop_at_update = 0
    cfg.optim.max_update = 6
    t2 = make_trainer(fsdd_manifest, tmp_path / "fz", cfg, model=model)
    t2.train(resume=tmp_path / "fz" / "checkpoint_last.pt")
    assert torch.equal(before["feature_extractor.weight"], model.state_dict()["feature_extractor.weight"])
    assert not torch.equal(after3["context.weight"], model.state_dict()["context.weight"])


def test_freeze_params_leaves_named_parameters_as_they_were(fsdd_manifest, tmp_path):
    cfg = small_config(freeze_params=["feature_extractor.", "context.bias"], stop_at_update=3)
    model = ToyContrastive()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_trainer(fsdd_manifest, tmp_path / "fp", cfg, model=model).train()
    after = model.state_dict()
    for name in ("feature_extractor.weight", "feature_extractor.bias", "context.bias"):
        assert torch.equal(before[name], after[name]), name
    for name in ("context.weight", "proj.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert all(p.requires_grad for p in model.parameters())  # given back as it came

    misspelt = small_config(freeze_params=["feature_extracter."])
    with pytest.raises(W2VError, match="feature_extracter"):
        make_trainer(fsdd_manifest, tmp_path / "typo", misspelt, model=ToyContrastive())


def test_update_freq_accumulates_like_a_larger_batch(fsdd_manifest, tmp_path):
    """update_freq 2 == the gradient of both micro-batches summed, divided by their total sample size."""
    cfg = small_config(stop_at_update=1)
    cfg.optim.update_freq = 2
    cfg.optim.clip_norm = 0.0
    cfg.model.overrides = {}
    t = make_trainer(fsdd_manifest, tmp_path / "uf", cfg)
    reference = ToyContrastive()
    reference.load_state_dict(t.core.state_dict())
    # replay the first two micro-batches by hand with the trainer's per-batch seeding
    t.sampler.set_epoch(0)
    keys = list(t.sampler)[:2]
    total = 0
    for key in keys:
        batch = t.train_set[key]
        t._seed_batch(batch, "train")
        loss, n, _ = PretrainObjective()(reference, batch)
        loss.backward()
        total += n
    expected = {k: p.grad / total for k, p in reference.named_parameters()}
    captured = {}
    orig_step = t.optimizer.step

    def capture(*a, **k):
        captured.update({n: p.grad.clone() for n, p in t.core.named_parameters()})
        return orig_step(*a, **k)

    t.optimizer.step = capture
    t.train()
    for name, g in expected.items():
        assert torch.allclose(captured[name], g, rtol=1e-4, atol=1e-7), name


def test_ctc_objective_matches_torch_and_scores(fsdd_manifest):
    utts = read_corpus(fsdd_manifest)[:3]
    labels = {u.uid: [4, 5, 4][: i + 1] for i, u in enumerate(utts)}
    ds = AudioDataset(utts, sample_rate=16000, pad=True, labels=labels, max_sample_size=10**6)
    batch = ds[BatchKey(0, 0, (0, 1, 2))]
    model = ToyCTC()
    obj = CTCObjective(dictionary=["<s>", "<pad>", "</s>", "<unk>", "|", "a"])
    loss, n, stats = obj(model, batch)
    logits, _ = model(batch["source"])
    lp = logits.log_softmax(-1).transpose(0, 1)
    t = logits.size(1)
    ref = F.ctc_loss(lp, torch.cat([batch["targets"][i, : batch["target_lengths"][i]] for i in range(3)]),
                     torch.full((3,), t), batch["target_lengths"], blank=0, reduction="sum", zero_infinity=True)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and n == 3  # sentence_avg
    assert "token_errors" not in stats  # training mode: no decoding
    model.eval()
    _, _, stats = obj(model, batch)
    metrics = obj.metrics({**stats, "_batches": 1})
    assert 0 <= metrics["uer"] and "wer" in metrics
    assert metrics["loss"] == pytest.approx(ref.item() / 3 / math.log(2), rel=1e-5)


def test_collapse_guard_warns_at_chance(fsdd_manifest, tmp_path, caplog):
    cfg = small_config(collapse_warn_after=1)
    cfg.optim.lr = 1e-9  # nothing is learnt: the loss stays at chance
    cfg.optim.max_update = 6
    t = make_trainer(fsdd_manifest, tmp_path / "g", cfg, model=ToyContrastive(num_negatives=5))
    t.collapse.info = type(t.collapse.info)(chance_bits=math.log2(6), num_codes=None)
    with caplog.at_level("WARNING", logger="w2v.train"):
        t.train()
    assert "sits near chance log2(K+1)" in caplog.text


def test_patience_stops_when_validation_stops_improving(fsdd_manifest, tmp_path):
    """With lr 0 the model never changes, so validation (seeded per batch) repeats its first
    value: no new best after update 2, and patience 2 ends the run at the third validation."""
    cfg = small_config(valid_interval=2, patience=2)
    cfg.optim.lr = 0.0
    t = make_trainer(fsdd_manifest, tmp_path / "ck", cfg, valid=True)
    summary = t.train()
    assert summary["num_updates"] == 6
    valid = [r for r in t.history if r["kind"] == "valid"]
    assert [r["update"] for r in valid] == [2, 4, 6]
    assert [r["valid_since_best"] for r in valid] == [0, 1, 2]
    assert valid[0]["loss"] == valid[2]["loss"] == valid[0]["best_loss"]
    state = torch.load(tmp_path / "ck" / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert state["num_updates"] == 6 and state["best"]["valid_since_best"] == 2
    # a resumed run knows its patience is spent: it does not train on
    resumed = make_trainer(fsdd_manifest, tmp_path / "ck", cfg, valid=True)
    assert resumed.train(resume=tmp_path / "ck" / "checkpoint_last.pt")["num_updates"] == 6


def script_validation(trainer, results) -> None:
    """Validation returns the next of ``results`` as its metrics; training logs are untouched."""
    metrics = trainer.objective.metrics
    trainer._valid_stats = lambda: {"scripted": 1.0}
    trainer.objective.metrics = lambda stats: dict(next(results)) if "scripted" in stats else metrics(stats)


def test_tie_break_metric_decides_between_equal_best_metrics(fsdd_manifest, tmp_path):
    """WER stuck at 100 while CER falls is progress: with run.tie_break_metric the equal-WER
    validation with the lower CER is the new best and patience does not run out on it."""
    cfg = small_config(valid_interval=1, patience=2)
    cfg.run.best_metric, cfg.run.tie_break_metric = "wer", "cer"
    t = make_trainer(fsdd_manifest, tmp_path / "ck", cfg, valid=True)
    scripted = iter([{"wer": 100.0, "cer": 90.0}, {"wer": 100.0, "cer": 70.0}, {"wer": 100.0, "cer": 50.0},
                     {"wer": 80.0, "cer": 60.0}, {"wer": 80.0, "cer": 60.0}, {"wer": 90.0, "cer": 10.0}])
    script_validation(t, scripted)
    t.train()
    valid = [r for r in t.history if r["kind"] == "valid"]
    assert [r["valid_since_best"] for r in valid] == [0, 0, 0, 0, 1, 2]
    assert [r["best_wer"] for r in valid] == [100.0, 100.0, 100.0, 80.0, 80.0, 80.0]
    assert t.num_updates == 6  # patience 2 ran out after the sixth
    state = torch.load(tmp_path / "ck" / "checkpoint_best.pt", weights_only=True)["trainer"]
    assert state["num_updates"] == 4 and state["best"]["tie_value"] == 60.0
    # without the tie-break, the first 100 % stays best and patience stops the run at update 3
    cfg.run.tie_break_metric = ""
    t = make_trainer(fsdd_manifest, tmp_path / "ck2", cfg, valid=True)
    scripted = iter([{"wer": 100.0, "cer": 90.0}, {"wer": 100.0, "cer": 70.0}, {"wer": 100.0, "cer": 50.0}])
    script_validation(t, scripted)
    t.train()
    assert t.num_updates == 3


def test_validation_after_updates_sees_the_new_weights_through_the_models_caches(fsdd_manifest, tmp_path):
    # Without autograd the wav2vec 2.0 layers reuse folded weights (weight-normed positional
    # conv, concatenated q/k/v) keyed on the parameters' version counters, which the fused
    # Adam kernel does not bump: the trainer must, or every validation after the first runs
    # on stale weights (the resume test in test_finetune.py first showed it).
    from w2vtools.pretrain import build_model

    cfg = resolve_config("wav2vec2", "tiny", sets=[
        "optim.max_update=6", "run.valid_interval=3", "run.log_interval=1", "run.tensorboard=false",
        "data.num_workers=0", "data.max_samples_per_batch=32000", "data.max_sample_size=8000",
        "data.min_sample_size=3000", "optim.lr=0.005", "optim.warmup_updates=1",
    ])
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    trainer = make_trainer(fsdd_manifest, tmp_path, cfg, model=model, valid=True,
                           objective=PretrainObjective())
    trainer.train()
    valid = [r for r in trainer.history if r["kind"] == "valid"]
    assert [r["update"] for r in valid] == [3, 6]
    cached = [m for m in model.modules() if getattr(m, "_cache", None) is not None]
    assert cached, "no layer cached a folded weight: the test no longer tests the caches"
    for m in cached:
        m._cache = None  # what a fresh process loading these weights would compute
    assert trainer.validate()["loss"] == pytest.approx(valid[-1]["loss"], rel=1e-6)
