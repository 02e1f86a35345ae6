"""Starts JAX's multi-process runtime (`jax.distributed.initialize`) when a run spans hosts.

Explicit: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on every
process. Automatic: under a launcher JAX knows (SLURM, Open MPI) that started more than
one process, JAX reads the coordinator, process count and rank from the environment.
A single process on one machine needs neither. Must run before JAX touches a device.

Which devices each process drives is this module's choice, not JAX's default (JAX gives
every launcher task one GPU, its local rank): `devices_per_process='node'` (one task per
node driving all the GPUs it sees) or `'task'` (one task per GPU). After joining,
`check_device_count` compares the global device count with what the launcher allocated,
so that a layout that leaves GPUs idle stops before any work.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import jax
from absl import logging

# Environment variables giving the number of processes a launcher started.
_LAUNCHER_SIZES = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')
# What JAX's cluster detection needs to recognise each launcher, in JAX's order of
# preference (jax/_src/clusters: Open MPI before SLURM).
_LAUNCHERS = {
    'ompi': ('OMPI_MCA_orte_hnp_uri',),
    'slurm': ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
              'SLURM_LOCALID'),
}
# Each launcher's process count and the process's rank on its node.
_PROCESS_COUNT = {'ompi': 'OMPI_COMM_WORLD_SIZE', 'slurm': 'SLURM_NTASKS'}
_LOCAL_RANK = {'ompi': 'OMPI_COMM_WORLD_LOCAL_RANK', 'slurm': 'SLURM_LOCALID'}
# Variables listing the GPUs a process may use (NVIDIA, then AMD).
_VISIBLE_GPUS = ('CUDA_VISIBLE_DEVICES', 'ROCR_VISIBLE_DEVICES', 'HIP_VISIBLE_DEVICES')
DEVICES_PER_PROCESS = ('node', 'task')


class LauncherError(ValueError):
  """The launcher's layout and the devices the run sees disagree (message has the fix)."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
  """What a launcher's environment asks of this process."""
  # 'slurm', 'ompi', or None where no launcher JAX detects started the process.
  launcher: str | None
  # Processes the launcher started (1 without a launcher).
  processes: int
  # GPU ordinals this process drives (jax.distributed.initialize's local_device_ids);
  # None: every device the process sees.
  local_device_ids: tuple[int, ...] | None
  # The global device count the launcher allocated; None where it gives no number.
  expected_devices: int | None
  # Where that number comes from, e.g. 'SLURM_GPUS_ON_NODE=8 x SLURM_STEP_NUM_NODES=4'.
  expected_from: str


def launched_processes() -> int:
  """How many processes a cluster launcher says it started (1 when none did)."""
  for name in _LAUNCHER_SIZES:
    value = os.environ.get(name, '')
    if value.isdigit():
      return int(value)
  return 1


def _int(environ: Mapping[str, str], name: str) -> int | None:
  """A variable's trailing integer ('8', 'h100:8' -> 8); None when unset or not a count."""
  match = re.fullmatch(r'(?:.*:)?(\d+)', environ.get(name, ''))
  return int(match.group(1)) if match else None


def _visible_gpus(environ: Mapping[str, str]) -> tuple[str, int] | None:
  """(variable, number of GPUs it lists) for the first GPU-visibility variable set."""
  for name in _VISIBLE_GPUS:
    value = environ.get(name, '').strip()
    if value and value != 'NoDevFiles':  # SLURM's value when no GPU was allocated
      return name, len(value.split(','))
  return None


def launch_plan(environ: Mapping[str, str], devices_per_process: str) -> LaunchPlan:
  """The local device ids and expected global device count a launcher's environment gives.

  'node': one process per node drives every GPU it sees (ordinals 0..n-1 of the GPUs
  CUDA_VISIBLE_DEVICES or SLURM_GPUS_ON_NODE count; None, all, where nothing counts them);
  the launcher allocated GPUs per node x nodes. 'task': one process per GPU, the single
  GPU the launcher bound to the task, else the one at its local rank; the launcher
  allocated one device per task. JAX_LOCAL_DEVICE_IDS, where set, overrides the ids (as
  in JAX).
  """
  if devices_per_process not in DEVICES_PER_PROCESS:
    raise LauncherError(f'--devices_per_process={devices_per_process!r} is not one of '
                        f'{", ".join(DEVICES_PER_PROCESS)}; try --devices_per_process=node.')
  launcher = next((name for name, needed in _LAUNCHERS.items()
                   if all(v in environ for v in needed)), None)
  if launcher is None:
    return LaunchPlan(None, 1, None, None, 'no launcher')
  count_name = _PROCESS_COUNT[launcher]
  processes = _int(environ, count_name) or 1
  visible = _visible_gpus(environ)
  if devices_per_process == 'task':
    rank_name = _LOCAL_RANK[launcher]
    local_rank = _int(environ, rank_name) or 0
    if visible is not None and visible[1] == 1:  # the launcher bound one GPU to the task
      ids = (0,)
    elif visible is not None and local_rank >= visible[1]:
      raise LauncherError(
          f'--devices_per_process=task: {rank_name}={local_rank} but {visible[0]} lists '
          f'{visible[1]} GPUs; give each task its own GPU (srun --gpus-per-task=1) or '
          'start one task per node with --devices_per_process=node.')
    else:
      ids = (local_rank,)
    expected, source = processes, f'{count_name}={processes} tasks of one device each'
  else:
    per_node = (visible[1] if visible is not None else
                _int(environ, 'SLURM_GPUS_ON_NODE') or _int(environ, 'SLURM_GPUS_PER_NODE'))
    ids = tuple(range(per_node)) if per_node else None
    expected, source = None, f'{launcher} gives no GPU count'
    if launcher == 'slurm':
      gpus_name = next((n for n in ('SLURM_GPUS_ON_NODE', 'SLURM_GPUS_PER_NODE')
                        if _int(environ, n)), None)
      nodes_name = next((n for n in ('SLURM_STEP_NUM_NODES', 'SLURM_NNODES')
                         if _int(environ, n)), None)
      if gpus_name and nodes_name:
        gpus, nodes = _int(environ, gpus_name), _int(environ, nodes_name)
        expected, source = gpus * nodes, f'{gpus_name}={gpus} x {nodes_name}={nodes}'
    elif visible is not None and _int(environ, 'OMPI_COMM_WORLD_LOCAL_SIZE'):
      per_host = _int(environ, 'OMPI_COMM_WORLD_LOCAL_SIZE')
      expected = visible[1] * max(1, processes // per_host)
      source = (f'{visible[0]} ({visible[1]} GPUs) x {count_name}={processes} / '
                f'OMPI_COMM_WORLD_LOCAL_SIZE={per_host}')
  if environ.get('JAX_LOCAL_DEVICE_IDS'):
    ids = tuple(int(i) for i in environ['JAX_LOCAL_DEVICE_IDS'].split(','))
  return LaunchPlan(launcher, processes, ids, expected, source)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = True,
               devices_per_process: str = 'node') -> bool:
  """Joins the processes of a multi-host run; returns whether it did.

  Explicit arguments must come together; otherwise, with `auto`, a launcher that started
  several processes (or JAX_COORDINATOR_ADDRESS in the environment) triggers JAX's own
  cluster detection. Under a launcher, each process drives the devices `launch_plan`
  gives it. Follow with `check_device_count`.
  """
  plan = launch_plan(os.environ, devices_per_process)
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('--coordinator_address, --num_processes and --process_id go together '
                       f'(got {coordinator_address!r}, {num_processes!r}, {process_id!r}).')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, --num_processes='
                       f'{num_processes}).')
  elif not (auto and (launched_processes() > 1 or os.environ.get('JAX_COORDINATOR_ADDRESS'))):
    return False
  ids = list(plan.local_device_ids) if plan.local_device_ids is not None else None
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             local_device_ids=ids)
  if plan.launcher is not None and ids is None:
    # Without ids JAX gives a launcher's task one GPU, its local rank; the launcher did
    # not say how many GPUs this node has, so the process uses every one it sees.
    jax.config.update('jax_cuda_visible_devices', 'all')
    jax.config.update('jax_rocm_visible_devices', 'all')
  return True


def check_device_count(devices_per_process: str, joined: bool) -> None:
  """Raises LauncherError when the global device count is not what the launcher allocated.

  Checked under a launcher, after `initialize` joined its processes (or when it started
  one); logs that the check was skipped where the launcher gives no number.
  """
  plan = launch_plan(os.environ, devices_per_process)
  if plan.launcher is None or (not joined and plan.processes > 1):
    return
  if plan.expected_devices is None:
    logging.info('Global device count not checked: %s.', plan.expected_from)
    return
  found = jax.device_count()
  if found == plan.expected_devices:
    return
  backend = jax.default_backend()
  hint = (' (a CPU-only jaxlib? install a GPU one: pip install -e ".[cuda12]")'
          if backend == 'cpu' else '')
  raise LauncherError(
      f'the run sees {found} {backend} devices ({jax.process_count()} processes, '
      f'{jax.local_device_count()} on this one){hint}, but the launcher allocated '
      f'{plan.expected_devices} ({plan.expected_from}) and --devices_per_process='
      f'{devices_per_process}. One task per node: srun --ntasks-per-node=1 with '
      '--devices_per_process=node; one task per GPU: srun --ntasks-per-node=GPUS_PER_NODE '
      'with --devices_per_process=task (docs/multi_gpu.md).')


def describe_devices() -> str:
  """One line on this process: backend, device kind, local and global counts, its devices."""
  local = jax.local_devices()
  kinds = ', '.join(sorted({d.device_kind for d in local}))
  return (f'Process {jax.process_index()} of {jax.process_count()}: backend '
          f'{jax.default_backend()}, device kind {kinds}, {len(local)} local and '
          f'{jax.device_count()} global devices: {", ".join(str(d) for d in local)}.')
