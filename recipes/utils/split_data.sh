#!/usr/bin/env bash
# Split a Kaldi data dir into N parts for parallel jobs: DATA/splitN/{1..N}.
#
#   utils/split_data.sh DATA N
#
# Utterances are cut into N contiguous, near-equal runs in the (C-sorted) order
# of utt2spk, so each part is itself a valid data dir (per-utterance files are
# filtered, spk2utt is rebuilt, wav.scp/reco2dur follow segments when present,
# frame_shift is copied). Like Kaldi's split_data.sh --per-utt: parts are
# balanced in utterances, and a speaker may span two parts. A split newer than
# its source is kept as it is.
#
# Example:
#   utils/split_data.sh data/test 4 && ls data/test/split4
set -euo pipefail

if [ $# -ne 2 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 1
fi
data=${1%/}
n=$2
if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: N must be a positive number, got '$n'" >&2
  exit 1
fi
[ -f "$data/utt2spk" ] || { echo "$0: $data/utt2spk not found" >&2; exit 1; }
total=$(wc -l <"$data/utt2spk")
if [ "$total" -lt "$n" ]; then
  echo "$0: $data has $total utterances, cannot make $n parts" >&2
  exit 1
fi

out=$data/split$n
if [ -f "$out/.done" ] && [ "$out/.done" -nt "$data/utt2spk" ] && [ "$out/.done" -nt "$data/text" -o ! -f "$data/text" ] \
  && [ "$out/.done" -nt "$data/feats.scp" -o ! -f "$data/feats.scp" ]; then
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"

export LC_ALL=C
for ((j = 1; j <= n; j++)); do
  mkdir -p "$out/$j"
  # part j holds utterance lines (j-1)*total/n+1 .. j*total/n
  awk -v j="$j" -v n="$n" -v t="$total" 'NR > int((j-1)*t/n) && NR <= int(j*t/n)' "$data/utt2spk" >"$out/$j/utt2spk"
  for f in text wav.scp segments feats.scp utt2num_frames utt2dur utt2lang utt2uniq; do
    [ -f "$data/$f" ] || continue
    if [ "$f" = wav.scp ] && [ -f "$data/segments" ]; then
      continue # recording-level; filtered below through segments
    fi
    awk 'NR == FNR { keep[$1] = 1; next } ($1 in keep)' "$out/$j/utt2spk" "$data/$f" >"$out/$j/$f"
  done
  if [ -f "$data/segments" ]; then
    awk 'NR == FNR { keep[$2] = 1; next } ($1 in keep)' "$out/$j/segments" "$data/wav.scp" >"$out/$j/wav.scp"
    [ -f "$data/reco2dur" ] && awk 'NR == FNR { keep[$2] = 1; next } ($1 in keep)' "$out/$j/segments" "$data/reco2dur" >"$out/$j/reco2dur"
  fi
  for f in frame_shift spk2gender; do
    [ -f "$data/$f" ] && cp "$data/$f" "$out/$j/$f"
  done
  awk '{ if ($2 != last) { if (NR > 1) printf "\n"; printf "%s", $2; last = $2 } printf " %s", $1 } END { if (NR) printf "\n" }' \
    "$out/$j/utt2spk" | sort -k1,1 -s |
    awk '{ if ($1 == prev) { sub(/^[^ ]+/, ""); line = line $0 } else { if (NR > 1) print line; line = $0; prev = $1 } } END { if (NR) print line }' \
      >"$out/$j/spk2utt"
done
date >"$out/.done"
