#!/usr/bin/env bash
# Combine Kaldi data dirs into one: utils/combine_data.sh DEST SRC1 SRC2 ...
#
# Per-utterance files present in every source (wav.scp, text, utt2spk,
# utt2dur, feats.scp, utt2num_frames) are concatenated and C-sorted; spk2utt is
# rebuilt; frame_shift is copied when all sources agree. Duplicate utterance
# ids are an error.
#
# Example:
#   utils/combine_data.sh data/train_10h_st data/train_10h data/train-other-500_pseudo
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 1
fi
dest=$1
shift
export LC_ALL=C
for src in "$@"; do
  [ -f "$src/utt2spk" ] || { echo "$0: $src/utt2spk not found" >&2; exit 1; }
done
rm -rf "$dest"
mkdir -p "$dest"
for f in wav.scp text utt2spk utt2dur feats.scp utt2num_frames segments; do
  all=true
  for src in "$@"; do [ -f "$src/$f" ] || all=false; done
  $all || continue
  for src in "$@"; do cat "$src/$f"; done | sort -k1,1 >"$dest/$f"
done
dups=$(cut -d' ' -f1 "$dest/utt2spk" | uniq -d | head -n 3)
if [ -n "$dups" ]; then
  echo "$0: utterance ids occur in more than one source, e.g.: $dups" >&2
  exit 1
fi
awk '{ u[$2] = u[$2] " " $1 } END { for (s in u) print s u[s] }' "$dest/utt2spk" | sort -k1,1 >"$dest/spk2utt"
shifts=$(for src in "$@"; do cat "$src/frame_shift" 2>/dev/null || echo none; done | sort -u)
if [ "$(echo "$shifts" | wc -l)" = 1 ] && [ "$shifts" != none ]; then
  echo "$shifts" >"$dest/frame_shift"
fi
echo "$0: $dest: $(wc -l <"$dest/utt2spk") utterances from $# dirs" >&2
