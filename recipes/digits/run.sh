#!/usr/bin/env bash
# Free Spoken Digit Dataset: pretraining, low-resource CTC and self-training,
# end to end on a CPU, chosen on dev and reported on test.
#
#   bash recipes/digits/run.sh [--corpus DIR] [--quick] [--seeds "1 2 3"] [--stage N] [--stop-stage M]
#
# Splits (FSDD's DIGIT_SPEAKER_INDEX.wav): test = indices 0-4 (FSDD's own split),
# dev = 5-9, train = 10-49. Everything is chosen on dev: the checkpoint of every
# run (checkpoint_best.pt, dev WER, early stopping), the pretraining checkpoint
# (dev loss), the KenLM weights of every model, the self-training teacher. The
# test audio is read by nothing before stage 7.
#
# Systems, at each label budget (--budgets, percent of train) and seed (--seeds):
#   fbank_ds   fbank features + the downstream CTC model (BiLSTM), labels only
#   pt_ft      the pretrained model (stage 2) fine-tuned with CTC
#   ptfeat_ds  the pretrained model's features + the same downstream model
#   fbank_st   self-training: fbank_ds decodes the rest of train with the LM, its
#              confident hypotheses join the labels, the same model trains again
#   pt_st      pretraining + self-training: the same, from the better (on dev) of
#              pt_ft and ptfeat_ds
#   vqbert_ds  (--vq-bert true) vq-wav2vec + BERT: a tiny vq-wav2vec pretrained on
#              the train audio, its units, a unit BERT on them; the BERT's features
#              + the same downstream model
# (At 100 % no training audio is left unlabeled: no self-training there.)
#
# Stages (outputs under recipes/digits/{corpus,data,exp}):
#   0  download FSDD (pinned release tag) into corpus/, unless --corpus DIR is given
#   1  Kaldi data dirs train / dev, label budgets and their unlabeled rest,
#      fairseq manifests + letter labels + dict, lexicon and a word n-gram LM
#   2  pretrain wav2vec 2.0 (--pretrain-arch wav2vec: wav2vec 1.0) on the train audio,
#      validated on dev; --vq-bert true: also a vq-wav2vec, its units of train and
#      dev, and a unit BERT on the train units (validated on the dev units)
#   3  features of train and dev: fbank and the pretrained model's (and the BERT's)
#   4  the labeled-only systems fbank_ds, pt_ft, ptfeat_ds (and vqbert_ds) (budgets x seeds)
#   5  decode dev with each and tune its LM weight and word score on dev
#   6  self-training: fbank_st and pt_st (budgets below 100 % x seeds), tuned on dev
#   7  test: data dir, features, decode with every system (viterbi and KenLM)
#   8  score; table budget x system -> mean +- std WER over seeds, plot
#
# A rerun skips finished stages (markers in exp/.stages) and finished units
# (DIR/.done); --stage/--stop-stage rerun exactly the stages named. Each stage
# logs its time. Jobs go through $train_cmd/$decode_cmd of cmd.sh (local by
# default, Slurm with W2V_CMD_BACKEND=slurm).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

stage=0
stop_stage=8
corpus=             # an FSDD checkout (DIR/recordings/*.wav, or the recordings folder itself)
fsdd_tag=v1.0.10    # release downloaded by stage 0
fsdd_url=           # where stage 0 gets it (default: GitHub's archive of that tag; a mirror's URL)
workdir=            # where corpus/, data/ and exp/ go (default: the recipe folder)
quick=false         # minutes instead of ~45 (2 cores): far fewer updates, one seed (the tests)
nj=2                # parallel jobs (training, featurization, decoding)
budgets="1 10 100"  # percent of the training labels
seeds="1 2 3"       # one run of every system per seed (--quick: "1" unless given)
pretrain_arch=wav2vec2   # or wav2vec (wav2vec 1.0: no CTC fine-tuning of it, so no pt_ft)
vq_bert=false       # true: add vqbert_ds (vq-wav2vec units -> unit BERT -> features + downstream)
lm_order=3
beam=20             # KenLM beam search; LM weight and word score are tuned on dev:
tune_grid="lm_weight=0:2:0.5,word_score=-1:1:1"
st_keep=0.5         # self-training: fraction of the unlabeled utterances kept as pseudo-labels
st_nbest=5
pretrain_conf=      # default: conf/pretrain.yaml (wav2vec2) or conf/pretrain_wav2vec.yaml
finetune_conf=conf/finetune.yaml
downstream_conf=conf/downstream.yaml
vq_conf=conf/pretrain_vq.yaml       # --vq-bert: the vq-wav2vec's pretraining
unit_bert_conf=conf/unit_bert.yaml  # --vq-bert: the unit BERT's
help_message="Usage: $0 [options]
  --corpus DIR          use this FSDD copy instead of downloading (stage 0)
  --fsdd-url URL        download the release archive from here instead of GitHub
  --quick               tiny run (minutes), one seed, as the suite's tests run it
  --stage N             first stage to run (default $stage)
  --stop-stage M        last stage to run (default $stop_stage)
  --workdir DIR         put corpus/, data/, exp/ there (default: $here)
  --nj N                parallel jobs (default $nj)
  --budgets \"1 10 100\"  label budgets in percent
  --seeds \"1 2 3\"       seeds: every system runs once per seed (mean +- std in the table)
  --pretrain-arch A     wav2vec2 (default) or wav2vec (1.0)
  --vq-bert true        add the system vqbert_ds: vq-wav2vec units -> unit BERT -> its
                        features + the downstream model (default $vq_bert)
  --lm-order N          n-gram order of the digit LM (default $lm_order)
  --tune-grid G         KenLM settings searched on dev (default $tune_grid)
  --st-keep F           fraction of the unlabeled audio kept as pseudo-labels (default $st_keep)
  --pretrain-conf, --finetune-conf, --downstream-conf, --vq-conf, --unit-bert-conf FILE
                        training configs (conf/*.yaml)"

# Paths on the command line are relative to where the script was started;
# configs may also be named relative to the recipe folder.
path_options="corpus pretrain_conf finetune_conf downstream_conf vq_conf unit_bert_conf"
. "$here/utils/recipe_common.sh" "$@"

case "$pretrain_arch" in
  wav2vec2) pt_name="wav2vec 2.0"; pretrain_conf=${pretrain_conf:-$here/conf/pretrain.yaml} ;;
  wav2vec) pt_name="wav2vec"; pretrain_conf=${pretrain_conf:-$here/conf/pretrain_wav2vec.yaml} ;;
  *) log "ERROR: --pretrain-arch takes wav2vec2 or wav2vec, got '$pretrain_arch'"; exit 1 ;;
esac
case "$vq_bert" in
  true | false) ;;
  *) log "ERROR: --vq-bert takes true or false, got '$vq_bert'"; exit 1 ;;
esac

# --quick: the same pipeline with far fewer updates and one seed.
pretrain_sets=()
finetune_sets=()
downstream_sets=()
unit_bert_sets=()
if [ "$quick" = true ]; then
  pretrain_sets=(--max-update 30 --set optim.warmup_updates=5 --set run.valid_interval=30 --set run.log_interval=10)
  unit_bert_sets=(--max-update 30 --set optim.warmup_updates=5 --set run.valid_interval=30 --set run.log_interval=10)
  finetune_sets=(--max-update 40 --freeze-updates 10 --set run.log_interval=10 --set run.valid_interval=20)
  downstream_sets=(--max-update 60 --set run.log_interval=20 --set run.valid_interval=30)
  case " ${cmdline_options:-} " in *" seeds "*) ;; *) seeds=1 ;; esac
  tune_grid="lm_weight=0:2:1,word_score=-1:0:1"
fi

# The labeled-only systems (stage 4), then the self-trained ones (stage 6).
base_systems="fbank_ds ptfeat_ds"
[ "$pretrain_arch" = wav2vec2 ] && base_systems="pt_ft $base_systems"
[ "$vq_bert" = true ] && base_systems="$base_systems vqbert_ds"
st_budgets=""
for b in $budgets; do
  [ "$b" = 100 ] || st_budgets="$st_budgets $b"
done

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

if stage_begin 1 "data dirs train/dev, label budgets, manifests, lexicon and LM"; then
  [ -f data/recordings_dir ] || { log "ERROR: data/recordings_dir missing: run stage 0 first"; exit 1; }
  recordings=$(cat data/recordings_dir)
  "$W2V_PYTHON" "$here/local/prepare_fsdd.py" "$recordings" data --splits train,dev
  for b in $budgets; do
    "$W2V_PYTHON" "$here/local/subset_budget.py" data/train "$b" "data/train_${b}pct" --rest "data/train_${b}pct_unlab"
  done
  for d in data/train data/dev data/train_*pct data/train_*pct_unlab; do
    [ -d "$d" ] && w2v manifest --validate-kaldi "$d"
  done
  # fairseq view: TSV + .wrd/.ltr + dict.ltr.txt (one dictionary, counted on train)
  w2v manifest --from-kaldi data/train --dest data/manifest
  for d in data/dev data/train_*pct; do
    w2v manifest --from-kaldi "$d" --dest data/manifest --dict data/manifest/dict.ltr.txt
  done
  # Lexicon of the ten words (spelled in letters) and a word n-gram LM over
  # the training transcripts; its perplexity on dev.
  mkdir -p data/lang
  cut -d' ' -f2- data/train/text >data/lang/lm_train.txt
  w2v lm data/lang/lm_train.txt --order "$lm_order" --discount-fallback -o data/lang/lm.arpa \
    --dict data/manifest/dict.ltr.txt --lexicon data/lang/lexicon.txt
  cut -d' ' -f2- data/dev/text >data/lang/dev_text.txt
  w2v lm --eval data/lang/dev_text.txt --lm data/lang/lm.arpa --dict data/manifest/dict.ltr.txt \
    2>/dev/null | tee data/lang/lm_dev_eval.txt >&2
  stage_end
fi

# logged LOG CMD...: run CMD with its stderr in LOG; if it fails, say so and name LOG.
logged() {
  local logfile=$1
  shift
  mkdir -p "$(dirname "$logfile")"
  "$@" 2>"$logfile" || { log "ERROR: ${1##*/} ${2##*/} failed (exit $?): see $logfile"; return 1; }
}

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
  [ -f "$dir/checkpoint_best.pt" ] || { log "ERROR: $dir: no checkpoint_best.pt (no validation ran?)"; return 1; }
  mark_done "$dir"
}

if stage_begin 2 "pretrain a tiny $pt_name on the train audio (no labels), validated on dev"; then
  # checkpoint_best.pt: the lowest contrastive loss on the dev audio
  train_once exp/pretrain \
    w2v pretrain data/train --valid data/dev --arch "$pretrain_arch" --preset tiny \
      --config "$pretrain_conf" ${pretrain_sets[@]+"${pretrain_sets[@]}"}
  if [ "$vq_bert" = true ]; then
    # vq-wav2vec + BERT (Baevski et al. 2020): a tiny Gumbel vq-wav2vec on the train
    # audio (checkpoint_best.pt: the lowest dev loss), its codes of train and dev
    # ('g0-g1' per 10 ms frame), a unit BERT on the train units (checkpoint_best.pt:
    # the best masked-unit accuracy on the dev units)
    train_once exp/pretrain_vq \
      w2v pretrain data/train --valid data/dev --arch vq-wav2vec --preset tiny \
        --config "$vq_conf" ${pretrain_sets[@]+"${pretrain_sets[@]}"}
    for set in train dev; do
      if [ ! -f "exp/units/$set.txt" ] || stage_forced; then
        logged "exp/units/log/quantize_$set.log" \
          w2v quantize "data/$set" "exp/units/$set.txt" --model exp/pretrain_vq/checkpoint_best.pt --threads 1
      fi
    done
    train_once exp/unit_bert \
      w2v pretrain exp/units/train.txt --valid exp/units/dev.txt --arch unit-bert --preset tiny \
        --config "$unit_bert_conf" ${unit_bert_sets[@]+"${unit_bert_sets[@]}"}
  fi
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
  [ "$failed" = 0 ] || { log "ERROR: a job failed (its log is named above)"; return 1; }
}

# featurize_set KIND MODEL SET [OPTIONS...]: exp/feats/KIND_SET.h5, $nj shards merged;
# OPTIONS go to w2v featurize (--bert BERT: the unit BERT's features of MODEL's codes).
featurize_set() {
  local kind=$1 model=$2 set=$3 out=exp/feats/${1}_${3}.h5
  shift 3
  if [ -f "$out" ] && ! stage_forced; then return 0; fi
  rm -f "$out"
  $cpu_cmd JOB=1:$nj "exp/feats/log/${kind}_${set}.JOB.log" \
    w2v featurize "data/$set" "exp/feats/${kind}_${set}.JOB.h5" --model "$model" --shard JOB/$nj --threads 1 --no-progress \
      "$@"
  w2v featurize --merge $(for ((k = 1; k <= nj; k++)); do echo "exp/feats/${kind}_${set}.$k.h5"; done) "$out"
  rm -f "exp/feats/${kind}_${set}".[0-9]*.h5
}

# featurize_vqbert SET: the unit BERT's features of the vq-wav2vec's codes of SET
# (last BERT layer, one vector per 10 ms code frame): exp/feats/vqbert_SET.h5.
featurize_vqbert() {
  featurize_set vqbert exp/pretrain_vq/checkpoint_best.pt "$1" --bert exp/unit_bert/checkpoint_best.pt
}

if stage_begin 3 "features of train and dev: fbank and the pretrained $pt_name"; then
  for set in train dev; do
    featurize_set fbank fbank "$set"
    featurize_set ptfeat exp/pretrain/checkpoint_best.pt "$set"
    if [ "$vq_bert" = true ]; then featurize_vqbert "$set"; fi
  done
  stage_end
fi

# train_system DIR INPUT LABELED SEED: one CTC model into DIR on the labeled
# data dir LABELED (its text: labels, or labels + pseudo-labels), validated on
# dev (checkpoint_best.pt: dev WER; early stopping). INPUT is `audio` (the
# pretrained model fine-tuned) or the features KIND (exp/feats/KIND_*.h5) of
# the downstream model; DIR/input records it for the decoders.
train_system() {
  local dir=$1 input=$2 labeled=$3 seed=$4
  if [ "$input" = audio ]; then
    train_once "$dir" w2v finetune "$labeled" --valid data/dev --init exp/pretrain/checkpoint_best.pt --preset tiny \
      --config "$finetune_conf" --dict data/manifest/dict.ltr.txt --seed "$seed" \
      ${finetune_sets[@]+"${finetune_sets[@]}"}
  else
    train_once "$dir" w2v finetune --features "exp/feats/${input}_train.h5" --labels "$labeled/text" \
      --valid-features "exp/feats/${input}_dev.h5" --valid-labels data/dev/text \
      --arch blstm --preset tiny --config "$downstream_conf" --dict data/manifest/dict.ltr.txt --seed "$seed" \
      ${downstream_sets[@]+"${downstream_sets[@]}"}
  fi
  echo "$input" >"$dir/input"
}

# input_of SYSTEM: what a labeled-only system trains on.
input_of() {
  case "$1" in
    pt_ft) echo audio ;;
    fbank_ds) echo fbank ;;
    ptfeat_ds) echo ptfeat ;;
    vqbert_ds) echo vqbert ;;
    *) log "ERROR: unknown system $1"; return 1 ;;
  esac
}

if stage_begin 4 "labeled-only systems ($base_systems) at $budgets % of the labels, seeds $seeds"; then
  for sys in $base_systems; do # the slowest first: fine-tuning on audio, the largest budgets
    for b in $(printf '%s\n' $budgets | sort -rn); do
      for seed in $seeds; do
        in_parallel train_system "exp/${sys}_${b}pct_s$seed" "$(input_of "$sys")" "data/train_${b}pct" "$seed"
      done
    done
  done
  wait_parallel
  stage_end
fi

# decode_set DIR SET [J]: viterbi over data/SET (or its features) with DIR's
# checkpoint_best.pt, keeping the log-probabilities, in J shards (default $nj):
# DIR/decode_SET_viterbi/{hyp.JOB.txt,emissions.h5}.
decode_set() {
  local dir=$1 set=$2 j=${3:-$nj} vdir=$1/decode_$2_viterbi input
  unit_done "$vdir" && return 0
  [ -f "$dir/checkpoint_best.pt" ] || { log "ERROR: $dir/checkpoint_best.pt not found"; return 1; }
  input=$(cat "$dir/input")
  rm -rf "$vdir"
  local from=("data/$set")
  [ "$input" = audio ] || from=(--features "exp/feats/${input}_$set.h5")
  $decode_cmd JOB=1:$j "$vdir/log/decode.JOB.log" \
    w2v decode "${from[@]}" --model "$dir/checkpoint_best.pt" --shard JOB/$j \
      --dump-emissions "$vdir/emissions.JOB.h5" -o "$vdir/hyp.JOB.txt" --no-progress
  if [ "$j" -eq 1 ]; then
    mv "$vdir/emissions.1.h5" "$vdir/emissions.h5"
  else
    w2v featurize --merge "$vdir"/emissions.[0-9]*.h5 "$vdir/emissions.h5"
    rm -f "$vdir"/emissions.[0-9]*.h5
  fi
  mark_done "$vdir"
}

# tune_kenlm DIR: DIR/kenlm.yaml, the KenLM settings of DIR's model searched
# (--tune-grid) on its dev emissions. The search's best trial is the dev KenLM
# result: DIR/decode_dev_kenlm/wer (errors/words; no second decode for it).
tune_kenlm() {
  local dir=$1 kdir=$1/decode_dev_kenlm
  unit_done "$kdir" && return 0
  rm -rf "$kdir"
  mkdir -p "$kdir"
  logged "$kdir/tuning.log" w2v decode --emissions "$dir/decode_dev_viterbi/emissions.h5" --decoder kenlm --lexicon data/lang/lexicon.txt \
    --lm data/lang/lm.arpa --beam "$beam" --tune "$tune_grid" --jobs 1 --ref data/dev/text \
    -o "$dir/kenlm.yaml"
  sed -n 's|^# w2v decode --tune: best .*: WER \([0-9.]*\) (\([0-9]*\)/\([0-9]*\)).*|%WER \1 [ \2 / \3 ] best of --tune-grid on dev|p' \
    "$dir/kenlm.yaml" >"$kdir/wer"
  grep -q '^%WER' "$kdir/wer" || { log "ERROR: $dir/kenlm.yaml: no best WER from w2v decode --tune"; return 1; }
  mark_done "$kdir"
}

# dev_system DIR: decode dev (one shard: one job per model), score it, tune
# KenLM on it.
dev_system() {
  local dir=$1
  decode_set "$dir" dev 1
  sort -k1,1 "$dir"/decode_dev_viterbi/hyp.[0-9]*.txt | w2v score data/dev/text - >"$dir/decode_dev_viterbi/wer"
  tune_kenlm "$dir"
}

if stage_begin 5 "decode dev and tune the KenLM weights on dev, every labeled-only system"; then
  for sys in $base_systems; do
    for b in $budgets; do
      for seed in $seeds; do
        in_parallel dev_system "exp/${sys}_${b}pct_s$seed"
      done
    done
  done
  wait_parallel
  "$W2V_PYTHON" "$here/local/wer_table.py" exp --set dev --budgets "${budgets// /,}" --seeds "${seeds// /,}" \
    --systems "${base_systems// /,}" --decoders kenlm --pt-name "$pt_name" >exp/RESULTS_dev_labeled.md
  cat exp/RESULTS_dev_labeled.md >&2
  stage_end
fi

# mean_dev_wer SYSTEM BUDGET: the KenLM dev WER averaged over the seeds.
mean_dev_wer() {
  local sys=$1 b=$2 seed
  for seed in $seeds; do
    grep -m1 '^%WER' "exp/${sys}_${b}pct_s$seed/decode_dev_kenlm/wer" | awk '{print $2}'
  done | awk '{ s += $1; n++ } END { if (n) printf "%.2f\n", s / n; else print "inf" }'
}

# self_train TEACHER STUDENT BUDGET SEED: TEACHER (its dev-tuned KenLM settings)
# decodes the unlabeled rest of train, n-best for the confidences; the --st-keep
# most confident hypotheses (mean word confidence) join the labels; STUDENT, the
# same kind of model as TEACHER, trains on both with the same seed, validated on dev.
# The pseudo-labels and the student's training data go to exp/selftrain/STUDENT.
self_train() {
  local teacher=$1 student=$2 b=$3 seed=$4 unlab=data/train_$3pct_unlab input from
  local st=exp/selftrain/${2#exp/}
  local pdir=$st/decode_unlabeled pseudo=$st/pseudo labeled=$st/labeled
  input=$(cat "$teacher/input")
  if ! unit_done "$pdir"; then
    rm -rf "$pdir"
    from=("$unlab")
    [ "$input" = audio ] || from=(--features "exp/feats/${input}_train.h5")
    mkdir -p "$pdir"
    logged "$pdir/decode.log" w2v decode "${from[@]}" --model "$teacher/checkpoint_best.pt" --config "$teacher/kenlm.yaml" \
      --nbest "$st_nbest" --nbest-out "$pdir/nbest.txt" -o "$pdir/hyp_all.txt" --ctm "$pdir/hyp.ctm" \
      --no-progress
    # the features hold all of train: keep the unlabeled utterances' hypotheses
    awk 'NR == FNR { keep[$1]; next } $1 in keep' "$unlab/utt2spk" "$pdir/hyp_all.txt" >"$pdir/hyp.txt"
    mark_done "$pdir"
  fi
  rm -rf "$pseudo" "$labeled"
  if awk 'NF > 1 { found = 1; exit } END { exit !found }' "$pdir/hyp.txt"; then
    logged "$pdir/select.log" "$W2V_PYTHON" "$here/local/select_pseudo.py" "$unlab" "$pdir/hyp.txt" "$pdir/nbest.txt.scores" "$pseudo" \
      --keep "$st_keep" --ctm "$pdir/hyp.ctm" --confidence word
    # how good the pseudo-labels are (train transcripts; nothing selects on them)
    w2v score "$unlab/text" "$pdir/hyp.txt" --mode all >"$pdir/wer_all"
    w2v score "$unlab/text" "$pseudo/text" --mode present >"$pdir/wer_kept"
    log "$student: $(wc -l <"$pseudo/text") pseudo-labels from $teacher; all hypotheses: $(grep '^%WER' "$pdir/wer_all"); kept: $(grep '^%WER' "$pdir/wer_kept")"
    "$here/utils/combine_data.sh" "$labeled" "data/train_${b}pct" "$pseudo"
  else
    # a teacher that says nothing (a few updates, --quick) teaches nothing
    log "$student: no pseudo-labels: $teacher decoded no word on the unlabeled audio; $student trains on the labels alone"
    "$here/utils/combine_data.sh" "$labeled" "data/train_${b}pct"
  fi
  train_system "$student" "$input" "$labeled" "$seed"
  dev_system "$student"
}

if stage_begin 6 "self-training at${st_budgets:- no} % (fbank_st, pt_st), seeds $seeds"; then
  for b in $st_budgets; do
    # pt_st's teacher: the pretrained system with the lower mean dev WER at this budget
    teacher=ptfeat_ds
    if [ "$pretrain_arch" = wav2vec2 ] &&
      awk -v a="$(mean_dev_wer pt_ft "$b")" -v f="$(mean_dev_wer ptfeat_ds "$b")" 'BEGIN { exit !(a <= f) }'; then
      teacher=pt_ft
    fi
    echo "$teacher" >"exp/pt_st_${b}pct.teacher"
    log "pt_st at $b %: teacher $teacher (mean dev WER pt_ft $(mean_dev_wer pt_ft "$b"), ptfeat_ds $(mean_dev_wer ptfeat_ds "$b"))"
  done
  # the longest units first (the largest budget; pt_st before fbank_st, as a student
  # fine-tuned on audio takes twice a BiLSTM's time), so the last ones end together
  for b in $(printf '%s\n' $st_budgets | sort -rn); do
    teacher=$(cat "exp/pt_st_${b}pct.teacher")
    for seed in $seeds; do
      in_parallel self_train "exp/${teacher}_${b}pct_s$seed" "exp/pt_st_${b}pct_s$seed" "$b" "$seed"
      in_parallel self_train "exp/fbank_ds_${b}pct_s$seed" "exp/fbank_st_${b}pct_s$seed" "$b" "$seed"
    done
  done
  wait_parallel
  stage_end
fi

# Every system directory, labeled-only and self-trained.
system_dirs() {
  local sys b seed
  for sys in $base_systems fbank_st pt_st; do
    for b in $budgets; do
      for seed in $seeds; do
        [ -f "exp/${sys}_${b}pct_s$seed/.done" ] && echo "exp/${sys}_${b}pct_s$seed"
      done
    done
  done
  return 0
}

# ---- From here on, test data. Nothing above reads it (tests/test_recipe_hygiene.py). ----

# decode_test DIR: DIR's model over the test set (one shard: one job per
# model), viterbi (log-probabilities kept) and KenLM with the settings tuned on
# dev (DIR/kenlm.yaml).
decode_test() {
  local dir=$1 kdir=$1/decode_test_kenlm
  decode_set "$dir" test 1
  if ! unit_done "$kdir"; then
    rm -rf "$kdir"
    mkdir -p "$kdir"
    logged "$kdir/decode.log" w2v decode --emissions "$dir/decode_test_viterbi/emissions.h5" --config "$dir/kenlm.yaml" \
      -o "$kdir/hyp.1.txt" --no-progress
    mark_done "$kdir"
  fi
}

if stage_begin 7 "test set: data dir, features, decode with every system"; then
  recordings=$(cat data/recordings_dir)
  "$W2V_PYTHON" "$here/local/prepare_fsdd.py" "$recordings" data --splits test
  w2v manifest --validate-kaldi data/test
  featurize_set fbank fbank test
  featurize_set ptfeat exp/pretrain/checkpoint_best.pt test
  if [ "$vq_bert" = true ]; then featurize_vqbert test; fi
  for dir in $(system_dirs); do
    in_parallel decode_test "$dir"
  done
  wait_parallel
  stage_end
fi

__stage_ran_8=false
if stage_begin 8 "score test; table budget x system, plot"; then
  for dir in $(system_dirs); do
    for dec in viterbi kenlm; do
      d=$dir/decode_test_$dec
      [ -f "$d/hyp.1.txt" ] || { log "ERROR: $d/hyp.1.txt not found (run stage 7 first)"; exit 1; }
      # the shards' hypotheses, merged, straight into scoring
      sort -k1,1 "$d"/hyp.[0-9]*.txt | tee "$d/hyp.txt" |
        w2v score data/test/text - --utt2spk data/test/utt2spk --details "$d/scoring" >"$d/wer"
    done
  done
  train_utts=$(wc -l <data/train/text)
  "$W2V_PYTHON" "$here/local/wer_table.py" exp --set test --budgets "${budgets// /,}" --seeds "${seeds// /,}" \
    --systems "${base_systems// /,},fbank_st,pt_st" --train-utts "$train_utts" --pt-name "$pt_name" \
    --json exp/results_test.json | tee exp/RESULTS.md
  "$W2V_PYTHON" "$here/local/plot_budgets.py" exp/results_test.json exp/wer_vs_labels.png
  __stage_ran_8=true
  stage_end
fi

# A rerun that skipped the scoring stage still shows the table.
if [ "$stop_stage" -ge 8 ] && [ "$__stage_ran_8" != true ] && [ -f exp/RESULTS.md ]; then
  cat exp/RESULTS.md
fi
