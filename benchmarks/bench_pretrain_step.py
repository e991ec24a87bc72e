#!/usr/bin/env python3
"""Pretraining step speed: ``w2v pretrain``'s training step vs fairseq and Hugging Face, wav2vec 2.0 BASE on CPU.

One invocation measures every system on the same input and prints audio-seconds
of training per second of wall time, side by side, with our ratio to each peer:

* input: a batch of ``--batch`` x ``--seconds`` s of real speech (LJ Speech clips
  from ../shared/data, concatenated, resampled to 16 kHz); the same samples for all;
* model: wav2vec 2.0 BASE as pretrained (fairseq ``wav2vec2_base_librispeech``:
  95 M parameters, 100 negatives, mask 0.65 x 10, quantizer 2 x 320, loss weights
  0.1 / 10, feature gradient scale 0.1), randomly initialised;
* a step = forward, contrastive loss with the extra losses, backward, gradient
  scaling/clipping, Adam step;
* ours: :class:`w2vtools.train.trainer.Trainer`'s own update (seeding, autocast,
  backward, all-reduce bookkeeping, clipping, AdamW) in float32 and with bfloat16
  autocast (``run.amp=bf16``; useful on CPUs with AVX512-BF16/AMX);
* fairseq (``fairseq-fixed``, in its own venv: ``--fairseq-python``, ``$W2V_FAIRSEQ_PYTHON`` or
  ``.peers/fairseq`` from ``benchmarks/setup_peers.sh``):
  ``Wav2Vec2Model`` + ``Wav2vecCriterion`` + fairseq's ``Adam``, float32;
* Hugging Face ``Wav2Vec2ForPreTraining`` + its ``_compute_mask_indices`` /
  ``_sample_negative_indices`` + ``torch.optim.AdamW``, float32.

Each peer runs in its own fresh process with ``--threads`` torch threads (2 by
default), ``--warmup`` untimed steps, then ``--steps`` timed steps; ``--rounds`` repeats
that for every system in turn (interleaved, so a slow spell of a shared machine hits
all) and the median over all timed steps is reported.
The FLOP floor line is ``--gflops-per-audio-s`` (forward + backward of BASE is
about 3 x 14.2 GFLOP per audio second: CNN 4.9, Transformer GEMMs 8.5, attention
and positional convolution 0.8, forward) at the machine's GEMM rate, measured in
its own process with the same threads (the best of the FFN's matmul shapes and
2048^3, float32 and bfloat16); a step cannot be faster than that.

Run:  python benchmarks/bench_pretrain_step.py [--batch 4] [--seconds 4] [--threads 2] [--rounds 3]
This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_args, fairseq_python, Result, shared_data  # noqa: E402

# each precision against the peers' float32 step and the peer's own step in that precision
RATIO_PAIRS = [("ours-fp32", "fairseq"), ("ours-fp32", "huggingface"),
               ("ours-bf16", "fairseq-bf16"), ("ours-bf16", "fairseq"), ("ours-bf16", "huggingface"),
               ("ours-fp16", "fairseq-fp16"), ("ours-fp16", "fairseq"), ("ours-fp16", "huggingface")]
FAULTS_PER_STEP: list[list[int]] = []  # filled by _time_steps in a worker: minor page faults of each timed step


def make_batch(out: Path, batch: int, seconds: float, seed: int = 0) -> Path:
    """``batch`` rows of ``seconds`` s of LJ Speech at 16 kHz, saved as .npy (shared by every peer)."""
    sys.path.insert(0, str(REPO))
    from w2vtools.audio import load_audio

    data = shared_data()
    clips = [load_audio(str(p), sample_rate=16000) for p in sorted((data / "ljspeech" / "wavs").glob("*.flac"))]
    n = int(seconds * 16000)
    if clips:
        stream = np.concatenate(clips)
    else:  # no shared data: noise still times the same work
        stream = np.random.default_rng(seed).standard_normal(batch * n).astype(np.float32) * 0.1
    rows = np.stack([stream[(i * n) % max(1, len(stream) - n):][:n] for i in range(batch)]).astype(np.float32)
    np.save(out, rows)
    return out


# ----------------------------------------------------------------------------------- workers
# Each worker runs in a fresh process: python bench_pretrain_step.py --worker NAME --input X.npy


def _time_steps(step, warmup: int, steps: int) -> list[float]:
    import resource

    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    for _ in range(warmup):
        step()
    times, faults = [], []
    for _ in range(steps):
        sync()
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)
    FAULTS_PER_STEP.append(faults)
    return times


def worker_ours(x, args, amp: str) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from w2vtools.formats.utterance import Utterance
    from w2vtools.pretrain import build_model
    from w2vtools.train.config import resolve_config
    from w2vtools.train.data import AudioDataset
    from w2vtools.train.objectives import PretrainObjective
    from w2vtools.train.distributed import DistInfo
    from w2vtools.train.launch import set_process_state
    from w2vtools.train.trainer import Trainer

    cfg = resolve_config("wav2vec2", args.preset, sets=[
        f"run.amp={amp}", f"run.threads={args.threads}", "run.tensorboard=false", "data.num_workers=0",
        "optim.clip_norm=0", "run.log_interval=1000000",
    ])
    device = torch.device(args.device)
    set_process_state(cfg.run.threads, device)  # as `w2v pretrain` does, before the model
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    # the dataset is only needed to build the trainer: lengths given, no audio is read
    ds = AudioDataset([Utterance(f"u{i}", "/dev/null") for i in range(8)], lengths=[x.shape[1]] * 8,
                      min_sample_size=0, max_sample_size=x.shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        # only updates are timed: nothing is saved or resumed
        trainer = Trainer(model, PretrainObjective(), cfg, train_set=ds, save_dir=tmp, save_fn=None, load_fn=None,
                          dist_info=DistInfo(device=device))
        source = torch.from_numpy(x)
        counter = {"i": 0}

        def step():
            batch = {"source": source, "padding_mask": None, "epoch": 0, "index": counter["i"],
                     "num_samples": source.numel(), "id": []}
            counter["i"] += 1
            trainer._update([batch])

        times = _time_steps(step, args.warmup, args.steps)
    return {"times": times, "torch": torch.__version__, "threads": torch.get_num_threads()}


def worker_fairseq(x, args, half: str | None = None) -> dict:
    """fairseq's model, criterion and Adam, as its trainer runs them.

    ``half`` is fairseq's ``--fp16`` or ``--bf16``: the model and the batch in half precision, an
    ``FP16Optimizer`` keeping float32 master weights, and for fp16 its dynamic loss scaler (a step
    that overflows is skipped, as the trainer does). fairseq's ``--amp`` (autocast) cannot run this
    model: ``apply_mask`` writes the float32 ``mask_emb`` into the half-precision features.
    """
    import torch

    torch.set_num_threads(args.threads)
    from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from fairseq.optim.adam import Adam

    torch.manual_seed(0)
    # wav2vec2_base_librispeech.yaml: the dataclass defaults plus these
    cfg = Wav2Vec2Config(quantize_targets=True, final_dim=256, encoder_layerdrop=0.05, dropout_input=0.1,
                         dropout_features=0.1, feature_grad_mult=0.1)
    device = torch.device(args.device)
    dtype = {None: torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[half]
    model = Wav2Vec2Model(cfg).train().to(device, dtype)
    crit = Wav2vecCriterion(task=None, infonce=True, loss_weights=[0.1, 10],
                            log_keys=["prob_perplexity", "code_perplexity", "temp"])
    params = [p for p in model.parameters() if p.requires_grad]
    if half:
        from omegaconf import OmegaConf

        from fairseq.dataclass.configs import FairseqConfig
        from fairseq.optim.adam import FairseqAdamConfig
        from fairseq.optim.fp16_optimizer import FP16Optimizer

        fcfg = OmegaConf.structured(FairseqConfig)
        fcfg.common.fp16, fcfg.common.bf16 = half == "fp16", half == "bf16"
        # fairseq flattens the master weights only on CUDA (the CPU is for a dry run of this code)
        fcfg.common.fp16_no_flatten_grads = device.type != "cuda"
        fcfg.optimizer = OmegaConf.structured(FairseqAdamConfig(_name="adam", lr=[5e-4], adam_betas="(0.9, 0.98)",
                                                                adam_eps=1e-6, weight_decay=0.01))
        opt = FP16Optimizer.build_optimizer(fcfg, params)
    else:
        opt = Adam(params, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    source = torch.from_numpy(x).to(device, dtype)
    sample = {"id": torch.arange(source.size(0)), "net_input": {"source": source, "padding_mask": None}}
    state = {"n": 0, "overflows": 0}

    def step():
        loss, sample_size, _ = crit(model, sample)
        if half:
            opt.backward(loss)  # scales the loss (fp16)
            opt.multiply_grads(1.0 / sample_size)  # the trainer's multiply_grads(1 / sample_size)
            try:
                opt.clip_grad_norm(0)  # measures the norm and raises OverflowError on inf/nan
                opt.step()
            except OverflowError:
                state["overflows"] += 1
        else:
            loss.backward()
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(1.0 / sample_size)
            torch.nn.utils.clip_grad_norm_(params, float("inf"))
            opt.step()
        opt.zero_grad()
        state["n"] += 1
        model.set_num_updates(state["n"])

    import fairseq

    times = _time_steps(step, args.warmup, args.steps)
    return {"times": times, "torch": torch.__version__, "fairseq": fairseq.__version__,
            "threads": torch.get_num_threads(), **({"overflow steps": state["overflows"]} if half == "fp16" else {})}


def worker_hf(x, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(  # BASE as pretrained
        feat_extract_norm="group", do_stable_layer_norm=False, num_negatives=100, mask_time_prob=0.65,
        mask_time_length=10, codevector_dim=256, proj_codevector_dim=256, num_codevector_groups=2,
        num_codevectors_per_group=320, diversity_loss_weight=0.1, layerdrop=0.05, feat_proj_dropout=0.1,
        feat_quantizer_dropout=0.1, hidden_dropout=0.1, attention_dropout=0.1,
    )
    device = torch.device(args.device)
    model = Wav2Vec2ForPreTraining(cfg).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    source = torch.from_numpy(x).to(device)
    b, s = source.shape
    frames = int(model._get_feat_extract_output_lengths(s))

    def step():
        mask = _compute_mask_indices((b, frames), mask_prob=0.65, mask_length=10, min_masks=2)
        negatives = _sample_negative_indices((b, frames), 100, mask_time_indices=mask)
        out = model(source, mask_time_indices=torch.from_numpy(mask).to(device),
                    sampled_negative_indices=torch.from_numpy(negatives).to(device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        opt.step()
        opt.zero_grad()

    times = _time_steps(step, args.warmup, args.steps)
    return {"times": times, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads()}


def worker_gemm(args, dtypes: tuple[str, ...] = ("float32", "bfloat16"), budget_s: float = 10.0) -> dict:
    """Best GFLOP/s of float32 / bfloat16 matmuls (the Transformer's FFN shapes and 2048^3).

    Each dtype stops after about ``budget_s`` seconds: on a CPU without bf16 instructions
    (AVX2 only) a bf16 matmul is a single-threaded fallback two orders of magnitude slower than float32,
    and the full set of rounds would take many minutes there.
    """
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(getattr(args, "device", "cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # the FFN's shapes at the batch's frame count, and a square one; a GPU needs larger ones to be busy
    rows = 800 if device.type == "cpu" else 6000
    shapes = ((rows, 768, 3072), (rows, 3072, 768), (2048, 2048, 2048) if device.type == "cpu" else (8192, 8192, 8192))
    rates = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        best, start = 0.0, time.perf_counter()
        for m, k, n in shapes:
            a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
            for _ in range(5):  # rounds: the best one is the machine's rate
                if best and time.perf_counter() - start > budget_s:
                    break
                sync()
                t0 = time.perf_counter()
                a @ b  # warm-up, and how many products fit in a fifth of a second
                sync()
                reps = max(1, min(50, int(0.2 / max(time.perf_counter() - t0, 1e-6))))
                t0 = time.perf_counter()
                for _ in range(reps):
                    a @ b
                sync()
                best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
        rates[name] = best
    return {"times": [], **rates}


def run_worker(name: str, args) -> None:
    if name == "gemm":
        print("RESULT " + json.dumps(worker_gemm(args)))
        return
    x = np.load(args.input)
    if name == "ours-fp32":
        res = worker_ours(x, args, "none")
    elif name == "ours-bf16":
        res = worker_ours(x, args, "bf16")
    elif name == "ours-fp16":
        res = worker_ours(x, args, "fp16")
    elif name == "fairseq":
        res = worker_fairseq(x, args)
    elif name == "fairseq-fp16":
        res = worker_fairseq(x, args, half="fp16")
    elif name == "fairseq-bf16":
        res = worker_fairseq(x, args, half="bf16")
    elif name == "huggingface":
        res = worker_hf(x, args)
    else:
        raise SystemExit(f"unknown worker {name}")
    res["faults_each_step"] = FAULTS_PER_STEP[-1] if FAULTS_PER_STEP else None
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------------- driver


def spawn(name: str, python: str, args, batch_file: Path) -> dict | None:
    cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--input", str(batch_file),
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--device", args.device, "--preset", args.preset]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "") if "ours" in name else env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"{name}: failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}",
          file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed steps first (default 5: on a CPU ours' heap grows over the first "
                         "four or five float32 steps, each faulting in tens of thousands of pages; "
                         "every timed step's faults are printed, so a step still growing shows)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="run every system this many times, interleaved")
    ap.add_argument("--gflops-per-audio-s", type=float, default=42.6)
    ap.add_argument("--only", default=None,
                    help="comma-separated subset: ours-fp32,ours-bf16,ours-fp16,fairseq,fairseq-fp16,fairseq-bf16,huggingface "
                    "(default: the float32 ones and ours-bf16; the half-precision peers are for CUDA)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where every system runs")
    ap.add_argument("--preset", default="base", choices=["base", "tiny"],
                    help="our architecture (tiny: a quick check that the step runs; the peers are BASE only)")
    ap.add_argument("--fairseq-python", default=None,
                    help="the fairseq venv's interpreter (default: $W2V_FAIRSEQ_PYTHON, then .peers/fairseq/bin/python, "
                         "which benchmarks/setup_peers.sh builds)")
    add_common_args(ap)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--input", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(args.worker, args)
        return

    audio_s = args.batch * args.seconds
    print(f"wav2vec 2.0 {args.preset.upper()} pretraining step on {args.device}: {args.batch} x {args.seconds:g} s, {args.threads} threads, "
          f"median of {args.rounds} x {args.steps} steps, each round after {args.warmup} warm-up")
    peers = [("ours-fp32", sys.executable), ("ours-bf16", sys.executable), ("ours-fp16", sys.executable)]
    fs = fairseq_python(args.fairseq_python)
    try:
        import fairseq  # noqa: F401  (importable here: use this interpreter)

        fs = sys.executable
    except ImportError:
        pass
    peers += [("fairseq", fs), ("fairseq-fp16", fs), ("fairseq-bf16", fs), ("huggingface", sys.executable)]
    keep = set(args.only.split(",")) if args.only else {"ours-fp32", "ours-bf16", "fairseq", "huggingface"}
    peers = [p for p in peers if p[0] in keep]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the floor is BASE's FLOPs at this CPU's GEMM rate, measured before the systems run
        gemm = spawn("gemm", sys.executable, args, Path(tmp) / "none.npy") if args.preset == "base" else None
    if gemm and gemm["bfloat16"] < gemm["float32"] and not args.only and any(p[0] == "ours-bf16" for p in peers):
        peers = [p for p in peers if p[0] != "ours-bf16"]
        print(f"ours-bf16    skipped: this CPU's bf16 GEMM ({gemm['bfloat16']:.0f} GFLOP/s) is slower than its float32 one "
              f"({gemm['float32']:.0f}): no bf16 instructions, so autocast cannot speed the step up (--only ours-bf16 runs it)")
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = make_batch(Path(tmp) / "batch.npy", args.batch, args.seconds)
        times: dict[str, list[float]] = {}
        faults: dict[str, list[float]] = {}
        for rnd in range(args.rounds):  # rounds interleave the systems, so drifts in the machine hit all
            for name, python in peers:
                if python is None:
                    if rnd == 0:
                        print(f"{name:<12} skipped (no fairseq venv: run benchmarks/setup_peers.sh or pass --fairseq-python)")
                    continue
                res = spawn(name, python, args, batch_file)
                if res is None:
                    continue
                times.setdefault(name, []).extend(res["times"])
                step_faults = res.pop("faults_each_step", None) or []
                faults.setdefault(name, []).extend(step_faults)
                t = float(np.median(times[name]))
                results[name] = audio_s / t
                versions = ", ".join(f"{k} {v}" for k, v in res.items() if k != "times")
                label = f" round {rnd + 1}" if args.rounds > 1 else ""
                print(f"{name:<12} {results[name]:6.2f} audio-s/s   step {t:6.2f} s   (median so far{label}; "
                      f"steps {', '.join(f'{v:.2f}' for v in res['times'])}; minor page faults "
                      f"{', '.join(str(v) for v in step_faults)}; {versions})", flush=True)
    floors = {}
    if gemm:
        for dtype, ours in (("float32", "ours-fp32"), ("bfloat16", "ours-bf16")):
            floor = gemm[dtype] / args.gflops_per_audio_s
            reached = f"; {ours} reaches {results[ours] / floor:.0%} of it" if ours in results else ""
            if ours in results:
                floors[ours] = results[ours] / floor
            print(f"{'floor ' + ('fp32' if dtype == 'float32' else 'bf16'):<12} {floor:6.2f} audio-s/s   ({args.gflops_per_audio_s:g} GFLOP per audio-s at "
                  f"{gemm[dtype]:.0f} GFLOP/s, the best {dtype} GEMM here{reached})")
    pairs = [(o, p) for o, p in RATIO_PAIRS if o in results and p in results]
    for ours, peer in pairs:
        print(f"ratio {ours} / {peer}: {results[ours] / results[peer]:.2f}x")
    # the median over every timed step of every round: one step still growing the heap is one
    # sample among them, not a share of an average
    per_step = {name: float(np.median(fs_ or [float("nan")])) for name, fs_ in faults.items()}
    print("minor page faults per step (median): " + ", ".join(f"{k} {v:.0f}" for k, v in per_step.items()))
    Result("pretrain step", "audio-s/s", results,
           ratios=pairs,
           floor=floors,
           drivers={"gemm_gflops_fp32": gemm and gemm["float32"], "gemm_gflops_bf16": gemm and gemm["bfloat16"],
                    "threads": args.threads, "page_faults_per_step": per_step}).write(args.json, args.threads)


if __name__ == "__main__":
    main()
