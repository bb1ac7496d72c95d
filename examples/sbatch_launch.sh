#!/bin/bash
# The 355B GSPO recipe inside a Slurm allocation: `sbatch examples/sbatch_launch.sh`.
#
# glmlaunch reads the nodes from Slurm (SLURM_JOB_NODELIST, SLURM_GPUS_ON_NODE): no hostfile.
# It starts `ray start` on every node as a job step of its own (srun --overlap, one held step per
# node), waits until 8 nodes x 8 GPUs joined, submits miles' trainer as a Ray job, follows its log
# and stops exactly what it started. The script's exit code is the trainer's.
#
# Time limit: Slurm sends SIGTERM to every step at the end. Leave room for the trainer's last
# checkpoint (save_interval), or use glmlaunch.slurm.submit() (examples/submit_355b_gspo.ipynb),
# which stops the trainer with its grace period and requeues the job before the limit.
#SBATCH --job-name=glm45-355b-gspo
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --output=glmlaunch-%j.out
##SBATCH --partition=YOUR_PARTITION
##SBATCH --account=YOUR_ACCOUNT
set -euo pipefail

# The same Python and glmlaunch on every node (a shared filesystem or one image everywhere).
GLMLAUNCH=${GLMLAUNCH:-glmlaunch}
# Run directories (plan, per-host logs, job.log) on the shared filesystem:
export GLMLAUNCH_RUNS_DIR=${GLMLAUNCH_RUNS_DIR:-$PWD/runs}
# export WANDB_API_KEY=...   # read at submit time, passed to the job, never written to argv or logs

# Checks first (recipe x allocation, megatron-core/SGLang when installed): nothing starts if they fail.
"$GLMLAUNCH" check glm45-355b-a32b-gspo
# Then the launch; Ray's ports can be moved with --port-base/--dashboard-port.
exec "$GLMLAUNCH" launch glm45-355b-a32b-gspo
