#!/usr/bin/env bash
# LibriSpeech: wav2vec 2.0 BASE pretraining, low-resource fine-tuning (10 min to
# 100 h), features for external acoustic models, decoding with the official
# 4-gram, and self-training with pseudo-labels.
#
#   bash recipes/librispeech/run.sh [--corpus DIR] [--lm-dir DIR] [--stage N] [--stop-stage M] ...
#
# Stages (outputs under --workdir, default recipes/librispeech/{corpus,data,exp}):
#   0  download from openslr what --parts asks (corpus parts, `lm`: 4-gram ARPA
#      and lexicon, `librilight`: the limited-supervision sets) unless
#      --corpus/--lm-dir point at existing copies
#   1  Kaldi data dirs + fairseq manifests, labels and dictionary for every part;
#      the fine-tuning subsets; the letter lexicon and the decoding LM
#   2  pretrain wav2vec 2.0 BASE on --pretrain-parts with --ngpu GPUs (torchrun; --nproc N CPU processes with --ngpu 0);
#      --vq-bert true: also vq-wav2vec (Gumbel, as published) on the same audio, its units,
#      and BERT BASE on the units (vq-wav2vec + BERT, Baevski et al. 2020)
#   3  fine-tune the --finetune-presets (10m 1h 10h 100h) from the pretrained model
#   4  featurize --feat-sets into Kaldi data dirs (feats.scp, utt2num_frames,
#      frame_shift 0.02) for external acoustic models (Kaldi, ESPnet); --vq-bert true:
#      also the BERT's features of the vq-wav2vec units (data/feats_vqbert/<set>, 10 ms)
#   5  decode --eval-sets with viterbi and the 4-gram, --nj shards through $decode_cmd
#   6  score; best_wer-style summary in exp/RESULTS
#   7  self-training: decode --unlabeled-part with the LM, keep confident
#      hypotheses, fine-tune on labeled + pseudo-labeled data, decode and score again;
#      with --st-rescore true a Transformer LM (w2v lm --neural, trained on
#      librispeech-lm-norm.txt) rescores the n-best of that decode, its weight chosen on --tune-set
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

stage=0
stop_stage=7
workdir=                 # where corpus/, data/, exp/ go (default: the recipe folder)
corpus=                  # existing LibriSpeech (DIR/<part> or DIR/LibriSpeech/<part>)
lm_dir=                  # existing openslr resource 11 files (4-gram.arpa.gz, librispeech-lexicon.txt)
librilight=              # existing Libri-light librispeech_finetuning folder (10m/1h/10h sets)
parts="dev-clean dev-other test-clean test-other train-clean-100 train-clean-360 train-other-500 lm librilight"
mirror=https://www.openslr.org/resources
pretrain_parts="train-clean-100 train-clean-360 train-other-500"
pretrain_valid=dev-other
pretrain_preset=base
pretrain_conf=           # optional YAML over the preset
pretrain_update_freq=0   # 0: 64 / nproc, the published 64-GPU batch
pretrained=              # use this pretrained model instead of stage 2's
ngpu=1                   # GPUs for pretraining/fine-tuning (0: CPU)
nproc=                   # training processes (torchrun; default: --ngpu, 1 on CPU); with --ngpu 0, gloo on CPU
finetune_presets="10m 1h 10h 100h"
finetune_train_part=train-clean-100   # source of the subsets when --librilight is not given
finetune_valid=dev-other
finetune_conf=           # optional YAML over each preset
ft_recipe=               # training recipe for every subset (default: the subset's own: 10m, 1h, ...)
finetune_sets=""         # extra w2v finetune words for every fine-tuning, e.g. "--max-update 100"
feat_sets="train-clean-100 dev-clean dev-other test-clean test-other"
feat_layer=              # Transformer layer for stage 4 (default: the last)
eval_sets="dev-clean dev-other test-clean test-other"
decoders="viterbi kenlm"
nj=4
lm_weight=2.0            # fairseq's LibriSpeech 4-gram settings, used when nothing is tuned
word_score=-1.0
beam=500
tune_set=dev-other       # LM weight and word score are chosen on this set's emissions (never on test)
tune_grid="lm_weight=0:4:0.5,word_score=-3:1:1"   # w2v decode --tune; "" keeps --lm-weight/--word-score
st_from=10h              # self-training starts from this preset's labels
unlabeled_part=train-other-500
st_nbest=5
st_keep=0.5              # fraction of the unlabeled utterances kept as pseudo-labels
st_rescore=false         # true: a Transformer LM rescores the pseudo-labels' n-best (stage 7)
st_lm_preset=base        # its size (w2v lm --neural --preset: base on GPUs, tiny on a CPU)
st_lm_sets=""            # extra w2v lm words for it, e.g. "--max-update 100"
st_rescore_nbest=50      # the n-best list it reorders
st_rescore_grid="rescore_weight=0:2:0.25"   # chosen on --tune-set with the seed's KenLM settings
vq_bert=false            # true: vq-wav2vec + BERT on its units (stage 2), the BERT's features (stage 4)
vq_preset=gumbel         # w2v pretrain --arch vq-wav2vec --preset (gumbel, kmeans; tiny for CPU tests)
vq_conf=                 # optional YAML over it
vq_update_freq=0         # 0: 8 / nproc, fairseq's 8-GPU batch
bert_preset=base         # w2v pretrain --arch unit-bert --preset (base: RoBERTa BASE as published; tiny)
bert_conf=               # optional YAML over it
bert_update_freq=0       # 0: 128 / nproc, the published 128-GPU batch
vq_bert_layer=           # BERT layer for stage 4's features (default: the last)
help_message="Usage: $0 [options]   (defaults in the script; every variable above is an option)
  --corpus DIR --lm-dir DIR --librilight DIR   existing copies instead of downloading
  --parts \"...\"            what stage 0 downloads (corpus parts, lm, librilight)
  --stage N --stop-stage M  stages to run (0-7)
  --workdir DIR             put corpus/, data/, exp/ there
  --ngpu N                  GPUs for training (torchrun); 0 = CPU
  --nproc N                 training processes (default: --ngpu; with --ngpu 0, N CPU processes over gloo)
  --pretrained MODEL        skip stage 2 and use this model
  --finetune-presets \"10m 1h 10h 100h\"  --eval-sets \"...\"  --nj N
  --tune-set dev-other --tune-grid \"lm_weight=0:4:0.5,word_score=-3:1:1\"   KenLM settings chosen on dev
  --unlabeled-part PART --st-from PRESET --st-keep FRACTION   self-training (stage 7)
  --st-rescore true --st-lm-preset base   a Transformer LM rescores the pseudo-labels (needs
                            librispeech-lm-norm.txt(.gz) of openslr 11 in the --lm-dir)
  --vq-bert true --vq-preset gumbel --bert-preset base   vq-wav2vec + BERT on its units (stage 2),
                            the BERT's features into data/feats_vqbert/<set> (stage 4)
  --vq-update-freq N --bert-update-freq N   their update_freq (0: the published 8- and 128-GPU
                            batches on --nproc processes; small data needs 1)"

# Paths on the command line are relative to where the script was started
# (or to the recipe folder).
path_options="corpus lm_dir librilight pretrain_conf finetune_conf pretrained vq_conf bert_conf"
. "$here/utils/recipe_common.sh" "$@"

# Where things are once stage 0 ran (or was given).
libri_root() {
  local c=${corpus:-$PWD/corpus}
  if [ -d "$c/LibriSpeech" ]; then echo "$c/LibriSpeech"; else echo "$c"; fi
}
lm_root() { echo "${lm_dir:-$PWD/corpus/lm}"; }
pretrained_model() { echo "${pretrained:-$PWD/exp/pretrain_$pretrain_preset/checkpoint_best.pt}"; }
kaldi_name() { echo "${1//-/_}"; } # dev-clean -> dev_clean (data dir names)

if stage_begin 0 "download from openslr: $parts"; then
  todo=()
  for p in $parts; do
    case "$p" in
      lm) [ -n "$lm_dir" ] || todo+=(lm) ;;
      # with an existing --corpus, Libri-light is fetched only when asked for by
      # --librilight; otherwise the subsets come from train-clean-100 by duration
      librilight) [ -n "$librilight" ] || [ -n "$corpus" ] || todo+=(librilight) ;;
      *) [ -n "$corpus" ] || todo+=("$p") ;;
    esac
  done
  if [ ${#todo[@]} -gt 0 ]; then
    "$here/local/download_librispeech.sh" --mirror "$mirror" corpus "${todo[@]}"
  else
    log "nothing to download: --corpus/--lm-dir/--librilight given"
  fi
  stage_end
fi

if stage_begin 1 "data dirs, manifests, labels, dictionary, fine-tuning subsets, lexicon and LM"; then
  root=$(libri_root)
  # the labeled training part first: its letters make the dictionary
  all_parts=$(printf '%s\n' "$finetune_train_part" "$finetune_valid" "$pretrain_valid" $eval_sets $feat_sets \
    $unlabeled_part $pretrain_parts | awk '!seen[$0]++')
  for p in $all_parts; do
    if [ ! -d "$root/$p" ]; then
      case " $pretrain_parts " in
        *" $p "*) log "note: $root/$p not found; it will be missing from pretraining" ; continue ;;
      esac
      log "ERROR: $root/$p not found (download it with --parts, or give --corpus)"
      exit 1
    fi
    d=data/$(kaldi_name "$p")
    dict_opt=()
    [ -f data/manifest/dict.ltr.txt ] && dict_opt=(--dict data/manifest/dict.ltr.txt)
    w2v manifest "$root/$p" --dest data/manifest --name "$(kaldi_name "$p")" --ext flac --valid-percent 0 \
      --labels "$root/$p" ${dict_opt[@]+"${dict_opt[@]}"} --to-kaldi "$d"
  done

  # fine-tuning subsets: Libri-light's lists when given (or downloaded by stage 0),
  # else by duration from train-clean-100
  if [ -z "$librilight" ] && [ -f corpus/librispeech_finetuning/.complete ]; then
    librilight=$PWD/corpus/librispeech_finetuning
  fi
  for preset in $finetune_presets; do
    d=data/train_$preset
    case "$preset" in
      10m) ll=(1h/0) hours=0.1667 ;;
      1h) ll=(1h) hours=1 ;;
      10h) ll=(1h 9h) hours=10 ;;
      100h) ll=() hours=100 ;;
      *) log "ERROR: unknown fine-tuning preset $preset (10m 1h 10h 100h)"; exit 1 ;;
    esac
    if [ "$preset" = 100h ]; then
      "$here/utils/combine_data.sh" "$d" "data/$(kaldi_name "$finetune_train_part")"
    elif [ -n "$librilight" ]; then
      srcs=()
      for s in "${ll[@]}"; do
        [ -d "$librilight/$s" ] || { log "ERROR: $librilight/$s not found (a librispeech_finetuning folder?)"; exit 1; }
        name=ll_${s//\//_}
        w2v manifest "$librilight/$s" --dest data/manifest --name "$name" --ext flac --valid-percent 0 \
          --labels "$librilight/$s" --dict data/manifest/dict.ltr.txt --to-kaldi "data/$name"
        srcs+=("data/$name")
      done
      "$here/utils/combine_data.sh" "$d" "${srcs[@]}"
    else
      "$W2V_PYTHON" "$here/local/subset_duration.py" "data/$(kaldi_name "$finetune_train_part")" "$hours" "$d"
    fi
    w2v manifest --validate-kaldi "$d"
  done

  # decoding resources: the letter lexicon of the LM's vocabulary, the 4-gram
  lm=$(lm_root)
  mkdir -p data/lang
  if [ -f "$lm/4-gram.arpa.gz" ]; then
    gunzip -c "$lm/4-gram.arpa.gz" >data/lang/4-gram.arpa
  elif [ -f "$lm/4-gram.arpa" ]; then
    ln -sf "$lm/4-gram.arpa" data/lang/4-gram.arpa
  else
    log "ERROR: no 4-gram.arpa(.gz) in $lm (download with --parts lm, or give --lm-dir)"
    exit 1
  fi
  words=()
  for f in librispeech-lexicon.txt librispeech-vocab.txt; do
    [ -f "$lm/$f" ] && words+=("$lm/$f")
  done
  [ ${#words[@]} -gt 0 ] || { log "ERROR: no librispeech-lexicon.txt or librispeech-vocab.txt in $lm"; exit 1; }
  "$W2V_PYTHON" "$here/local/make_lexicon.py" --dict data/manifest/dict.ltr.txt -o data/lang/lexicon.txt "${words[@]}"
  if command -v build_binary >/dev/null 2>&1; then
    build_binary data/lang/4-gram.arpa data/lang/4-gram.bin >data/lang/build_binary.log 2>&1
    rm data/lang/4-gram.arpa
    echo data/lang/4-gram.bin >data/lang/lm_path
  else
    echo data/lang/4-gram.arpa >data/lang/lm_path
  fi
  stage_end
fi

# train_launcher: the command that starts w2v training in $nproc processes
# (torchrun through the same python as bin/w2v, so the checkout's w2vtools runs).
nproc=${nproc:-$(( ngpu > 0 ? ngpu : 1 ))}
train_launcher() {
  if [ "$nproc" -gt 1 ]; then
    echo "$W2V_PYTHON -m torch.distributed.run --standalone --nproc_per_node=$nproc -m w2vtools"
  else
    echo w2v
  fi
}
train_device() { if [ "$ngpu" = 0 ]; then echo cpu; else echo cuda; fi; }

# finetune_model SUBSET DATA DIR: CTC fine-tuning of the pretrained model on
# DATA with the published recipe of SUBSET (10m 1h 10h 100h; --ft-recipe
# replaces it, e.g. tiny for CPU tests), validated on --finetune-valid.
# fairseq ran these on 2 GPUs x update_freq 4: we keep that batch on $nproc processes.
finetune_model() {
  local subset=$1 data=$2 dir=$3 recipe=${ft_recipe:-$1} uf uf_opt resume=() conf_opt=()
  unit_done "$dir" && return 0
  if stage_forced; then
    rm -rf "$dir"
  elif [ -f "$dir/checkpoint_last.pt" ]; then
    resume=(--resume)
  fi
  local model
  model=$(pretrained_model)
  [ -f "$model" ] || { log "ERROR: $model not found (stage 2, or --pretrained)"; return 1; }
  # the published presets' batch is 8 GPU-batches (2 GPUs x 4; 960h: 8 x 1)
  case "$recipe" in
    10m | 1h | 10h | 100h | 960h) uf=$((8 / nproc)); [ "$uf" -ge 1 ] || uf=1; uf_opt=(--update-freq "$uf") ;;
    *) uf_opt=() ;;
  esac
  [ -n "$finetune_conf" ] && conf_opt=(--config "$finetune_conf")
  # shellcheck disable=SC2046,SC2086
  $train_cmd --gpu "$ngpu" "$dir/log/train.log" \
    $(train_launcher) finetune "$data" --valid "data/$(kaldi_name "$finetune_valid")" --init "$model" \
      --preset "$recipe" --dict data/manifest/dict.ltr.txt ${uf_opt[@]+"${uf_opt[@]}"} --device "$(train_device)" \
      ${conf_opt[@]+"${conf_opt[@]}"} $finetune_sets --save-dir "$dir" ${resume[@]+"${resume[@]}"}
  grep -E '^w2v: valid \|' "$dir/log/train.log" | tail -n 1 >&2 || true
  mark_done "$dir"
}

# combine_pretrain_parts: data/pretrain, the --pretrain-parts that stage 1 prepared.
combine_pretrain_parts() {
  local p srcs=()
  for p in $pretrain_parts; do
    [ -f "data/$(kaldi_name "$p")/wav.scp" ] && srcs+=("data/$(kaldi_name "$p")")
  done
  [ ${#srcs[@]} -gt 0 ] || { log "ERROR: no pretraining part prepared (stage 1)"; return 1; }
  "$here/utils/combine_data.sh" data/pretrain "${srcs[@]}"
}

# pretrain_run DIR UPDATE_FREQ ARGS...: w2v pretrain ARGS into DIR with $nproc
# processes (torchrun), continuing an interrupted run (a forced stage starts over).
pretrain_run() {
  local dir=$1 uf=$2 resume=()
  shift 2
  unit_done "$dir" && return 0
  if stage_forced; then
    rm -rf "$dir"
  elif [ -f "$dir/checkpoint_last.pt" ]; then
    resume=(--resume)
  fi
  # shellcheck disable=SC2046
  $train_cmd --gpu "$ngpu" "$dir/log/pretrain.log" \
    $(train_launcher) pretrain "$@" --update-freq "$uf" --device "$(train_device)" --save-dir "$dir" \
      ${resume[@]+"${resume[@]}"}
  mark_done "$dir"
}

# pretrain_vq_bert: vq-wav2vec + BERT (Baevski et al. 2020, vq-wav2vec): the vq-wav2vec
# on data/pretrain (validated on --pretrain-valid; fairseq trained it on 8 GPUs: kept here
# by --vq-update-freq), its units ('g0-g1' per 10 ms frame) of the pretraining audio and of
# --pretrain-valid, $nj shards through $decode_cmd, then BERT on the units (validated on
# --pretrain-valid's units; masked-unit accuracy picks checkpoint_best.pt).
pretrain_vq_bert() {
  local vq=exp/pretrain_vq_$vq_preset bert=exp/unit_bert_$bert_preset units=exp/units_vq_$vq_preset
  local conf_opt=() uf set j n k
  [ -n "$vq_conf" ] && conf_opt=(--config "$vq_conf")
  uf=$vq_update_freq
  if [ "$uf" = 0 ]; then uf=$((8 / nproc)); [ "$uf" -ge 1 ] || uf=1; fi
  pretrain_run "$vq" "$uf" data/pretrain --valid "data/$(kaldi_name "$pretrain_valid")" --arch vq-wav2vec \
    --preset "$vq_preset" ${conf_opt[@]+"${conf_opt[@]}"}
  for set in pretrain "$(kaldi_name "$pretrain_valid")"; do
    if [ -f "$units/$set.txt" ] && ! stage_forced; then continue; fi
    n=$(wc -l <"data/$set/wav.scp")
    j=$((nj < n ? nj : n))
    rm -rf "$units/$set"
    mkdir -p "$units/$set"
    cp "data/$set/wav.scp" "data/$set/utt2spk" "$units/$set/"
    "$here/utils/split_data.sh" "$units/$set" "$j"
    # one GPU per shard (quantize uses one), one thread per shard on a CPU
    $decode_cmd --gpu $((ngpu > 0 ? 1 : 0)) JOB=1:$j "$units/log/quantize_$set.JOB.log" \
      w2v quantize "$units/$set/split$j/JOB/wav.scp" "$units/$set/JOB.txt" --model "$vq/checkpoint_best.pt" \
        --device "$(train_device)" --threads 1
    for ((k = 1; k <= j; k++)); do cat "$units/$set/$k.txt"; done >"$units/$set.txt.tmp"
    mv "$units/$set.txt.tmp" "$units/$set.txt"
    rm -rf "$units/$set"
  done
  conf_opt=()
  [ -n "$bert_conf" ] && conf_opt=(--config "$bert_conf")
  uf=$bert_update_freq
  if [ "$uf" = 0 ]; then uf=$((128 / nproc)); [ "$uf" -ge 1 ] || uf=1; fi
  pretrain_run "$bert" "$uf" "$units/pretrain.txt" --valid "$units/$(kaldi_name "$pretrain_valid").txt" \
    --arch unit-bert --preset "$bert_preset" ${conf_opt[@]+"${conf_opt[@]}"}
}

if stage_begin 2 "pretrain wav2vec 2.0 $pretrain_preset on $pretrain_parts ($nproc x $(train_device))"; then
  if [ -n "$pretrained" ]; then
    log "--pretrained $pretrained given: nothing to pretrain"
  else
    combine_pretrain_parts
    uf=$pretrain_update_freq
    if [ "$uf" = 0 ]; then uf=$((64 / nproc)); [ "$uf" -ge 1 ] || uf=1; fi
    conf_opt=()
    [ -n "$pretrain_conf" ] && conf_opt=(--config "$pretrain_conf")
    resume=()
    if stage_forced; then
      rm -rf "exp/pretrain_$pretrain_preset"
    elif [ -f "exp/pretrain_$pretrain_preset/checkpoint_last.pt" ]; then
      resume=(--resume) # continue an interrupted run exactly
    fi
    # shellcheck disable=SC2046
    $train_cmd --gpu "$ngpu" "exp/pretrain_$pretrain_preset/log/pretrain.log" \
      $(train_launcher) pretrain data/pretrain --valid "data/$(kaldi_name "$pretrain_valid")" \
        --arch wav2vec2 --preset "$pretrain_preset" ${conf_opt[@]+"${conf_opt[@]}"} --update-freq "$uf" \
        --device "$(train_device)" --save-dir "exp/pretrain_$pretrain_preset" ${resume[@]+"${resume[@]}"}
  fi
  if [ "$vq_bert" = true ]; then
    [ -f data/pretrain/wav.scp ] || combine_pretrain_parts
    pretrain_vq_bert
  fi
  stage_end
fi

if stage_begin 3 "fine-tune presets: $finetune_presets"; then
  for preset in $finetune_presets; do
    finetune_model "$preset" "data/train_$preset" "exp/finetune_$preset"
  done
  stage_end
fi

# featurize_data_dirs KIND OPTIONS...: data/KIND/<set> for each of $feat_sets, a copy of the
# set's data dir with the features of `w2v featurize OPTIONS` (feats.scp, utt2num_frames,
# frame_shift), $nj shards through $cpu_cmd.
featurize_data_dirs() {
  local kind=$1 p src dst n j f k
  shift
  for p in $feat_sets; do
    src=data/$(kaldi_name "$p")
    dst=data/$kind/$(kaldi_name "$p")
    unit_done "$dst" && continue
    rm -rf "$dst"
    mkdir -p "$dst"
    for f in wav.scp text utt2spk spk2utt utt2dur; do [ -f "$src/$f" ] && cp "$src/$f" "$dst/"; done
    n=$(wc -l <"$dst/utt2spk")
    j=$((nj < n ? nj : n))
    "$here/utils/split_data.sh" "$dst" "$j"
    # each shard is a data dir; featurize writes feats.scp, utt2num_frames and
    # frame_shift into it, with the archive under it
    $cpu_cmd JOB=1:$j "$dst/log/featurize.JOB.log" \
      w2v featurize "$dst/split$j/JOB" "$dst/split$j/JOB" "$@" --threads 1 --no-progress
    for f in feats.scp utt2num_frames; do
      for ((k = 1; k <= j; k++)); do cat "$dst/split$j/$k/$f"; done | sort -k1,1 >"$dst/$f"
    done
    cp "$dst/split$j/1/frame_shift" "$dst/frame_shift"
    w2v manifest --validate-kaldi "$dst"
    mark_done "$dst"
  done
}

if stage_begin 4 "featurize $feat_sets into Kaldi data dirs for external acoustic models"; then
  model=$(pretrained_model)
  [ -f "$model" ] || { log "ERROR: $model not found (stage 2, or --pretrained)"; exit 1; }
  layer_opt=()
  [ -n "$feat_layer" ] && layer_opt=(--layer "$feat_layer")
  featurize_data_dirs feats_w2v2 --model "$model" ${layer_opt[@]+"${layer_opt[@]}"}
  if [ "$vq_bert" = true ]; then
    # the BERT's features of the vq-wav2vec's units, one vector per 10 ms code frame
    vq=exp/pretrain_vq_$vq_preset/checkpoint_best.pt bert=exp/unit_bert_$bert_preset/checkpoint_best.pt
    [ -f "$vq" ] && [ -f "$bert" ] || { log "ERROR: $vq or $bert not found (stage 2 with --vq-bert true)"; exit 1; }
    layer_opt=()
    [ -n "$vq_bert_layer" ] && layer_opt=(--layer "$vq_bert_layer")
    featurize_data_dirs feats_vqbert --model "$vq" --bert "$bert" ${layer_opt[@]+"${layer_opt[@]}"}
  fi
  stage_end
fi

# decode_sets MODEL EXPDIR SETS...: viterbi (log-probabilities kept) and
# lexicon + 4-gram beam search on them, $nj shards per set.
decode_sets() {
  local model=$1 dir=$2 set d vdir kdir n j
  shift 2
  [ -f "$model" ] || { log "ERROR: $model not found"; return 1; }
  for set in "$@"; do
    d=data/$(kaldi_name "$set")
    vdir=$dir/decode_$(kaldi_name "$set")_viterbi
    n=$(wc -l <"$d/utt2spk")
    j=$((nj < n ? nj : n))
    if ! unit_done "$vdir"; then
      rm -rf "$vdir"
      $decode_cmd JOB=1:$j "$vdir/log/decode.JOB.log" \
        w2v decode "$d" --model "$model" --shard JOB/$j --dump-emissions "$vdir/emissions.JOB.h5" \
          -o "$vdir/hyp.JOB.txt" --no-progress
      mark_done "$vdir"
    fi
  done
  case " $decoders " in *" kenlm "*) ;; *) return 0 ;; esac
  tune_kenlm "$dir" || return 1
  for set in "$@"; do
    d=data/$(kaldi_name "$set")
    vdir=$dir/decode_$(kaldi_name "$set")_viterbi
    kdir=$dir/decode_$(kaldi_name "$set")_kenlm
    n=$(wc -l <"$d/utt2spk")
    j=$((nj < n ? nj : n))
    if ! unit_done "$kdir"; then
      rm -rf "$kdir"
      $decode_cmd JOB=1:$j "$kdir/log/decode.JOB.log" \
        w2v decode --emissions "$vdir/emissions.JOB.h5" --config "$dir/kenlm.yaml" -o "$kdir/hyp.JOB.txt" --no-progress
      mark_done "$kdir"
    fi
  done
}

# tune_kenlm DIR: DIR/kenlm.yaml, the KenLM decoder settings for DIR's model: --tune-grid searched on
# the --tune-set emissions (its viterbi decode), or the fixed --lm-weight/--word-score when there is
# no grid or that set was not decoded. Test sets never choose a setting.
tune_kenlm() {
  local dir=$1 vdir=$1/decode_$(kaldi_name "$tune_set")_viterbi
  local fixed=(--decoder kenlm --lexicon data/lang/lexicon.txt --lm "$(cat data/lang/lm_path)" --beam "$beam")
  [ -f "$dir/kenlm.yaml" ] && return 0
  case "$tune_set" in test-*) log "ERROR: --tune-set $tune_set is a test set"; return 1 ;; esac
  if [ -z "$tune_grid" ] || [ ! -f "$vdir/.done" ]; then  # finished, in this run or before
    [ -z "$tune_grid" ] || log "no decode of --tune-set $tune_set under $dir: fixed --lm-weight $lm_weight --word-score $word_score"
    printf 'decoder: kenlm\nlexicon: data/lang/lexicon.txt\nlm: %s\nbeam: %s\nlm_weight: %s\nword_score: %s\n' \
      "$(cat data/lang/lm_path)" "$beam" "$lm_weight" "$word_score" >"$dir/kenlm.yaml"
    return 0
  fi
  w2v featurize --merge "$vdir"/emissions.[0-9]*.h5 "$vdir/emissions.h5" &&
  w2v decode --emissions "$vdir/emissions.h5" "${fixed[@]}" --tune "$tune_grid" --jobs "$nj" \
    --ref "data/$(kaldi_name "$tune_set")/text" -o "$dir/kenlm.yaml" 2>"$dir/kenlm_tuning.txt" &&
  log "KenLM settings for $dir chosen on $tune_set: $(grep -E '^(lm_weight|word_score)' "$dir/kenlm.yaml" | paste -sd' ')"
}

# train_rescore_lm: exp/nlm_$st_lm_preset, a word Transformer LM (w2v lm --neural) on openslr 11's
# librispeech-lm-norm.txt(.gz) from the --lm-dir, 5 % of it held out for its perplexity.
train_rescore_lm() {
  local out=exp/nlm_$st_lm_preset lm text="" resume=()
  lm=$(lm_root)
  unit_done "$out" && return 0
  for f in "$lm/librispeech-lm-norm.txt" "$lm/librispeech-lm-norm.txt.gz"; do
    [ -f "$f" ] && { text=$f; break; }
  done
  [ -n "$text" ] || { log "ERROR: --st-rescore true needs librispeech-lm-norm.txt(.gz) in $lm ($mirror/11/librispeech-lm-norm.txt.gz)"; return 1; }
  if [[ $text == *.gz ]]; then
    [ -f data/lang/lm_text.txt ] || { gunzip -c "$text" >data/lang/lm_text.txt.tmp && mv data/lang/lm_text.txt.tmp data/lang/lm_text.txt; }
    text=data/lang/lm_text.txt
  fi
  if stage_forced; then rm -rf "$out"; elif [ -f "$out/checkpoint_last.pt" ]; then resume=(--resume); fi
  # shellcheck disable=SC2086
  $train_cmd --gpu "$ngpu" "$out/log/train.log" \
    w2v lm "$text" --neural --unit word --preset "$st_lm_preset" -o "$out" --dict data/manifest/dict.ltr.txt \
      --device "$(train_device)" $st_lm_sets ${resume[@]+"${resume[@]}"}
  log "Transformer LM $out, held-out text: $(grep -E '^perplexity' "$out/log/train.log" | tail -n 1)"
  mark_done "$out"
}

# tune_rescore DIR: DIR/rescore.yaml, DIR's KenLM settings plus the Transformer LM reordering the
# --st-rescore-nbest list, --st-rescore-grid searched on the --tune-set emissions (never on test).
tune_rescore() {
  local dir=$1 vdir=$1/decode_$(kaldi_name "$tune_set")_viterbi
  [ -f "$dir/rescore.yaml" ] && return 0
  [ -f "$vdir/.done" ] || { log "ERROR: --st-rescore tunes on $vdir (stage 5 decodes --tune-set $tune_set)"; return 1; }
  [ -f "$vdir/emissions.h5" ] || w2v featurize --merge "$vdir"/emissions.[0-9]*.h5 "$vdir/emissions.h5"
  w2v decode --emissions "$vdir/emissions.h5" --config "$dir/kenlm.yaml" --nbest "$st_rescore_nbest" \
    --rescore "exp/nlm_$st_lm_preset/checkpoint_best.pt" --tune "$st_rescore_grid" --jobs "$nj" \
    --ref "data/$(kaldi_name "$tune_set")/text" -o "$dir/rescore.yaml" 2>"$dir/rescore_tuning.txt" &&
  log "Transformer LM rescoring for $dir chosen on $tune_set: $(grep -E '^rescore_weight' "$dir/rescore.yaml")"
}

# score_dirs DIR...: every decode_* under them, merged shards piped into w2v score.
score_dirs() {
  local d set
  for d in $(find "$@" -maxdepth 1 -type d -name 'decode_*' | sort); do
    [ -f "$d/hyp.1.txt" ] || continue
    set=${d##*/decode_}
    set=${set%_viterbi}
    set=${set%_kenlm}
    [ -f "data/$set/text" ] || continue
    sort -k1,1 "$d"/hyp.[0-9]*.txt | tee "$d/hyp.txt" |
      w2v score "data/$set/text" - --mode all --utt2spk "data/$set/utt2spk" --details "$d/scoring" >"$d/wer"
  done
}

# best_wer-style summary: per model and set the best decoder, then every result.
summarize() {
  local f
  {
    echo "# best per model and set (as grep WER exp/*/decode_*/wer | utils/best_wer.sh)"
    for f in $(find exp -path '*/decode_*/wer' | sort); do
      printf '%s %s\n' "$(grep '^%WER' "$f")" "$f"
    done | awk '{ key = $NF; sub(/_(viterbi|kenlm)\/wer$/, "", key); print key, $0 }' |
      sort -k1,1 -k3,3g | awk '$1 != last { last = $1; sub(/^[^ ]+ /, ""); print }'
    echo
    echo "# all results"
    for f in $(find exp -path '*/decode_*/wer' | sort); do
      printf '%s %s\n' "$(grep '^%WER' "$f")" "$f"
    done
  } >exp/RESULTS
  cat exp/RESULTS
}

if stage_begin 5 "decode $eval_sets ($decoders), $nj shards"; then
  for preset in $finetune_presets; do
    decode_sets "exp/finetune_$preset/checkpoint_best.pt" "exp/finetune_$preset" $eval_sets
  done
  stage_end
fi

if stage_begin 6 "score, best_wer summary"; then
  score_dirs exp/finetune_*
  summarize
  stage_end
fi

if stage_begin 7 "self-training from the $st_from labels with pseudo-labeled $unlabeled_part"; then
  seed=exp/finetune_$st_from
  st=exp/selftrain_$st_from
  unlab=data/$(kaldi_name "$unlabeled_part")
  [ -f "$seed/checkpoint_best.pt" ] || { log "ERROR: $seed/checkpoint_best.pt not found (stage 3 with --finetune-presets including $st_from)"; exit 1; }
  [ -f "$unlab/wav.scp" ] || { log "ERROR: $unlab not prepared (stage 1)"; exit 1; }
  tune_kenlm "$seed" || exit 1   # the seed model's KenLM settings, as stage 5 chose them
  settings=$seed/kenlm.yaml
  if [ "$st_rescore" = true ]; then
    train_rescore_lm || exit 1
    tune_rescore "$seed" || exit 1
    settings=$seed/rescore.yaml
  fi
  # 1. decode the unlabeled audio with the LM (and the Transformer LM's rescoring), n-best for the confidences
  pdir=exp/pseudo_$st_from  # beside $st, not in it: a forced rerun of the student empties $st
  if ! unit_done "$pdir"; then
    rm -rf "$pdir"
    n=$(wc -l <"$unlab/utt2spk")
    j=$((nj < n ? nj : n))
    nbest_opt=(--nbest "$st_nbest")
    [ "$st_rescore" = true ] && nbest_opt=()  # rescore.yaml's list; the n-best file is its reordering
    $decode_cmd JOB=1:$j "$pdir/log/decode.JOB.log" \
      w2v decode "$unlab" --model "$seed/checkpoint_best.pt" --shard JOB/$j --config "$settings" \
        ${nbest_opt[@]+"${nbest_opt[@]}"} --nbest-out "$pdir/nbest.JOB.txt" -o "$pdir/hyp.JOB.txt" \
        --ctm "$pdir/hyp.JOB.ctm" --no-progress
    sort -k1,1 "$pdir"/hyp.[0-9]*.txt >"$pdir/hyp.txt"
    sort -k1,1 "$pdir"/nbest.[0-9]*.txt.scores >"$pdir/nbest.scores"
    sort -k1,1 -k3,3n "$pdir"/hyp.[0-9]*.ctm >"$pdir/hyp.ctm"
    mark_done "$pdir"
  fi
  # 2. keep the confident hypotheses; how good they are, when the part has transcripts
  pseudo=data/$(kaldi_name "$unlabeled_part")_pseudo_$st_from
  # by the 1-best's mean word confidence (select_pseudo.py says why, BENCHMARKS.md "Confidences")
  "$W2V_PYTHON" "$here/local/select_pseudo.py" "$unlab" "$pdir/hyp.txt" "$pdir/nbest.scores" "$pseudo" \
    --keep "$st_keep" --ctm "$pdir/hyp.ctm" --confidence word
  if [ -s "$unlab/text" ]; then
    w2v score "$unlab/text" "$pdir/hyp.txt" --mode all >"$pdir/wer_all"
    w2v score "$unlab/text" "$pseudo/text" --mode present >"$pdir/wer_kept"
    log "pseudo-labels, all: $(grep '^%WER' "$pdir/wer_all"); kept: $(grep '^%WER' "$pdir/wer_kept")"
  fi
  # 3. fine-tune on labeled + pseudo-labeled data, from the pretrained model
  "$here/utils/combine_data.sh" "data/train_${st_from}_st" "data/train_$st_from" "$pseudo"
  finetune_model "$st_from" "data/train_${st_from}_st" "$st"
  # 4. decode and score again
  decode_sets "$st/checkpoint_best.pt" "$st" $eval_sets
  score_dirs "$st"
  summarize
  stage_end
fi
