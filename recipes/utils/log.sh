# shellcheck shell=bash
# log MESSAGE...: one timestamped line on stderr, named after the running script.
#
#   . utils/log.sh
#   log "stage 1: data preparation"
#   # -> 2026-11-21 05:30:12 run.sh: stage 1: data preparation

log() {
  printf '%s %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${0##*/}" "$*" >&2
}
