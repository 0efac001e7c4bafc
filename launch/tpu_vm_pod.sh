#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (e.g. v5p-256 = 32 hosts).
#
#   TPU_NAME=my-v5p ZONE=us-east5-a WORKDIR=gs://bucket/runs/stage1 \
#     launch/tpu_vm_pod.sh --config stage1_1p5b --config.tokenizer_path=/data/qwen
#
# The same command runs on all workers (--worker=all); jax.distributed.initialize()
# discovers the slice from the TPU metadata, so no coordinator flags are needed.
# Re-running resumes from WORKDIR's latest checkpoint; a preempted slice saves
# on SIGTERM before it goes (exit code 143).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (a gs:// path or shared disk)}"
REPO_DIR="${REPO_DIR:-~/showo2-jax}"
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --worker=all --command "
  set -e
  cd ${REPO_DIR}
  export TF_CPP_MIN_LOG_LEVEL=3
  showo2-jax train --workdir ${WORKDIR} ${ARGS} 2>&1 | tee -a /tmp/showo2_train.log
"
