#!/usr/bin/env bash
# Download and unpack one pinned release of the Free Spoken Digit Dataset.
#
#   local/download_fsdd.sh [--tag v1.0.10] [--url URL] DEST
#
# Leaves the recordings in DEST/recordings (3000 WAVs) and writes DEST/.complete
# with the tag and the archive's sha256, so a second call does nothing. The
# release archives are made by GitHub from the git tag; the project publishes
# no checksum, so we record the one we got (compare it across machines).
# --url fetches the same archive from a mirror (default: GitHub's, for --tag).
# An interrupted download resumes where the server supports ranges.
#
# Example:
#   local/download_fsdd.sh corpus/fsdd && ls corpus/fsdd/recordings | wc -l
set -euo pipefail

tag=v1.0.10
url=
while [ $# -gt 1 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --url) url=$2; shift 2 ;;
    *) break ;;
  esac
done
if [ $# -ne 1 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 1
fi
dest=$1
. "$(dirname "$0")/../utils/fetch.sh"
url=${url:-"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/$tag.tar.gz"}

if [ -f "$dest/.complete" ] && grep -q "^tag $tag$" "$dest/.complete"; then
  echo "$0: $dest already holds FSDD $tag" >&2
  exit 0
fi

mkdir -p "$dest"
archive="$dest/fsdd-$tag.tar.gz"
if [ ! -s "$archive" ]; then
  echo "$0: downloading $url" >&2
  if ! fetch "$url" "$archive"; then
    echo "$0: could not download $url (offline?). Get the FSDD recordings some other way and rerun with --corpus DIR (DIR/recordings/*.wav)" >&2
    exit 1
  fi
fi

sha=$(sha256sum "$archive" | cut -d' ' -f1)
tmp=$(mktemp -d "$dest/unpack.XXXXXX")
tar -xzf "$archive" -C "$tmp"
src=$(find "$tmp" -mindepth 2 -maxdepth 2 -type d -name recordings | head -n 1)
if [ -z "$src" ]; then
  rm -rf "$tmp"
  echo "$0: $archive has no recordings/ folder; is $tag a FSDD release?" >&2
  exit 1
fi
rm -rf "$dest/recordings"
mv "$src" "$dest/recordings"
rm -rf "$tmp"
n=$(find "$dest/recordings" -name '*.wav' | wc -l)
if [ "$n" -lt 3000 ]; then
  echo "$0: expected 3000 recordings in FSDD $tag, found $n" >&2
  exit 1
fi
printf 'tag %s\nurl %s\nsha256 %s\nrecordings %s\n' "$tag" "$url" "$sha" "$n" >"$dest/.complete"
echo "$0: FSDD $tag ready in $dest/recordings ($n files, archive sha256 $sha)" >&2
