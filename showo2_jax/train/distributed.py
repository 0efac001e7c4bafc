"""Multi-host start-up: `jax.distributed.initialize` from flags or the environment.

One code path for every cluster:
- explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`), or
  the same values in JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
- a TPU pod slice, multislice or a SLURM / Open MPI / Kubernetes GPU job, where
  `jax.distributed.initialize()` discovers everything itself;
- otherwise a single process, and nothing is initialised.

It must run before anything touches a jax backend (device lists, arrays).
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import jax

log = logging.getLogger(__name__)

# Variables whose presence means a cluster that jax auto-detects.
_AUTO_DETECT_ENV = (
    "TPU_WORKER_HOSTNAMES",     # TPU VM pod slices (gcloud ... --worker=all)
    "MEGASCALE_COORDINATOR_ADDRESS",  # multislice
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "JOBSET_NAME",              # GKE JobSet (TPU or GPU)
)


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def _is_multi_worker_tpu() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, local_device_ids=None) -> bool:
  """Initialises jax.distributed when this is a multi-process run; returns whether it did."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("a coordinator address needs --num_processes and --process_id "
                       "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
  elif _is_multi_worker_tpu() or any(v in os.environ for v in _AUTO_DETECT_ENV[2:]):
    if "SLURM_JOB_ID" in os.environ and (_env_int("SLURM_NTASKS") or 1) == 1:
      return False
    jax.distributed.initialize()
  else:
    return False
  log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# Long enough for the slowest host's compile of a pod-sized step.
BARRIER_TIMEOUT_S = 3600


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Blocks until every process reaches the barrier `name`; a no-op in one process.

  The coordination service's barrier (Orbax's `get_barrier_sync_fn`), not a device
  collective: CPU (gloo) collectives give up when a peer is 30 s late, and one host
  can finish compiling a step minutes after another. `name` must be unique per use.
  Raises the distributed client's error after `timeout_s` seconds.
  """
  if jax.process_count() == 1:
    return
  from showo2_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  orbax_io.barrier(name, timeout_s)
