#!/usr/bin/env bash
# The GPU run, ready to go: when a GPU is lent it comes for minutes, so everything that needs
# one is in this one script (under 8 minutes on one GPU). It prints one table and saves it,
# with every step's log and JSON, under benchmarks/results/gpu_check-<time>/.
#
#   1 doctor      what w2v sees (torch build, devices, KenLM, the lock)
#     cudatests   the test suite's tests marked cuda (GPU against CPU results; on a CPU they skip)
#   2 featurize   wav2vec 2.0 BASE fp32 and --amp (float16 on CUDA) against transformers (fp32, and
#                 under the same autocast) and torchaudio on the same weights and audio
#                 (benchmarks/bench_featurize.py)
#   3 pretrain    one BASE training step: ours fp32 / bf16 / fp16 (GradScaler) against fairseq
#                 fp32 / --fp16 / --bf16 and transformers fp32 (benchmarks/bench_pretrain_step.py)
#   4 ddp         2 training processes for 20 updates against 1 process with --update-freq 2:
#                 the loss trajectories must match. NCCL needs a GPU per rank: with one GPU the
#                 two ranks run on it over gloo (W2V_DIST_BACKEND=gloo), with two or more, NCCL.
#   5 decode      that tiny model fine-tuned with CTC for a few updates on FSDD, decoded from audio
#   6 amp         where autocast spends a forward, float32 against bf16 and fp16, and whole featurize
#                 calls in one process (benchmarks/profile_amp.py)
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#   --dry-run   every step on the CPU at toy sizes (tiny models, a few utterances): the test
#               suite runs this, so the script cannot rot while no GPU is around
# Needs ../shared/data (or $W2V_SHARED_DATA): FSDD and LJ Speech; pytest for the cudatests step.
# fairseq comes from benchmarks/setup_peers.sh ($W2V_FAIRSEQ_PYTHON); without it those rows say
# "not run".
# $W2V_COMMIT names the commit where the tree is a copy without .git.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
out="${out:-$repo/benchmarks/results/gpu_check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
data="${W2V_SHARED_DATA:-$repo/../shared/data}"
python="${W2V_PYTHON:-python3}"
export PATH="$repo/bin:$repo/tools/bin:$PATH" PYTHONUNBUFFERED=1 W2V_PYTHON="$python"
work="$out/work"

if [ "$dry" = 1 ]; then
  device=cpu; preset=tiny; feat_utts=2; amp_utts=2; step_args="--batch 1 --seconds 1 --warmup 0 --steps 1"
  step_systems="ours-fp32,ours-bf16"; ft_updates=4; ddp_updates=4; ddp_device=cpu
else
  # 300 utterances (about 2500 s): at 60 the H200 took under 2 s a system, mostly first-shape costs
  device=cuda; preset=base; feat_utts=300; amp_utts=30; step_args="--batch 8 --seconds 15 --warmup 2 --steps 5"
  step_systems="ours-fp32,ours-bf16,ours-fp16,fairseq,fairseq-fp16,fairseq-bf16,huggingface"; ft_updates=100; ddp_updates=20
  ddp_device=cuda
fi

rows=()
step() {  # step NAME COMMAND...: run, time, log to $out/NAME.log, one table row
  local name="$1"; shift
  local t0=$SECONDS
  echo "== $name: $*" >&2
  if "$@" >"$out/$name.log" 2>&1; then status=ok; else status="FAILED (rc $?)"; fi
  rows+=("| $name | $status | $((SECONDS - t0)) s | $(summary_of "$name") |")
  [ "$status" = ok ] || tail -5 "$out/$name.log" >&2
}
summary_of() {  # the line of each step's log that says what it found
  case "$1" in
    doctor) grep -E '^ +ok +torch ' "$out/doctor.log" | sed 's/^ *ok *torch *//' ;;
    featurize) grep -E '^ratio ours / (transformers Wav2Vec2Model|torchaudio wav2vec2):|^ratio ours --amp / transformers Wav2Vec2Model \(autocast\):' \
                 "$out/$1.log" | paste -sd';' ;;
    pretrain) grep -E '^(ratio |ours-[a-z0-9]+ +[0-9.]+ audio-s/s)' "$out/$1.log" | cut -c1-40 | tail -4 | paste -sd';' ;;
    decode) { grep -E 'real-time factor' "$out/decode.log" | tail -1 | sed 's/^w2v: //'
              grep -E '^%WER' "$out/decode.log" | cut -d'[' -f1-2; } | paste -sd';' ;;
    ddp) tail -1 "$out/ddp.log" ;;
    cudatests) grep -E '^[0-9]+ (passed|failed|skipped)|^(FAILED|ERROR) ' "$out/cudatests.log" | tail -3 | paste -sd';' ;;
    amp) { grep -E '^model ' "$out/amp.log" | tac | awk '!seen[$2]++' | tac | sed 's/: first pass.*second pass */ /'
           grep -E '^featurize .*same lengths' "$out/amp.log" | sed 's/ corpus B (same lengths) */ /'; } | paste -sd';' ;;
  esac
}

fsdd_data() {  # the digits recipe's data stage: Kaldi dirs, manifests, letter labels
  bash "$repo/recipes/digits/run.sh" --corpus "$data/fsdd" --workdir "$work/digits" --stop-stage 1
}

decode_check() {
  local m="$work/digits/data/manifest" ft="$work/ft"
  # the encoder: the tiny model the ddp step pretrained
  w2v finetune "$m/train_10pct.tsv" --labels ltr --init "$work/ddp1/checkpoint_last.pt" --preset tiny \
      --save-dir "$ft" --device "$device" \
      --set optim.max_update="$ft_updates" --set run.valid_interval=0 --set run.save_interval=0 \
      --set run.tensorboard=false --set data.num_workers=0 &&
  # dev: the recipe makes its test set only in its final stages, for the final numbers. The Kaldi
  # dir, as the recipe decodes it: its utterance ids are the ones data/dev/text holds
  w2v decode "$work/digits/data/dev" --model "$ft/checkpoint_last.pt" --device "$device" -o "$work/hyp.txt" &&
  w2v score "$work/digits/data/dev/text" "$work/hyp.txt"
}

cuda_tests() {  # the suite's tests marked cuda, from the files that hold them (the rest need not import here)
  local files
  files=$(grep -l "pytest.mark.cuda" "$repo"/tests/test_*.py) || { echo "no test is marked cuda"; return 1; }
  # shellcheck disable=SC2086  # one word per file
  (cd "$repo" && W2V_SHARED_DATA="$data" "$python" -m pytest -q -rs -p no:cacheprovider -m cuda $files)
}

ddp_check() {  # same seed and data: 2 ranks x update_freq 1 must train like 1 rank x update_freq 2
  local m="$work/digits/data/manifest"
  local common=(pretrain "$m/train_1pct.tsv" --arch wav2vec2 --preset tiny --device "$ddp_device" --seed 3
                --set optim.max_update="$ddp_updates" --set optim.warmup_updates=2 --set run.log_interval=1 --set run.valid_interval=0
                --set run.save_interval=0 --set run.tensorboard=false --set data.num_workers=0)
  local backend=""
  if [ "$ddp_device" = cuda ] && [ "$("$python" -c 'import torch; print(torch.cuda.device_count())')" -lt 2 ]; then
    backend=gloo
  fi
  w2v "${common[@]}" --update-freq 2 --save-dir "$work/ddp1" >/dev/null &&
  W2V_DIST_BACKEND="$backend" "$python" -m torch.distributed.run --standalone --nproc_per_node 2 \
      -m w2vtools "${common[@]}" --save-dir "$work/ddp2" >/dev/null &&
  "$python" - "$work/ddp1/log.jsonl" "$work/ddp2/log.jsonl" "${backend:-default}" <<'EOF'
import json, sys
def losses(path):
    return [(r["update"], r["loss"]) for r in map(json.loads, open(path)) if r.get("kind") == "train" and "loss" in r]
one, two = losses(sys.argv[1]), losses(sys.argv[2])
assert one and [u for u, _ in one] == [u for u, _ in two], (one, two)
worst = max(abs(a - b) / max(abs(a), 1e-6) for (_, a), (_, b) in zip(one, two))
print(f"2 ranks ({sys.argv[3]} backend) vs update_freq 2: {len(one)} updates, max relative loss difference {worst:.1e}")
sys.exit(0 if worst < 1e-3 else 1)
EOF
}

step doctor w2v doctor
step cudatests cuda_tests
step data fsdd_data
step featurize "$python" "$repo/benchmarks/bench_featurize.py" --device "$device" --preset "$preset" \
    --num-utts "$feat_utts" --rounds 1 --compare-amp --json "$out/featurize.json"
step pretrain "$python" "$repo/benchmarks/bench_pretrain_step.py" --device "$device" --preset "$preset" $step_args \
    --only "$step_systems" --json "$out/pretrain_step.json"
step ddp ddp_check
step decode decode_check
step amp "$python" "$repo/benchmarks/profile_amp.py" --device "$device" --preset "$preset" --num-utts "$amp_utts"

{
  echo "gpu_check $( [ "$dry" = 1 ] && echo '(dry run on the CPU)' ) at commit ${W2V_COMMIT:-$(git -C "$repo" rev-parse --short HEAD)}, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| step | status | time | result |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  if [ -f "$out/featurize.json" ] && [ -f "$out/pretrain_step.json" ]; then
    echo
    "$python" "$repo/benchmarks/summary.py" "$out/featurize.json" "$out/pretrain_step.json"
  fi
} | tee "$out/gpu_check.md"
! printf '%s\n' "${rows[@]}" | grep -q FAILED
