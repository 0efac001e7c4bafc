#!/usr/bin/env bash
# Train on the GPUs of one host (all visible GPUs form the mesh).
#
#   WORKDIR=/runs/stage2 launch/gpu_single_host.sh --config stage2_1p5b:b \
#     --config.train.global_batch_size=64 --config.train.grad_accum_steps=2
#
# One process drives all local GPUs, so no jax.distributed is needed. For several
# hosts, run the same command on each with
#   --coordinator_address=HOST0:1234 --num_processes=N --process_id=I
# (or under SLURM / Open MPI, where they are detected).
set -euo pipefail
: "${WORKDIR:?set WORKDIR}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export TF_CPP_MIN_LOG_LEVEL=3
exec showo2-jax train --workdir "${WORKDIR}" "$@"
