#!/usr/bin/env bash
# Train over several TPU slices (multislice, DCN between slices) with queued resources.
#
#   TPU_PREFIX=showo2 ZONE=us-east5-a NUM_SLICES=2 WORKDIR=gs://bucket/runs/stage2 \
#     launch/tpu_multislice.sh [--dry-run] --config stage2_1p5b:c --config.mesh.data=1 --config.mesh.fsdp=-1
#
# Each slice is its own TPU VM pod named ${TPU_PREFIX}-<i>; MEGASCALE_* tells the
# runtime which slice a host belongs to and where slice 0's coordinator is, and
# jax.distributed.initialize() picks that up. `config.mesh.data/fsdp/tensor` are
# sizes inside a slice; `mesh.dcn_data=-1` (the default) puts the slices on the
# data axis (data parallel across the slow DCN links), FSDP stays inside a slice.
# One ssh per worker of every slice, in parallel; each exit code is printed and
# the worst returned (an error beats 143, which beats 0). --dry-run prints the
# commands instead; NUM_WORKERS (workers per slice) skips asking gcloud.
set -euo pipefail
: "${TPU_PREFIX:?}" "${ZONE:?}" "${NUM_SLICES:?}" "${WORKDIR:?}"
REPO_DIR="${REPO_DIR:-~/showo2-jax}"
source "$(dirname "$0")/_hosts.sh"
parse_dry_run "$@"
describe=(gcloud compute tpus tpu-vm describe "${TPU_PREFIX}-0" --zone "${ZONE}"
          --format='value(networkEndpoints[0].ipAddress)')
if (( DRY_RUN )); then
  echo "[dry-run] coordinator: $(show "${describe[@]}")"
  COORD='$COORDINATOR_IP'
else
  COORD=$("${describe[@]}")
fi
for ((i = 0; i < NUM_SLICES; i++)); do
  workers=$(tpu_num_workers "${TPU_PREFIX}-${i}")
  env_lines="export MEGASCALE_COORDINATOR_ADDRESS=${COORD}:8080
export MEGASCALE_NUM_SLICES=${NUM_SLICES}
export MEGASCALE_SLICE_ID=${i}
"
  command=$(remote_train_command "${env_lines}")
  for ((w = 0; w < workers; w++)); do
    run_on_host "${TPU_PREFIX}-${i}/${w}" gcloud compute tpus tpu-vm ssh "${TPU_PREFIX}-${i}" \
      --zone "${ZONE}" --worker="${w}" --command "${command}"
  done
done
(( DRY_RUN )) || wait_hosts
