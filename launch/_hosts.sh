# Shared by the launch scripts (sourced): --dry-run, one ssh per host, exit codes kept.
#
#   parse_dry_run "$@"          sets DRY_RUN=1 and ARGS (the other args, shell-quoted)
#   run_on_host NAME CMD...     runs CMD in the background (printed instead under --dry-run)
#   wait_hosts                  waits for every host, prints one line per host, returns the
#                               worst exit code: any error (1, 3, ...: the largest) beats
#                               143 (preempted, re-run to resume), which beats 0.

DRY_RUN=0
ARGS=""
HOST_NAMES=()
HOST_PIDS=()

parse_dry_run() {
  local a
  for a in "$@"; do
    if [[ "$a" == "--dry-run" ]]; then DRY_RUN=1; else ARGS+=$(printf ' %q' "$a"); fi
  done
}

# Prints a command as it would run, one line, shell-quoted.
show() {
  local out="" a
  for a in "$@"; do out+=$(printf '%q ' "$a"); done
  echo "${out% }"
}

run_on_host() {
  local name="$1"; shift
  if (( DRY_RUN )); then
    echo "[dry-run] ${name}: $(show "$@")"
    return 0
  fi
  "$@" &
  HOST_NAMES+=("$name")
  HOST_PIDS+=("$!")
}

wait_hosts() {
  local worst=0 i rc
  for i in "${!HOST_PIDS[@]}"; do
    rc=0
    wait "${HOST_PIDS[$i]}" || rc=$?
    echo "host ${HOST_NAMES[$i]}: exit ${rc}" >&2
    if (( rc != 0 )); then
      if (( worst == 0 || worst == 143 )); then
        worst=$rc
      elif (( rc != 143 && rc > worst )); then
        worst=$rc
      fi
    fi
  done
  return "$worst"
}

# The command every host runs: pipefail, so the exit code of `showo2-jax train`
# (0 done, 1 user error, 3 non-finite loss, 143 preempted) survives the tee.
remote_train_command() {
  local env_lines="$1"
  cat <<CMD
set -eo pipefail
cd ${REPO_DIR}
${env_lines}export TF_CPP_MIN_LOG_LEVEL=3
showo2-jax train --workdir ${WORKDIR}${ARGS} 2>&1 | tee -a /tmp/showo2_train.log
CMD
}

# Worker count of a TPU VM slice (NUM_WORKERS overrides; needed under --dry-run).
tpu_num_workers() {
  local tpu="$1"
  if [[ -n "${NUM_WORKERS:-}" ]]; then echo "${NUM_WORKERS}"; return; fi
  if (( DRY_RUN )); then echo "set NUM_WORKERS for --dry-run" >&2; return 2; fi
  gcloud compute tpus tpu-vm describe "${tpu}" --zone "${ZONE}" \
    --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c .
}
