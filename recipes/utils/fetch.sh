# fetch URL FILE: download URL to FILE, atomically (FILE.part, then rename).
#
# An interrupted download left FILE.part behind; the next call resumes it with an
# HTTP range request. A server that ignores ranges (curl exit 33, or a 416 for a
# stale .part) gets the whole file again instead of failing forever. Returns
# non-zero, leaving no FILE, when the URL cannot be fetched.
#
#   . utils/fetch.sh
#   fetch https://www.openslr.org/resources/12/md5sum.txt corpus/md5sum.txt || exit 1

fetch() {
  local url=$1 out=$2 rc
  if command -v curl >/dev/null 2>&1; then
    rc=0
    curl -fsSL --retry 3 --connect-timeout 20 -C - -o "$out.part" "$url" || rc=$?
    if [ "$rc" -eq 33 ] || { [ "$rc" -eq 22 ] && [ -s "$out.part" ]; }; then
      echo "fetch: $url: cannot resume $out.part, downloading it again" >&2
      rm -f "$out.part"
      rc=0
      curl -fsSL --retry 3 --connect-timeout 20 -o "$out.part" "$url" || rc=$?
    fi
    [ "$rc" -eq 0 ] || return 1
  elif command -v wget >/dev/null 2>&1; then
    wget -q -c -O "$out.part" "$url" || return 1
  else
    echo "fetch: neither curl nor wget is installed; cannot download $url" >&2
    return 1
  fi
  mv "$out.part" "$out"
}
