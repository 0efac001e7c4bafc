#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (e.g. v5p-256 = 32 hosts).
#
#   TPU_NAME=my-v5p ZONE=us-east5-a WORKDIR=gs://bucket/runs/stage1 \
#     launch/tpu_vm_pod.sh [--dry-run] --config stage1_1p5b --config.tokenizer_path=/data/qwen
#
# The same command runs on every worker (one ssh each, in parallel);
# jax.distributed.initialize() discovers the slice from the TPU metadata, so no
# coordinator flags are needed. Each worker's exit code is printed and the worst
# one is returned (an error beats 143, which beats 0). Re-running resumes from
# WORKDIR's latest checkpoint; a preempted slice saves on SIGTERM before it goes
# (every host the same step, exit code 143). --dry-run prints the commands instead.
# NUM_WORKERS skips asking gcloud for the worker count (required with --dry-run).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (a gs:// path or shared disk)}"
REPO_DIR="${REPO_DIR:-~/showo2-jax}"
source "$(dirname "$0")/_hosts.sh"
parse_dry_run "$@"
workers=$(tpu_num_workers "${TPU_NAME}")
command=$(remote_train_command "")
for ((w = 0; w < workers; w++)); do
  run_on_host "${TPU_NAME}/${w}" gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" \
    --worker="${w}" --command "${command}"
done
(( DRY_RUN )) || wait_hosts
