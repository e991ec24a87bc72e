#!/usr/bin/env bash
# Free Spoken Digit Dataset: wav2vec 2.0 pretraining, low-resource fine-tuning
# and baselines, end to end on a CPU.
#
#   bash recipes/digits/run.sh [--corpus DIR] [--quick] [--stage N] [--stop-stage M] [--nj N]
#
# Stages (outputs under recipes/digits/{corpus,data,exp}):
#   0  download FSDD (pinned release tag) into corpus/, unless --corpus DIR is given
#   1  Kaldi data dirs train (indices 5-49) / test (0-4), label-budget subsets,
#      fairseq manifests + letter labels + dict, lexicon and a word n-gram LM
#   2  pretrain a tiny wav2vec 2.0 on all training audio, no labels
#   3  CTC fine-tuning with 1 %, 10 % and 100 % of the training labels
#   4  baselines on the same budgets: fbank features and wav2vec 2.0 features
#      (from the stage-2 model) into the same downstream CTC model
#   5  decode the test set: viterbi and lexicon + KenLM beam search
#   6  score and print the table: label budget x system -> WER
#
# A rerun skips finished stages (markers in exp/.stages); --stage/--stop-stage
# rerun exactly the stages named. Jobs go through $train_cmd/$decode_cmd of
# cmd.sh (local by default, Slurm with W2V_CMD_BACKEND=slurm).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

stage=0
stop_stage=6
corpus=             # an FSDD checkout (DIR/recordings/*.wav, or the recordings folder itself)
fsdd_tag=v1.0.10    # release downloaded by stage 0
fsdd_url=           # where stage 0 gets it (default: GitHub's archive of that tag; a mirror's URL)
workdir=            # where corpus/, data/ and exp/ go (default: the recipe folder)
quick=false         # a few minutes instead of ~13 (2 cores): far fewer updates (used by the tests)
nj=2                # parallel jobs (featurization, decoding)
budgets="1 10 100"  # percent of the training labels
lm_order=3
lm_weight=1.0       # KenLM decoding: LM weight, word insertion score, beam
word_score=0.0
beam=20
pretrain_conf=conf/pretrain.yaml
finetune_conf=conf/finetune.yaml
downstream_conf=conf/downstream.yaml
help_message="Usage: $0 [options]
  --corpus DIR          use this FSDD copy instead of downloading (stage 0)
  --fsdd-url URL        download the release archive from here instead of GitHub
  --quick               tiny run (minutes), as the test suite does
  --stage N             first stage to run (default $stage)
  --stop-stage M        last stage to run (default $stop_stage)
  --workdir DIR         put corpus/, data/, exp/ there (default: $here)
  --nj N                parallel jobs (default $nj)
  --budgets \"1 10 100\"  label budgets in percent
  --lm-order N          n-gram order of the digit LM (default $lm_order)
  --pretrain-conf, --finetune-conf, --downstream-conf FILE  training configs (conf/*.yaml)"

# Paths on the command line are relative to where the script was started;
# configs may also be named relative to the recipe folder.
path_options="corpus pretrain_conf finetune_conf downstream_conf"
. "$here/utils/recipe_common.sh" "$@"

# --quick: the same pipeline with far fewer updates.
pretrain_sets=()
finetune_sets=()
downstream_sets=()
if [ "$quick" = true ]; then
  pretrain_sets=(--max-update 30 --set optim.warmup_updates=5 --set run.valid_interval=30 --set run.log_interval=10)
  finetune_sets=(--max-update 40 --freeze-updates 10 --set run.log_interval=10)
  downstream_sets=(--max-update 60 --set run.log_interval=20)
fi

if stage_begin 0 "get the Free Spoken Digit Dataset"; then
  if [ -n "$corpus" ]; then
    [ -d "$corpus/recordings" ] && corpus=$corpus/recordings
    n=$(find "$corpus" -maxdepth 1 -name '*.wav' | wc -l)
    if [ "$n" -eq 0 ]; then
      log "ERROR: --corpus $corpus holds no FSDD recordings (*.wav, or recordings/*.wav)"
      exit 1
    fi
    log "using $n recordings in $corpus"
    recordings=$(cd "$corpus" && pwd)
  else
    "$here/local/download_fsdd.sh" --tag "$fsdd_tag" ${fsdd_url:+--url "$fsdd_url"} corpus/fsdd
    recordings=$PWD/corpus/fsdd/recordings
  fi
  mkdir -p data
  echo "$recordings" >data/recordings_dir
  stage_end
fi

if stage_begin 1 "data dirs, label budgets, manifests, lexicon and LM"; then
  [ -f data/recordings_dir ] || { log "ERROR: data/recordings_dir missing: run stage 0 first"; exit 1; }
  recordings=$(cat data/recordings_dir)
  "$W2V_PYTHON" "$here/local/prepare_fsdd.py" "$recordings" data
  for b in $budgets; do
    "$W2V_PYTHON" "$here/local/subset_budget.py" data/train "$b" "data/train_${b}pct"
  done
  for d in data/train data/test data/train_*pct; do
    w2v manifest --validate-kaldi "$d"
  done
  # fairseq view: TSV + .wrd/.ltr + dict.ltr.txt (one dictionary, counted on train)
  w2v manifest --from-kaldi data/train --dest data/manifest
  for d in data/test data/train_*pct; do
    w2v manifest --from-kaldi "$d" --dest data/manifest --dict data/manifest/dict.ltr.txt
  done
  # Lexicon of the ten words (spelled in letters) and a word n-gram LM over
  # the training transcripts.
  mkdir -p data/lang
  cut -d' ' -f2- data/train/text >data/lang/lm_train.txt
  w2v lm data/lang/lm_train.txt --order "$lm_order" --discount-fallback -o data/lang/lm.arpa \
    --dict data/manifest/dict.ltr.txt --lexicon data/lang/lexicon.txt
  cut -d' ' -f2- data/test/text >data/lang/test_text.txt
  w2v lm --eval data/lang/test_text.txt --lm data/lang/lm.arpa --dict data/manifest/dict.ltr.txt \
    2>/dev/null | tee data/lang/lm_test_eval.txt >&2
  stage_end
fi

# train_once DIR CMD...: run a training command into DIR through $train_cmd,
# continuing (--resume) from DIR/checkpoint_last.pt after an interruption
# (a stage named by --stage/--stop-stage starts over instead).
train_once() {
  local dir=$1
  shift
  unit_done "$dir" && return 0
  local resume=()
  if stage_forced; then
    rm -rf "$dir" # an explicitly selected stage trains afresh
  elif [ -f "$dir/checkpoint_last.pt" ]; then
    resume=(--resume)
  fi
  $train_cmd "$dir/log/train.log" "$@" --save-dir "$dir" ${resume[@]+"${resume[@]}"}
  grep -E '^w2v: (train|valid) \|' "$dir/log/train.log" | tail -n 1 >&2 || true
  mark_done "$dir"
}

if stage_begin 2 "pretrain a tiny wav2vec 2.0 on the training audio (no labels)"; then
  # Validation on the test audio only reports the contrastive loss; nothing is
  # selected on it: later stages take checkpoint_last.pt.
  train_once exp/pretrain \
    w2v pretrain data/train --valid data/test --arch wav2vec2 --preset tiny \
      --config "$pretrain_conf" ${pretrain_sets[@]+"${pretrain_sets[@]}"}
  stage_end
fi

# in_parallel CMD: run CMD in the background, at most $nj at once; wait_parallel
# waits for all of them and fails if any failed (each names its own log).
parallel_pids=()
in_parallel() {
  while [ "$(jobs -rp | wc -l)" -ge "$nj" ]; do wait -n || parallel_failed=1; done
  "$@" &
  parallel_pids+=($!)
}
wait_parallel() {
  local pid failed=${parallel_failed:-0}
  for pid in ${parallel_pids[@]+"${parallel_pids[@]}"}; do
    wait "$pid" || failed=1
  done
  parallel_pids=()
  parallel_failed=0
  [ "$failed" = 0 ] || { log "ERROR: a training job failed (its log is named above)"; return 1; }
}

if stage_begin 3 "fine-tune with $budgets % of the labels"; then
  for b in $budgets; do
    in_parallel train_once "exp/w2v2_ft_${b}pct" \
      w2v finetune "data/train_${b}pct" --init exp/pretrain/checkpoint_last.pt --preset tiny \
        --config "$finetune_conf" --dict data/manifest/dict.ltr.txt ${finetune_sets[@]+"${finetune_sets[@]}"}
  done
  wait_parallel
  stage_end
fi

# featurize_set KIND MODEL SET: exp/feats/KIND_SET.h5, $nj shards merged.
featurize_set() {
  local kind=$1 model=$2 set=$3 out=exp/feats/${1}_${3}.h5
  if [ -f "$out" ] && ! stage_forced; then return 0; fi
  rm -f "$out"
  $cpu_cmd JOB=1:$nj "exp/feats/log/${kind}_${set}.JOB.log" \
    w2v featurize "data/$set" "exp/feats/${kind}_${set}.JOB.h5" --model "$model" --shard JOB/$nj --threads 1 --no-progress
  w2v featurize --merge $(for ((k = 1; k <= nj; k++)); do echo "exp/feats/${kind}_${set}.$k.h5"; done) "$out"
  rm -f "exp/feats/${kind}_${set}".[0-9]*.h5
}

if stage_begin 4 "baselines: fbank and wav2vec 2.0 features into the downstream model"; then
  for set in train test; do
    featurize_set fbank fbank "$set"
    featurize_set w2v2feat exp/pretrain/checkpoint_last.pt "$set"
  done
  # every budget trains on the features of its own labelled utterances (the
  # features file holds all of train; utterances without labels are left out)
  for kind in fbank w2v2feat; do
    for b in $budgets; do
      in_parallel train_once "exp/${kind}_ds_${b}pct" \
        w2v finetune --features "exp/feats/${kind}_train.h5" --labels "data/train_${b}pct/text" \
          --arch blstm --preset tiny --config "$downstream_conf" --dict data/manifest/dict.ltr.txt \
          ${downstream_sets[@]+"${downstream_sets[@]}"}
    done
  done
  wait_parallel
  stage_end
fi

# decode_test SYSTEM_DIR: viterbi over the test set in $nj shards, keeping the
# log-probabilities, then lexicon + KenLM beam search on them:
# DIR/decode_test_{viterbi,kenlm}/hyp.JOB.txt. Fine-tuned wav2vec 2.0 models
# run on the audio, the downstream baselines on the test set's stored
# features (w2v decode --features); all systems share one decoder.
decode_test() {
  local sys=$1 model=$1/checkpoint_last.pt vdir=$1/decode_test_viterbi kdir=$1/decode_test_kenlm kind input
  [ -f "$model" ] || { log "ERROR: $model not found (run stages 3-4 first)"; return 1; }
  if ! unit_done "$vdir"; then
    rm -rf "$vdir"
    case "$sys" in
      *_ds_*)
        kind=${sys#exp/}
        kind=${kind%%_ds_*}
        input=(--features "exp/feats/${kind}_test.h5")
        ;;
      *) input=(data/test) ;;
    esac
    $decode_cmd JOB=1:$nj "$vdir/log/decode.JOB.log" \
      w2v decode "${input[@]}" --model "$model" --shard JOB/$nj --dump-emissions "$vdir/emissions.JOB.h5" \
        -o "$vdir/hyp.JOB.txt" --no-progress
    mark_done "$vdir"
  fi
  if ! unit_done "$kdir"; then
    rm -rf "$kdir"
    $decode_cmd JOB=1:$nj "$kdir/log/decode.JOB.log" \
      w2v decode --emissions "$vdir/emissions.JOB.h5" --decoder kenlm \
        --lexicon data/lang/lexicon.txt --lm data/lang/lm.arpa --lm-weight "$lm_weight" --word-score "$word_score" \
        --beam "$beam" -o "$kdir/hyp.JOB.txt" --no-progress
    mark_done "$kdir"
  fi
}

systems() {
  local b
  for b in $budgets; do
    echo "exp/w2v2_ft_${b}pct exp/fbank_ds_${b}pct exp/w2v2feat_ds_${b}pct"
  done
}

if stage_begin 5 "decode the test set: viterbi and KenLM"; then
  for sys in $(systems); do
    decode_test "$sys"
  done
  stage_end
fi

__stage_ran_6=false
if stage_begin 6 "score and print the WER table"; then
  for sys in $(systems); do
    for dec in viterbi kenlm; do
      d=$sys/decode_test_$dec
      [ -f "$d/hyp.1.txt" ] || { log "ERROR: $d/hyp.1.txt not found (run stage 5 first)"; exit 1; }
      # the shards' hypotheses, merged, straight into scoring
      sort -k1,1 "$d"/hyp.[0-9]*.txt | tee "$d/hyp.txt" |
        w2v score data/test/text - --utt2spk data/test/utt2spk --details "$d/scoring" >"$d/wer"
    done
  done
  train_utts=$(wc -l <data/train/text)
  "$W2V_PYTHON" "$here/local/wer_table.py" exp --set test --budgets "${budgets// /,}" --train-utts "$train_utts" \
    | tee exp/RESULTS.md
  __stage_ran_6=true
  stage_end
fi

# A rerun that skipped the scoring stage still shows the table.
if [ "$stop_stage" -ge 6 ] && [ "$__stage_ran_6" != true ] && [ -f exp/RESULTS.md ]; then
  cat exp/RESULTS.md
fi
