#!/usr/bin/env bash
# Train on the GPUs of one host (all visible GPUs form the mesh).
#
#   WORKDIR=/runs/stage2 launch/gpu_single_host.sh [--dry-run] --config stage2_1p5b:b \
#     --config.train.global_batch_size=64 --config.train.grad_accum_steps=2
#
# One process drives all local GPUs, so no jax.distributed is needed. For several
# hosts, run the same command on each with
#   --coordinator_address=HOST0:1234 --num_processes=N --process_id=I
# (or under SLURM / Open MPI, where they are detected). The exit code is the
# trainer's (0 done, 1 user error, 3 non-finite loss, 143 preempted); --dry-run
# prints the command instead.
set -euo pipefail
: "${WORKDIR:?set WORKDIR}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export TF_CPP_MIN_LOG_LEVEL=3
source "$(dirname "$0")/_hosts.sh"
parse_dry_run "$@"
if (( DRY_RUN )); then
  echo "[dry-run] $(hostname): XLA_FLAGS=$(printf '%q' "${XLA_FLAGS}") showo2-jax train --workdir $(printf '%q' "${WORKDIR}")${ARGS}"
  exit 0
fi
eval "exec showo2-jax train --workdir $(printf '%q' "${WORKDIR}")${ARGS}"
