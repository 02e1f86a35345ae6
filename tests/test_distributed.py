"""Joining the processes a launcher started (pix2seq_jax/parallel/distributed.py).

No launcher and no mocks: each case starts two real processes on localhost with the
environment that `srun` (SLURM) or `mpirun` (Open MPI) gives its tasks, and they either
join through JAX's cluster detection (`jax.distributed.initialize()` with no arguments)
or, with `auto=False` / `--noauto_distributed`, stay two separate one-process runs.
What is checked is what a run observes: process_count, process_index (from the
launcher's rank variable), the global devices and the coordinator the launcher's
variables name. tests/test_multihost.py trains with the explicit flags.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest

from tests.tiny import ROOT, killed_at_exit

# A process of the pair: joins (or not), gathers every process's index over the joined
# runtime, and prints what it observed as one JSON line.
_WORKER = r'''
import json, sys
from pix2seq_jax.parallel import distributed
joined = distributed.initialize(auto=sys.argv[1] == 'auto')
import jax
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
gathered = multihost_utils.process_allgather(np.int32(jax.process_index()))
print(json.dumps({
    'joined': joined, 'process_index': jax.process_index(),
    'process_count': jax.process_count(), 'device_count': jax.device_count(),
    'gathered': np.asarray(gathered).reshape(-1).tolist(),
    'coordinator': jax_distributed.global_state.coordinator_address,
    'client': jax_distributed.global_state.client is not None}))
'''
# Variables of launchers and of JAX's own multi-process setup: none leaks in from the
# machine the tests run on.
_CLEARED = ('SLURM_', 'OMPI_', 'PMI_', 'PMIX_', 'JAX_COORDINATOR', 'JAX_NUM_PROCESSES',
            'JAX_PROCESS_ID', 'JAX_LOCAL_DEVICE_IDS')
_TIMEOUT_S = 180


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _slurm(rank: int, port: int) -> dict[str, str]:
  """What `srun --ntasks=2` on one node (named localhost) sets for task `rank`."""
  return {'SLURM_JOB_ID': '4242', 'SLURM_STEP_ID': '0', 'SLURM_NTASKS': '2',
          'SLURM_STEP_NUM_TASKS': '2', 'SLURM_NTASKS_PER_NODE': '2',
          'SLURM_TASKS_PER_NODE': '2', 'SLURM_STEP_TASKS_PER_NODE': '2', 'SLURM_NNODES': '1',
          'SLURM_JOB_NUM_NODES': '1', 'SLURM_STEP_NUM_NODES': '1', 'SLURM_NODEID': '0',
          'SLURM_NODELIST': 'localhost', 'SLURM_JOB_NODELIST': 'localhost',
          'SLURM_STEP_NODELIST': 'localhost', 'SLURM_PROCID': str(rank),
          'SLURM_LOCALID': str(rank), 'JAX_COORDINATOR_PORT': str(port)}


def _ompi(rank: int, port: int) -> dict[str, str]:
  """What `mpirun -np 2` (Open MPI 4, launched from 127.0.0.1) sets for rank `rank`."""
  return {'OMPI_MCA_orte_hnp_uri': '4242.0;tcp://127.0.0.1:40000',
          'OMPI_COMM_WORLD_SIZE': '2', 'OMPI_COMM_WORLD_RANK': str(rank),
          'OMPI_COMM_WORLD_LOCAL_RANK': str(rank), 'OMPI_COMM_WORLD_LOCAL_SIZE': '2',
          'OMPI_COMM_WORLD_NODE_RANK': str(rank), 'JAX_COORDINATOR_PORT': str(port)}


# The launcher's variables, and the host its coordinator variable names.
_LAUNCHERS = {'slurm': (_slurm, 'localhost'), 'ompi': (_ompi, '127.0.0.1')}


def _run_pair(commands: list[list[str]], launcher: str,
              port: int) -> list[tuple[int, str, str]]:
  """Runs commands[r] as rank r of 2 under `launcher`'s variables (one CPU device each);
  returns [(exit code, stdout, stderr)] by rank. Both are killed if either overruns."""
  variables, _ = _LAUNCHERS[launcher]
  base = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
  base.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  # Output goes to files: a full pipe would stop one process while the other waits for it.
  outs = [(tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')) for _ in range(2)]
  with killed_at_exit([]) as processes:
    for rank, command in enumerate(commands):
      processes.append(subprocess.Popen(command, cwd=ROOT, env={**base, **variables(rank, port)},
                                        stdout=outs[rank][0], stderr=outs[rank][1], text=True))
    codes = [p.wait(timeout=_TIMEOUT_S) for p in processes]
  results = []
  for code, (stdout, stderr) in zip(codes, outs):
    stdout.seek(0)
    stderr.seek(0)
    results.append((code, stdout.read(), stderr.read()))
    stdout.close()
    stderr.close()
  return results


def _observed(results: list[tuple[int, str, str]]) -> list[dict]:
  for code, stdout, stderr in results:
    assert code == 0, stderr[-3000:]
  return [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]


@pytest.mark.parametrize('launcher', sorted(_LAUNCHERS))
def test_processes_a_launcher_started_join_through_jax_cluster_detection(launcher):
  port = _free_port()
  command = [sys.executable, '-c', _WORKER, 'auto']
  seen = _observed(_run_pair([command, command], launcher, port))
  host = _LAUNCHERS[launcher][1]
  for rank, process in enumerate(seen):
    assert process['joined'] and process['client'], process
    assert process['process_index'] == rank, process  # from SLURM_PROCID / OMPI_COMM_WORLD_RANK
    assert process['process_count'] == 2, process  # from SLURM_NTASKS / OMPI_COMM_WORLD_SIZE
    assert process['device_count'] == 2, process  # one CPU device each, seen by both
    assert process['gathered'] == [0, 1], process  # a collective over the joined runtime
    assert process['coordinator'] == f'{host}:{port}', process  # the launcher's host


@pytest.mark.parametrize('launcher', sorted(_LAUNCHERS))
def test_auto_false_leaves_the_processes_apart_under_a_launcher(launcher):
  command = [sys.executable, '-c', _WORKER, 'no-auto']
  seen = _observed(_run_pair([command, command], launcher, _free_port()))
  for process in seen:
    assert not process['joined'] and not process['client'], process
    assert process['coordinator'] is None, process
    assert (process['process_index'], process['process_count'],
            process['device_count'], process['gathered']) == (0, 1, 1, [0]), process


@pytest.mark.parametrize('flag', [None, '--noauto_distributed'])
def test_main_joins_under_slurm_unless_told_not_to(tmp_path, flag):
  """main.py itself: with nothing added it joins the two tasks (README, "Many devices and
  hosts"); `--noauto_distributed` (absl's spelling of a false boolean flag) keeps them
  apart. Each then stops, after the join, with the one-line error of a predict command
  whose images and workdir do not exist."""
  def command(rank: int) -> list[str]:
    return [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=predict',
            f'--workdir={tmp_path / "missing"}', f'--images={tmp_path}/*.jpg',
            f'--output={tmp_path / f"p{rank}.json"}', *([flag] if flag else [])]
  results = _run_pair([command(0), command(1)], 'slurm', _free_port())
  for rank, (code, _, stderr) in enumerate(results):
    assert code == 1 and 'error: ' in stderr, stderr[-3000:]
    assert 'Traceback' not in stderr
    joined = f'Process {rank} of 2;' in stderr
    assert joined == (flag is None), stderr[-3000:]
