"""Starts JAX's multi-process runtime (`jax.distributed.initialize`) when a run spans hosts.

Explicit: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on every
process. Automatic: under a launcher JAX knows (SLURM, Open MPI, ...) that started more
than one process, `jax.distributed.initialize()` reads everything from the environment.
A single process on one machine needs neither. Must run before JAX touches a device.
"""

from __future__ import annotations

import os

import jax
from absl import logging

# Environment variables giving the number of processes a launcher started.
_LAUNCHER_SIZES = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


def launched_processes() -> int:
  """How many processes a cluster launcher says it started (1 when none did)."""
  for name in _LAUNCHER_SIZES:
    value = os.environ.get(name, '')
    if value.isdigit():
      return int(value)
  return 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = True) -> bool:
  """Joins the processes of a multi-host run; returns whether it did.

  Explicit arguments must come together; otherwise, with `auto`, a launcher that started
  several processes (or JAX_COORDINATOR_ADDRESS in the environment) triggers JAX's own
  cluster detection.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('--coordinator_address, --num_processes and --process_id go together '
                       f'(got {coordinator_address!r}, {num_processes!r}, {process_id!r}).')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, --num_processes='
                       f'{num_processes}).')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif auto and (launched_processes() > 1 or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    jax.distributed.initialize()
  else:
    return False
  logging.info('Process %d of %d; %d local and %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
