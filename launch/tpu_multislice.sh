#!/usr/bin/env bash
# Train over several TPU slices (multislice, DCN between slices) with queued resources.
#
#   TPU_PREFIX=showo2 ZONE=us-east5-a NUM_SLICES=2 WORKDIR=gs://bucket/runs/stage2 \
#     launch/tpu_multislice.sh --config stage2_1p5b:c --config.mesh.data=1 --config.mesh.fsdp=-1
#
# Each slice is its own TPU VM pod named ${TPU_PREFIX}-<i>; MEGASCALE_* tells the
# runtime which slice a host belongs to and where slice 0's coordinator is, and
# jax.distributed.initialize() picks that up. `config.mesh.data/fsdp/tensor` are
# sizes inside a slice; `mesh.dcn_data=-1` (the default) puts the slices on the
# data axis (data parallel across the slow DCN links), FSDP stays inside a slice.
set -euo pipefail
: "${TPU_PREFIX:?}" "${ZONE:?}" "${NUM_SLICES:?}" "${WORKDIR:?}"
REPO_DIR="${REPO_DIR:-~/showo2-jax}"
ARGS=$(printf ' %q' "$@")
COORD=$(gcloud compute tpus tpu-vm describe "${TPU_PREFIX}-0" --zone "${ZONE}" \
  --format='value(networkEndpoints[0].ipAddress)')
for ((i = 0; i < NUM_SLICES; i++)); do
  gcloud compute tpus tpu-vm ssh "${TPU_PREFIX}-${i}" --zone "${ZONE}" --worker=all --command "
    set -e
    cd ${REPO_DIR}
    export MEGASCALE_COORDINATOR_ADDRESS=${COORD}:8080
    export MEGASCALE_NUM_SLICES=${NUM_SLICES}
    export MEGASCALE_SLICE_ID=${i}
    export TF_CPP_MIN_LOG_LEVEL=3
    showo2-jax train --workdir ${WORKDIR} ${ARGS} 2>&1 | tee -a /tmp/showo2_train.log
  " &
done
wait
