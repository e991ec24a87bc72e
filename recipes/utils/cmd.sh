# shellcheck shell=bash
# Job runners, Kaldi style: every parallel step is `$cmd JOB=1:N log cmd...`.
# Sourced by each recipe's cmd.sh, from the recipe folder; the runners are named
# by absolute path so the commands work from any working directory (--workdir).
#
# On this machine (default) jobs run locally with bounded parallelism. On a
# Slurm cluster export W2V_CMD_BACKEND=slurm (and adjust partitions/limits in
# conf/slurm.conf) and the same stages run as sbatch job arrays.

case "${W2V_CMD_BACKEND:-local}" in
  local)
    export train_cmd="$PWD/utils/run_local.sh"
    export decode_cmd="$PWD/utils/run_local.sh"
    export cpu_cmd="$PWD/utils/run_local.sh"
    ;;
  slurm)
    export train_cmd="$PWD/utils/slurm.sh --config $PWD/conf/slurm.conf --gpu 1 --time 24:00:00"
    export decode_cmd="$PWD/utils/slurm.sh --config $PWD/conf/slurm.conf --time 2:00:00"
    export cpu_cmd="$PWD/utils/slurm.sh --config $PWD/conf/slurm.conf --time 1:00:00"
    ;;
  *)
    echo "cmd.sh: W2V_CMD_BACKEND must be local or slurm, got '$W2V_CMD_BACKEND'" >&2
    return 1
    ;;
esac
