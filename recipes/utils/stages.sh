# shellcheck shell=bash
# Stage gates, .done markers and failure reporting for recipe run.sh scripts.
#
# Source after parse_options.sh; needs $stage and $stop_stage. Then:
#
#   if stage_begin 2 "pretrain a tiny wav2vec 2.0"; then
#     ...
#     stage_end
#   fi
#
# stage_begin N DESC is true when N lies in [stage, stop_stage] and the stage
# has not finished before (its marker exp/.stages/N.done is absent). A plain
# rerun thus skips every finished stage. Naming the range on the command line
# (--stage / --stop-stage) reruns exactly the selected stages even when they
# finished before.
#
# Inside a stage, finer units use `unit_done DIR` / `mark_done DIR` (DIR/.done),
# honouring the same rule, so an interrupted stage resumes at the unit it
# stopped in.
#
# If the script exits non-zero inside a stage, the stage is named on stderr:
#   ... run.sh: ERROR: stage 3 (fine-tune) failed (exit 1) after 12 s

# shellcheck source=log.sh
. "$(dirname "${BASH_SOURCE[0]}")/log.sh"

stage_marker_dir=${stage_marker_dir:-exp/.stages}
__stage_current=
__stage_desc=
__stage_start=
__stage_forced=false
case " ${cmdline_options:-} " in
  *" stage "* | *" stop_stage "*) __stage_forced=true ;;
esac

if ! [[ $stage =~ ^-?[0-9]+$ ]] || ! [[ $stop_stage =~ ^-?[0-9]+$ ]]; then
  log "ERROR: --stage and --stop-stage take integers (got '$stage' and '$stop_stage')"
  exit 1
fi

__stage_on_exit() {
  local code=$?
  if [ $code -ne 0 ] && [ -n "$__stage_current" ]; then
    log "ERROR: stage $__stage_current ($__stage_desc) failed (exit $code) after $(($(date +%s) - __stage_start)) s"
  fi
  return $code
}
trap __stage_on_exit EXIT

stage_begin() {
  local n=$1
  shift
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then
    return 1
  fi
  if [ $__stage_forced = false ] && [ -f "$stage_marker_dir/$n.done" ]; then
    log "stage $n ($*): done before, skipping (marker $stage_marker_dir/$n.done)"
    return 1
  fi
  rm -f "$stage_marker_dir/$n.done"
  __stage_current=$n
  __stage_desc=$*
  __stage_start=$(date +%s)
  log "== stage $n: $* =="
  return 0
}

stage_end() {
  mkdir -p "$stage_marker_dir"
  date '+%Y-%m-%d %H:%M:%S' >"$stage_marker_dir/$__stage_current.done"
  log "stage $__stage_current done in $(($(date +%s) - __stage_start)) s"
  __stage_current=
}

# unit_done DIR: true if DIR finished before and the stages were not forced.
unit_done() {
  [ $__stage_forced = false ] && [ -f "$1/.done" ]
}

# stage_forced: true when --stage/--stop-stage were given (selected stages rerun).
stage_forced() {
  [ $__stage_forced = true ]
}

# mark_done DIR: record that DIR is complete.
mark_done() {
  mkdir -p "$1"
  date '+%Y-%m-%d %H:%M:%S' >"$1/.done"
}
