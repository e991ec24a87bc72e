#!/usr/bin/env bash
# Run jobs on this machine with Kaldi's run.pl calling convention.
#
#   run_local.sh [--max-jobs-run N] [JOB=1:N] LOG-FILE COMMAND [ARGS...]
#
# Runs N copies of COMMAND, at most --max-jobs-run at once (default: the
# number of CPU cores), with JOB replaced by the job number in the arguments
# and in LOG-FILE. Each job's stdout and stderr go to its log file. Exits 0 when
# every job succeeded; otherwise prints which jobs failed and where their logs
# are, and exits 1. See job_common.sh for the quoting rule (`\|` makes a pipe).
#
# Example:
#   utils/run_local.sh --max-jobs-run 2 JOB=1:4 exp/log/featurize.JOB.log \
#     w2v featurize data/split4/JOB ark,scp:exp/feats.JOB.ark,exp/feats.JOB.scp

set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=job_common.sh
. "$here/job_common.sh"
jc_parse "$@"

max_jobs=${jc_max_jobs:-$(nproc 2>/dev/null || echo 1)}
status_dir=$(mktemp -d "${TMPDIR:-/tmp}/run_local.XXXXXX") || jc_die "cannot make a temporary folder"
declare -a pids=()

cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  rm -rf "$status_dir"
}
trap 'echo "$jc_self: interrupted; stopping jobs" >&2; cleanup; exit 130' INT TERM

run_one() {
  local id=$1 log cmd start code
  log=$(jc_job_log "$id")
  cmd=$(jc_job_cmd "$id")
  mkdir -p "$(dirname "$log")" || { echo 1 >"$status_dir/$id"; return; }
  start=$(date +%s)
  {
    echo "# $cmd"
    echo "# Started at $(date) on $(hostname)"
  } >"$log"
  if [ -n "$jc_threads" ]; then
    export OMP_NUM_THREADS=$jc_threads MKL_NUM_THREADS=$jc_threads
  fi
  # stdin from /dev/null: parallel jobs must not compete for the caller's input.
  bash -o pipefail -c "$cmd" </dev/null >>"$log" 2>&1
  code=$?
  {
    echo "# Accounting: time=$(($(date +%s) - start)) threads=${jc_threads:-1}"
    echo "# Ended (code $code) at $(date)"
  } >>"$log"
  echo "$code" >"$status_dir/$id"
}

for ((id = jc_first; id <= jc_last; id++)); do
  while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do
    wait -n 2>/dev/null || true
  done
  run_one "$id" &
  pids+=($!)
done
wait

failed=()
for ((id = jc_first; id <= jc_last; id++)); do
  code=$(cat "$status_dir/$id" 2>/dev/null || echo "?")
  [ "$code" = 0 ] || failed+=("$id:$code")
done
rm -rf "$status_dir"

if [ ${#failed[@]} -gt 0 ]; then
  total=$((jc_last - jc_first + 1))
  for f in "${failed[@]}"; do
    echo "$jc_self: job ${f%%:*} failed (exit ${f#*:}), log: $(jc_job_log "${f%%:*}")" >&2
  done
  if [ "$total" -gt 1 ]; then
    echo "$jc_self: ${#failed[@]} / $total failed, logs are in $(jc_job_log '*')" >&2
  fi
  exit 1
fi
exit 0
