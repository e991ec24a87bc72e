# shellcheck shell=bash
# Job runners of this recipe: the shared ones (local, or Slurm with W2V_CMD_BACKEND=slurm and conf/slurm.conf).
. "$(dirname "${BASH_SOURCE[0]}")/utils/cmd.sh"
