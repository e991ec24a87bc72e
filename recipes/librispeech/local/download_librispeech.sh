#!/usr/bin/env bash
# Download and unpack LibriSpeech parts and LM resources from openslr.org.
#
#   local/download_librispeech.sh [--mirror URL] DEST PART...
#
# PART is a corpus part of resource 12 (dev-clean, dev-other, test-clean,
# test-other, train-clean-100, train-clean-360, train-other-500), `lm` for
# resource 11 (4-gram.arpa.gz, librispeech-lexicon.txt, librispeech-vocab.txt)
# or `librilight` for Libri-light's limited-supervision sets
# (librispeech_finetuning: 10 min, 1 h, 10 h). Parts land in
# DEST/LibriSpeech/<part>, the LM files in DEST/lm, Libri-light in
# DEST/librispeech_finetuning. Archives are checked against openslr's
# md5sum.txt (and, for the parts listed below, against the md5 known here)
# before unpacking; a part already unpacked (DEST/LibriSpeech/<part>/.complete)
# is skipped.
#
# Example:
#   local/download_librispeech.sh corpus dev-clean test-clean lm
set -euo pipefail

mirror=https://www.openslr.org/resources
librilight_url=https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz
if [ "${1:-}" = --mirror ]; then
  mirror=$2
  shift 2
fi
if [ $# -lt 2 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 1
fi
dest=$1
shift

# md5 of the final release archives (openslr resource 12 md5sum.txt)
declare -A known_md5=(
  [dev-clean]=42e2234ba48799c1f50f24a7926300a1
  [dev-other]=c8d0bcc9cca99d4f8b62fcc847357931
  [test-clean]=32fa31d27d2e1cad72775fee3f4849a9
  [test-other]=fb5a50374b501bb3bac4815ee91d3135
  [train-clean-100]=2a93770f6d5c6c964bc36631d331a522
)

. "$(dirname "$0")/../utils/fetch.sh"

fail_offline() {
  echo "$0: could not download $1 (offline?). Fetch it by hand into $dest, or point the recipe at an existing copy with --corpus DIR / --lm-dir DIR" >&2
  exit 1
}

mkdir -p "$dest"
for part in "$@"; do
  case "$part" in
    dev-clean | dev-other | test-clean | test-other | train-clean-100 | train-clean-360 | train-other-500)
      if [ -f "$dest/LibriSpeech/$part/.complete" ]; then
        echo "$0: $part already in $dest/LibriSpeech" >&2
        continue
      fi
      archive=$dest/$part.tar.gz
      if [ ! -s "$dest/md5sum.txt" ]; then
        fetch "$mirror/12/md5sum.txt" "$dest/md5sum.txt" || fail_offline "$mirror/12/md5sum.txt"
      fi
      [ -s "$archive" ] || fetch "$mirror/12/$part.tar.gz" "$archive" || fail_offline "$mirror/12/$part.tar.gz"
      want=$(awk -v f="$part.tar.gz" '$2 == f { print $1 }' "$dest/md5sum.txt")
      [ -n "$want" ] || want=${known_md5[$part]:-}
      if [ -n "${known_md5[$part]:-}" ] && [ "$want" != "${known_md5[$part]}" ]; then
        echo "$0: openslr's md5sum.txt gives $want for $part, this script knows ${known_md5[$part]}; refusing" >&2
        exit 1
      fi
      got=$(md5sum "$archive" | cut -d' ' -f1)
      if [ -z "$want" ] || [ "$got" != "$want" ]; then
        echo "$0: $archive: md5 $got does not match ${want:-(none published)}; delete it and retry" >&2
        exit 1
      fi
      tar -xzf "$archive" -C "$dest"
      [ -d "$dest/LibriSpeech/$part" ] || { echo "$0: $archive did not unpack to LibriSpeech/$part" >&2; exit 1; }
      touch "$dest/LibriSpeech/$part/.complete"
      echo "$0: $part ready in $dest/LibriSpeech/$part" >&2
      ;;
    lm)
      mkdir -p "$dest/lm"
      for f in 4-gram.arpa.gz librispeech-lexicon.txt librispeech-vocab.txt; do
        [ -s "$dest/lm/$f" ] || fetch "$mirror/11/$f" "$dest/lm/$f" || fail_offline "$mirror/11/$f"
      done
      if [ ! -s "$dest/lm/md5sum.txt" ] && fetch "$mirror/11/md5sum.txt" "$dest/lm/md5sum.txt"; then :; fi
      if [ -s "$dest/lm/md5sum.txt" ]; then
        (cd "$dest/lm" && grep -E ' (4-gram.arpa.gz|librispeech-lexicon.txt|librispeech-vocab.txt)$' md5sum.txt | md5sum -c -) ||
          { echo "$0: LM files in $dest/lm fail openslr's md5sum.txt" >&2; exit 1; }
      fi
      ;;
    librilight)
      if [ -f "$dest/librispeech_finetuning/.complete" ]; then continue; fi
      archive=$dest/librispeech_finetuning.tgz
      [ -s "$archive" ] || fetch "$librilight_url" "$archive" || fail_offline "$librilight_url"
      tar -xzf "$archive" -C "$dest"
      touch "$dest/librispeech_finetuning/.complete"
      ;;
    *)
      echo "$0: unknown part '$part' (dev-clean ... train-other-500, lm, librilight)" >&2
      exit 1
      ;;
  esac
done
