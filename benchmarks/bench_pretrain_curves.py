#!/usr/bin/env python3
"""Pretraining curves: ``w2v pretrain`` against fairseq's ``hydra_train``, the same tiny wav2vec 2.0.

For each seed, both systems pretrain the tiny wav2vec 2.0 recipe (``--arch wav2vec2
--preset tiny``: 2 Transformer layers of 64, code book 2 x 32, 20 distractors, lr 5e-3,
batches of 96k samples cropped to <= 1 s) on the same data for the same number of updates,
starting from the same weights, and validate at the same updates:

* data: FSDD (../shared/data), resampled once to 16 kHz into the work folder; training on
  the official train split (takes 5-49, 2700 recordings), validation on the test split
  (takes 0-4, 300 recordings); one fairseq TSV manifest each, read by both systems;
* initial weights: fairseq's ``Wav2Vec2Model`` built with the seed (fairseq's own
  initialisation), saved as a fairseq checkpoint; fairseq starts from it with
  ``checkpoint.finetune_from_model`` (optimizer, schedule, meters reset), ``w2v pretrain``
  from the same file imported by :func:`w2vtools.models.fairseq.load_fairseq` (the model
  ``pretrain`` builds gets these weights, nothing else changes);
* fairseq: ``fairseq_cli.hydra_train`` in its own venv (``--fairseq-python``,
  ``$W2V_FAIRSEQ_PYTHON`` or ``.peers/fairseq``), its config written from our resolved
  recipe field by field (model, ``normalize``, loss weights, Adam with decoupled weight decay,
  polynomial decay with warm-up, clipping, ``max_tokens`` = our samples per batch,
  ``required_batch_size_multiple`` 1), on the CPU with ``--threads`` threads.

What differs by design: batch order, crops, masks, distractors, dropout and Gumbel noise
come from each system's own random streams, so single curves differ; the comparison is of
means and spreads over seeds. The loss and its gradients for given randomness are equal
(tests/test_fairseq_criterion.py).

Writes ``benchmarks/results/pretrain_curves.png`` (validation loss in bits, accuracy and
code perplexity against updates, mean +- std over seeds, and training loss) and a JSON of
every curve (``--json``).

Run:  python benchmarks/bench_pretrain_curves.py [--seeds 1 2 3] [--updates 300] [--threads 2]
This is a benchmark, not a test: it takes minutes per seed and system.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_args, fairseq_python, machine_facts, shared_data  # noqa: E402

RATE = 16000
METRICS = ("loss", "accuracy", "code_perplexity", "prob_perplexity")
RENAMED = {"weight_proj_depth": "quantizer_depth", "weight_proj_factor": "quantizer_factor"}  # ours -> fairseq's


# --------------------------------------------------------------------------- data


def prepare_data(shared: Path, work: Path) -> Path:
    """FSDD at 16 kHz under ``work/wav16k`` and ``work/data/{train,valid}.tsv`` (made once)."""
    data = work / "data"
    if (data / "valid.tsv").is_file():
        return data
    sys.path.insert(0, str(REPO))
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    wav_dir = work / "wav16k"
    wav_dir.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "valid": []}
    for path in sorted((shared / "fsdd" / "recordings").glob("*.wav")):
        wav, sr = sf.read(path, dtype="float32")
        wav16 = AF.resample(torch.from_numpy(wav), sr, RATE).numpy()
        sf.write(wav_dir / path.name, wav16, RATE, subtype="PCM_16")
        split = "valid" if int(path.stem.split("_")[2]) < 5 else "train"
        rows[split].append(f"{path.name}\t{len(wav16)}")
    for split, lines in rows.items():
        (data / f"{split}.tsv").write_text(f"{wav_dir}\n" + "\n".join(lines) + "\n")
    return data


# --------------------------------------------------------------------------- configuration


def our_recipe(args) -> tuple[list[str], object, object]:
    """The ``--set`` overrides of both runs, and the resolved train and model configs."""
    sys.path.insert(0, str(REPO))
    from w2vtools.pretrain import build_model
    from w2vtools.train.config import resolve_config

    sets = [f"optim.max_update={args.updates}", f"run.valid_interval={args.valid_interval}",
            f"run.log_interval={args.log_interval}", "run.save_interval=0", "run.tensorboard=false",
            f"run.threads={args.threads}", "data.num_workers=0"]
    cfg = resolve_config("wav2vec2", "tiny", sets=sets)
    _, mcfg, _ = build_model(cfg)
    return sets, cfg, mcfg


def fairseq_config(cfg, mcfg, data: Path, save_dir: Path, seed: int, init: Path, threads: int) -> dict:
    """fairseq's hydra config for our resolved recipe, field by field."""
    import dataclasses

    model = {"_name": "wav2vec2"}
    skip = {"normalize", "diversity_weight", "feature_pen_weight", "mask_min_masks"}
    for f in dataclasses.fields(mcfg):
        if f.name in skip:
            continue
        value = getattr(mcfg, f.name)
        if f.name in RENAMED:
            model[RENAMED[f.name]] = value
            continue
        if f.name == "conv_feature_layers":
            value = str([tuple(v) for v in value])
        elif f.name == "latent_temp":
            value = list(value)
        model[f.name] = value
    assert mcfg.mask_min_masks == 2  # fairseq's is fixed at 2
    o, d, r = cfg.optim, cfg.data, cfg.run
    return {
        "common": {"cpu": True, "seed": seed, "log_format": "json", "log_interval": r.log_interval,
                   "fp16": False},
        "checkpoint": {"save_dir": str(save_dir), "finetune_from_model": str(init), "no_save": True,
                       "save_interval_updates": 0, "no_epoch_checkpoints": True},
        "task": {"_name": "audio_pretraining", "data": str(data), "max_sample_size": d.max_sample_size,
                 "min_sample_size": d.min_sample_size, "normalize": mcfg.normalize, "sample_rate": RATE},
        "dataset": {"num_workers": 0, "max_tokens": d.max_samples_per_batch, "required_batch_size_multiple": 1,
                    "skip_invalid_size_inputs_valid_test": True, "valid_subset": "valid",
                    "validate_interval_updates": r.valid_interval, "validate_interval": 100000,
                    "disable_validation": False},
        "distributed_training": {"distributed_world_size": 1},
        "criterion": {"_name": "wav2vec", "infonce": True,
                      "loss_weights": [mcfg.diversity_weight, mcfg.feature_pen_weight],
                      "log_keys": ["prob_perplexity", "code_perplexity", "temp"]},
        "optimization": {"max_update": o.max_update, "lr": [o.lr], "clip_norm": o.clip_norm, "update_freq": [1]},
        "optimizer": {"_name": "adam", "adam_betas": str(tuple(o.betas)), "adam_eps": o.eps,
                      "weight_decay": o.weight_decay},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": o.warmup_updates,
                         "end_learning_rate": o.end_lr, "power": o.power, "total_num_update": o.max_update},
        "model": model,
    }


# --------------------------------------------------------------------------- runs


def run_fairseq(python: str, config: dict, work: Path, threads: int) -> list[dict]:
    """fairseq's hydra_train with ``config``; its train_inner / valid records, our key names."""
    import yaml

    conf_dir = work / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "curves.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    cmd = [python, "-m", "fairseq_cli.hydra_train", "--config-dir", str(conf_dir), "--config-name", "curves",
           f"hydra.run.dir={work / 'hydra'}"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (work / "fairseq.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"fairseq failed (see {work / 'fairseq.log'}):\n{p.stderr[-3000:]}")
    records = []
    for line in (p.stdout + p.stderr).splitlines():
        m = re.search(r"\[(train_inner|valid)\]\[INFO\] - (\{.*\})\s*$", line)
        if not m:
            continue
        rec = json.loads(m.group(2))
        kind = "train" if m.group(1) == "train_inner" else "valid"
        prefix = "valid_" if kind == "valid" else ""
        update = int(float(rec.get("num_updates") or rec.get("valid_num_updates")))
        out = {"kind": kind, "update": update}
        for k in METRICS:
            if prefix + k in rec:
                out[k] = float(rec[prefix + k])
        records.append(out)
    return records


def run_ours(sets: list[str], data: Path, work: Path, seed: int, init: Path) -> list[dict]:
    """``w2v pretrain``'s library call in a fresh process, the model starting from ``init``."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import w2vtools.pretrain as pretrain_module
from w2vtools.models.fairseq import load_fairseq

build = pretrain_module.build_model

def build_from_init(cfg):
    model, mcfg, family = build(cfg)
    model.load_state_dict(load_fairseq({str(init)!r}).model.state_dict())
    return model, mcfg, family

pretrain_module.build_model = build_from_init
pretrain_module.pretrain({str(data / 'train.tsv')!r}, {str(data / 'valid.tsv')!r}, arch="wav2vec2",
                         preset="tiny", save_dir={str(work / 'ours')!r},
                         sets={sets + [f"run.seed={seed}"]!r}, print_config=False)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    (work / "ours.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"w2v pretrain failed (see {work / 'ours.log'}):\n{p.stderr[-3000:]}")
    records = [json.loads(line) for line in (work / "ours" / "log.jsonl").read_text().splitlines()]
    return [{"kind": r["kind"], "update": r["update"], **{k: r[k] for k in METRICS if k in r}}
            for r in records if r["kind"] in ("train", "valid")]


def make_init(python: str, config: dict, path: Path, seed: int) -> None:
    """fairseq's own initialisation of the model in ``config``, seeded, as a fairseq checkpoint."""
    code = f"""
import torch
from omegaconf import OmegaConf
from fairseq.models.wav2vec import Wav2Vec2Config, Wav2Vec2Model
model_cfg = {{k: v for k, v in {config['model']!r}.items() if k != "_name"}}
torch.manual_seed({seed})
model = Wav2Vec2Model(Wav2Vec2Config(**model_cfg))
cfg = {{"_name": None, "model": {{**model_cfg, "_name": "wav2vec2"}}, "task": {config['task']!r},
       "criterion": {config['criterion']!r}}}
torch.save({{"args": None, "cfg": cfg, "model": model.state_dict(), "criterion": None,
            "optimizer_history": [{{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {{}}, "num_updates": 0}}],
            "task_state": {{}}, "extra_state": {{"metrics": {{}}, "previous_training_time": 0,
                                                "train_iterator": {{"epoch": 1}}}}}}, {str(path)!r})
"""
    subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)


# --------------------------------------------------------------------------- summary and plot


def curves(records: list[dict], kind: str, metric: str) -> dict[int, float]:
    return {r["update"]: r[metric] for r in records if r["kind"] == kind and metric in r}


def summarize(runs: dict[str, list[list[dict]]]) -> dict:
    """Per system and metric: the validation updates and mean / std over seeds at each."""
    import numpy as np

    out: dict = {}
    for system, seeds in runs.items():
        out[system] = {}
        for metric in METRICS:
            per_seed = [curves(r, "valid", metric) for r in seeds]
            updates = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
            values = np.array([[c[u] for u in updates] for c in per_seed])
            if values.size:
                out[system][metric] = {"updates": updates, "mean": values.mean(0).tolist(),
                                       "std": values.std(0).tolist(), "seeds": values.tolist()}
    return out


def plot(runs: dict[str, list[list[dict]]], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [("loss", "valid", "validation loss (bits)"), ("accuracy", "valid", "validation accuracy"),
              ("code_perplexity", "valid", "validation code perplexity (of 64)"),
              ("loss", "train", "training loss (bits)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    colors = {"fairseq": "tab:blue", "w2v": "tab:orange"}
    for ax, (metric, kind, label) in zip(axes, panels):
        for system, seeds in runs.items():
            color = colors.get(system)
            if kind == "valid" and metric in summary.get(system, {}):
                s = summary[system][metric]
                u, m, sd = np.array(s["updates"]), np.array(s["mean"]), np.array(s["std"])
                ax.plot(u, m, "o-", color=color, label=f"{system} (mean of {len(seeds)})")
                ax.fill_between(u, m - sd, m + sd, color=color, alpha=0.2)
            else:
                for i, recs in enumerate(seeds):
                    c = curves(recs, kind, metric)
                    ax.plot(list(c), list(c.values()), "-", color=color, alpha=0.5, lw=1,
                            label=system if i == 0 else None)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}", file=sys.stderr)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--valid-interval", type=int, default=50)
    ap.add_argument("--log-interval", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/w2v_bench_pretrain_curves"),
                    help="data, initial weights and run folders (kept: a finished seed is not rerun)")
    ap.add_argument("--shared-data", type=Path, default=shared_data())
    ap.add_argument("--fairseq-python", default=None)
    ap.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "results" / "pretrain_curves.png")
    add_common_args(ap)
    args = ap.parse_args()
    python = fairseq_python(args.fairseq_python)
    if python is None:
        print("no fairseq venv: run benchmarks/setup_peers.sh or pass --fairseq-python", file=sys.stderr)
        return 1
    data = prepare_data(args.shared_data, args.work)
    sets, cfg, mcfg = our_recipe(args)
    runs: dict[str, list[list[dict]]] = {"fairseq": [], "w2v": []}
    seconds: dict[str, list[float]] = {"fairseq": [], "w2v": []}
    for seed in args.seeds:
        seed_dir = args.work / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        init = seed_dir / "init.pt"
        config = fairseq_config(cfg, mcfg, data, seed_dir / "fairseq", seed, init, args.threads)
        if not init.is_file():
            make_init(python, config, init, seed)
        for system in ("fairseq", "w2v"):
            done = seed_dir / f"{system}.json"
            if done.is_file():
                saved = json.loads(done.read_text())
            else:
                start = time.perf_counter()
                if system == "fairseq":
                    records = run_fairseq(python, config, seed_dir, args.threads)
                else:
                    records = run_ours(sets, data, seed_dir, seed, init)
                saved = {"records": records, "seconds": time.perf_counter() - start}
                done.write_text(json.dumps(saved) + "\n")
            runs[system].append(saved["records"])
            seconds[system].append(saved["seconds"])
            last = [r for r in saved["records"] if r["kind"] == "valid"][-1]
            print(f"seed {seed} {system:<8} {saved['seconds']:6.0f} s  last valid: "
                  + "  ".join(f"{k} {last[k]:.3f}" for k in METRICS if k in last), file=sys.stderr)
    summary = summarize(runs)
    for system, by_metric in summary.items():
        print(f"{system:<8} at update {by_metric['loss']['updates'][-1]} (mean +- std over {len(args.seeds)} seeds): "
              + "  ".join(f"{k} {v['mean'][-1]:.3f} +- {v['std'][-1]:.3f}" for k, v in by_metric.items()))
    plot(runs, summary, args.plot,
         f"tiny wav2vec 2.0 on FSDD, {args.updates} updates, same initial weights; "
         f"fairseq hydra_train vs w2v pretrain; seeds {' '.join(map(str, args.seeds))}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "benchmark": "pretrain_curves", "updates": args.updates, "seeds": args.seeds, "summary": summary,
            "seconds": seconds, "runs": runs, "machine": machine_facts(args.threads)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
