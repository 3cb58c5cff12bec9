#!/usr/bin/env bash
# A hyperparameter sweep as a job array: array task i trains combination i of a sweep file (see
# `python -m dcgan_dist.sweep --help` for the format) in its own run directory,
# runs/<sweep>/<overrides>, with slurm/train.sbatch: same launch, same stop-and-requeue.
#
#   sbatch slurm/sweep.sh                                    # configs/sweeps/example.yaml, 4 runs
#   python -m dcgan_dist.sweep configs/sweeps/mine.yaml      # any sweep: lists it, sets --array, submits
#   sbatch --array=0-11%4 slurm/sweep.sh configs/sweeps/mine.yaml   # the same by hand, 4 at a time
#   python -m dcgan_dist.report runs/example                 # one row per run
#
# Submit from the repository root (this script runs slurm/train.sbatch from the submit directory;
# set DCGAN_SLURM_DIR otherwise). The environment knobs of slurm/train.sbatch apply to every task.
# The #SBATCH defaults below are per array task, i.e. per run; edit them for your cluster.
#SBATCH --job-name=dcgan-sweep
# Matches configs/sweeps/example.yaml (4 combinations); python -m dcgan_dist.sweep sets it for any sweep.
#SBATCH --array=0-3
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
# One GPU per run (0 on CPU-only nodes).
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
# USR1 120 s before the time limit: the run checkpoints and the task requeues itself.
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out

set -uo pipefail

spec=${1:-configs/sweeps/example.yaml}
python=${DCGAN_PYTHON:-python}
slurm_dir=${DCGAN_SLURM_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/slurm}

if [[ -z ${SLURM_ARRAY_TASK_ID:-} ]]; then
  echo "sweep.sh: not an array task; submit with sbatch --array=... or python -m dcgan_dist.sweep $spec" >&2
  exit 2
fi
# The base config, then this task's overrides (run.dir among them), one per line; records them in
# the run directory for the report. An index outside the sweep fails here with a clear message.
out=$("$python" -m dcgan_dist.sweep "$spec" --index "$SLURM_ARRAY_TASK_ID" --with-config --record) || exit 2
mapfile -t args <<<"$out"
echo "sweep.sh: $spec task $SLURM_ARRAY_TASK_ID: ${args[*]}" >&2
# exec: train.sbatch becomes this batch shell, so it receives the time-limit signal and requeues this task.
exec bash "$slurm_dir/train.sbatch" "${args[@]}"
