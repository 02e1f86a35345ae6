"""Joining the processes a launcher started (pix2seq_jax/parallel/distributed.py).

No launcher and no mocks: each case starts two real processes on localhost with the
environment that `srun` (SLURM) or `mpirun` (Open MPI) gives its tasks, and they either
join through JAX's cluster detection (`jax.distributed.initialize()` with no arguments)
or, with `auto=False` / `--noauto_distributed`, stay two separate one-process runs.
What is checked is what a run observes: process_count, process_index (from the
launcher's rank variable), the global devices, the coordinator the launcher's variables
name, the GPUs each process was given (JAX's `jax_cuda_visible_devices`, which
`local_device_ids` sets even where, as on CPU, no GPU uses it) and the device report.
Which GPUs a layout gives is also checked as a pure function of the environment, for
clusters of 8-GPU nodes. tests/test_multihost.py trains with the explicit flags.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest

from pix2seq_jax.parallel import distributed
from tests.tiny import ROOT, killed_at_exit

# A process of the pair: joins (or not) with argv[2] devices per process, checks the
# device count, gathers every process's index over the joined runtime, and prints what it
# observed as one JSON line.
_WORKER = r'''
import json, sys
from absl import logging
from pix2seq_jax.parallel import distributed
logging.set_verbosity(logging.INFO)
joined = distributed.initialize(auto=sys.argv[1] == 'auto', devices_per_process=sys.argv[2])
report = distributed.describe_devices()
distributed.check_device_count(sys.argv[2], joined)
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
    'client': jax_distributed.global_state.client is not None,
    'visible_gpus': jax.config.read('jax_cuda_visible_devices'), 'report': report}))
'''
# Variables of launchers and of JAX's own multi-process setup: none leaks in from the
# machine the tests run on.
_CLEARED = ('SLURM_', 'OMPI_', 'PMI_', 'PMIX_', 'JAX_COORDINATOR', 'JAX_NUM_PROCESSES',
            'JAX_PROCESS_ID', 'JAX_LOCAL_DEVICE_IDS', 'CUDA_VISIBLE_DEVICES',
            'ROCR_VISIBLE_DEVICES', 'HIP_VISIBLE_DEVICES')
_TIMEOUT_S = 180


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _slurm(rank: int, port: int, nodes: int = 1) -> dict[str, str]:
  """What `srun --ntasks=2` sets for task `rank`: on one node (named localhost), or with
  nodes=2 on two nodes (both named localhost), one task each."""
  per_node, nodelist = 2 // nodes, ','.join(['localhost'] * nodes)
  return {'SLURM_JOB_ID': '4242', 'SLURM_STEP_ID': '0', 'SLURM_NTASKS': '2',
          'SLURM_STEP_NUM_TASKS': '2', 'SLURM_NTASKS_PER_NODE': str(per_node),
          'SLURM_TASKS_PER_NODE': f'{per_node}(x{nodes})',
          'SLURM_STEP_TASKS_PER_NODE': f'{per_node}(x{nodes})', 'SLURM_NNODES': str(nodes),
          'SLURM_JOB_NUM_NODES': str(nodes), 'SLURM_STEP_NUM_NODES': str(nodes),
          'SLURM_NODEID': str(rank // per_node), 'SLURM_NODELIST': nodelist,
          'SLURM_JOB_NODELIST': nodelist, 'SLURM_STEP_NODELIST': nodelist,
          'SLURM_PROCID': str(rank), 'SLURM_LOCALID': str(rank % per_node),
          'JAX_COORDINATOR_PORT': str(port)}


def _ompi(rank: int, port: int) -> dict[str, str]:
  """What `mpirun -np 2` (Open MPI 4, launched from 127.0.0.1) sets for rank `rank`."""
  return {'OMPI_MCA_orte_hnp_uri': '4242.0;tcp://127.0.0.1:40000',
          'OMPI_COMM_WORLD_SIZE': '2', 'OMPI_COMM_WORLD_RANK': str(rank),
          'OMPI_COMM_WORLD_LOCAL_RANK': str(rank), 'OMPI_COMM_WORLD_LOCAL_SIZE': '2',
          'OMPI_COMM_WORLD_NODE_RANK': str(rank), 'JAX_COORDINATOR_PORT': str(port)}


# The launcher's variables, and the host its coordinator variable names.
_LAUNCHERS = {'slurm': (_slurm, 'localhost'), 'ompi': (_ompi, '127.0.0.1')}


def _run_pair(commands: list[list[str]], launcher: str, port: int, devices: int = 1,
              nodes: int = 1, extra: dict[str, str] | None = None) -> list[tuple[int, str, str]]:
  """Runs commands[r] as rank r of 2 under `launcher`'s variables (on `nodes` nodes for
  SLURM, plus `extra`), `devices` CPU devices each; returns [(exit code, stdout, stderr)]
  by rank. Both are killed if either overruns."""
  variables, _ = _LAUNCHERS[launcher]
  if nodes != 1:
    variables = functools.partial(variables, nodes=nodes)
  base = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
  base.update(JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              **(extra or {}))
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
  for code, _, stderr in results:
    assert code == 0, stderr[-3000:]
  # The JSON line; XLA's collectives library (Gloo) may print to stdout after it.
  return [json.loads([line for line in stdout.splitlines() if line.startswith('{')][-1])
          for _, stdout, _ in results]


# (launcher, --devices_per_process, SLURM nodes, CPU devices per process, extra variables,
#  the GPUs each rank is given, the device count check's verdict in the log)
_LAYOUTS = {
    # one task per node, each node's 2 GPUs named by SLURM: both GPUs, 2 x 2 checked
    'slurm-task-per-node': ('slurm', 'node', 2, 2,
                            {'SLURM_GPUS_ON_NODE': '2', 'CUDA_VISIBLE_DEVICES': '0,1'},
                            ['0,1', '0,1'], None),
    # two tasks on one node, one GPU each: its local rank, 2 tasks checked
    'slurm-task-per-gpu': ('slurm', 'task', 1, 1, {}, ['0', '1'], None),
    # mpirun gives no GPU count: every GPU the process sees, the check skipped (logged)
    'ompi-task-per-node': ('ompi', 'node', 1, 1, {}, ['all', 'all'],
                           'Global device count not checked: ompi gives no GPU count.'),
}


@pytest.mark.parametrize('layout', sorted(_LAYOUTS))
def test_processes_a_launcher_started_join_with_the_devices_of_their_layout(layout):
  launcher, per_process, nodes, devices, extra, visible, skipped = _LAYOUTS[layout]
  port = _free_port()
  command = [sys.executable, '-c', _WORKER, 'auto', per_process]
  results = _run_pair([command, command], launcher, port, devices, nodes, extra)
  seen = _observed(results)
  host = _LAUNCHERS[launcher][1]
  for rank, process in enumerate(seen):
    assert process['joined'] and process['client'], process
    assert process['process_index'] == rank, process  # from SLURM_PROCID / OMPI_COMM_WORLD_RANK
    assert process['process_count'] == 2, process  # from SLURM_NTASKS / OMPI_COMM_WORLD_SIZE
    assert process['device_count'] == 2 * devices, process  # seen by both
    assert process['gathered'] == [0, 1], process  # a collective over the joined runtime
    assert process['coordinator'] == f'{host}:{port}', process  # the launcher's host
    assert process['visible_gpus'] == visible[rank], process  # local_device_ids as passed
    assert process['report'].startswith(
        f'Process {rank} of 2: backend cpu, device kind cpu, {devices} local and '
        f'{2 * devices} global devices: '), process
    assert (skipped in results[rank][2]) if skipped else ('not checked' not in results[rank][2])


@pytest.mark.parametrize('launcher', sorted(_LAUNCHERS))
def test_auto_false_leaves_the_processes_apart_under_a_launcher(launcher):
  command = [sys.executable, '-c', _WORKER, 'no-auto', 'node']
  seen = _observed(_run_pair([command, command], launcher, _free_port()))
  for process in seen:
    assert not process['joined'] and not process['client'], process
    assert process['coordinator'] is None, process
    assert process['visible_gpus'] == 'all', process
    assert (process['process_index'], process['process_count'],
            process['device_count'], process['gathered']) == (0, 1, 1, [0]), process


@pytest.mark.parametrize('flag', [None, '--noauto_distributed'])
def test_main_joins_under_slurm_unless_told_not_to(tmp_path, flag):
  """main.py itself, with two tasks on a node that SLURM gave one GPU. With nothing added
  it joins them (docs/multi_gpu.md), each logs its device report, and both
  refuse the run before any work: 2 devices where the launcher allocated 1.
  `--noauto_distributed` (absl's spelling of a false boolean flag) keeps them apart, two
  runs of one device: no count to check, and each stops with the one-line error of a
  predict command whose images and workdir do not exist."""
  def command(rank: int) -> list[str]:
    return [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=predict',
            f'--workdir={tmp_path / "missing"}', f'--images={tmp_path}/*.jpg',
            f'--output={tmp_path / f"p{rank}.json"}', *([flag] if flag else [])]
  results = _run_pair([command(0), command(1)], 'slurm', _free_port(),
                      extra={'SLURM_GPUS_ON_NODE': '1'})
  for rank, (code, _, stderr) in enumerate(results):
    assert code == 1 and 'Traceback' not in stderr, stderr[-3000:]
    error = stderr.strip().splitlines()[-1]
    if flag is None:
      assert f'Process {rank} of 2: backend cpu, device kind cpu, 1 local and 2 global' in stderr
      assert error.startswith('error: the run sees 2 cpu devices (2 processes, 1 on this one)'
                              ), error
      assert 'allocated 1 (SLURM_GPUS_ON_NODE=1 x SLURM_STEP_NUM_NODES=1)' in error, error
      assert '--devices_per_process=task' in error, error  # the fix
    else:
      assert 'Process 0 of 1: backend cpu, device kind cpu, 1 local and 1 global' in stderr
      assert error.startswith('error: No image matches --images='), error  # predict's own


def _slurm_job(nodes: int, tasks_per_node: int, gpus_per_node: int, rank: int,
               **extra: str) -> dict[str, str]:
  """The variables `srun` gives task `rank` of a job of 8-GPU nodes (gres binding: each
  task sees its node's GPUs unless `extra` binds them)."""
  return {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': f'gpu[1-{nodes}]',
          'SLURM_NTASKS': str(nodes * tasks_per_node), 'SLURM_PROCID': str(rank),
          'SLURM_LOCALID': str(rank % tasks_per_node), 'SLURM_STEP_NUM_NODES': str(nodes),
          'SLURM_NNODES': str(nodes), 'SLURM_GPUS_ON_NODE': str(gpus_per_node),
          'CUDA_VISIBLE_DEVICES': ','.join(map(str, range(gpus_per_node))), **extra}


def _ompi_job(size: int, local_size: int, rank: int, **extra: str) -> dict[str, str]:
  return {'OMPI_MCA_orte_hnp_uri': '1.0;tcp://10.0.0.1:1', 'OMPI_COMM_WORLD_SIZE': str(size),
          'OMPI_COMM_WORLD_RANK': str(rank), 'OMPI_COMM_WORLD_LOCAL_SIZE': str(local_size),
          'OMPI_COMM_WORLD_LOCAL_RANK': str(rank % local_size), **extra}


_EIGHT = tuple(range(8))
# (environment, --devices_per_process, local device ids, expected global devices)
_PLANS = {
    # the documented recipe (docs/multi_gpu.md): 4 nodes x 8 GPUs, one task per node ->
    # all 8 each, 32 in all
    'slurm 1 task/node': (_slurm_job(4, 1, 8, 2), 'node', _EIGHT, 32),
    # SLURM_GPUS_PER_NODE (type:count) where SLURM_GPUS_ON_NODE and CUDA's list are absent
    'slurm gpus-per-node only': (
        {k: v for k, v in _slurm_job(4, 1, 8, 2, SLURM_GPUS_PER_NODE='h100:8').items()
         if k not in ('SLURM_GPUS_ON_NODE', 'CUDA_VISIBLE_DEVICES')}, 'node', _EIGHT, 32),
    # 4 nodes x 8 tasks, each its local rank's GPU (JAX's own default), 32 in all
    'slurm 1 task/gpu': (_slurm_job(4, 8, 8, 13), 'task', (5,), 32),
    # --gpus-per-task=1: SLURM shows the task only its GPU, which CUDA numbers 0
    'slurm 1 task/gpu bound': (_slurm_job(4, 8, 8, 13, CUDA_VISIBLE_DEVICES='5'), 'task',
                               (0,), 32),
    # no GPU count at all: every GPU the process sees, nothing to check
    'slurm no gpus named': ({k: v for k, v in _slurm_job(2, 1, 8, 0).items()
                             if k not in ('SLURM_GPUS_ON_NODE', 'CUDA_VISIBLE_DEVICES')},
                            'node', None, None),
    'ompi 1 task/node': (_ompi_job(2, 1, 1, CUDA_VISIBLE_DEVICES='0,1,2,3'), 'node',
                         (0, 1, 2, 3), 8),
    'ompi 1 task/gpu': (_ompi_job(16, 8, 11), 'task', (3,), 16),
    'JAX_LOCAL_DEVICE_IDS wins': (_slurm_job(4, 1, 8, 0, JAX_LOCAL_DEVICE_IDS='0,1'), 'node',
                                  (0, 1), 32),
    'no launcher': ({'CUDA_VISIBLE_DEVICES': '0,1'}, 'node', None, None),
}


@pytest.mark.parametrize('name', sorted(_PLANS))
def test_launch_plan_gives_each_layout_its_gpus_and_count(name):
  environ, per_process, ids, expected = _PLANS[name]
  plan = distributed.launch_plan(environ, per_process)
  assert (plan.local_device_ids, plan.expected_devices) == (ids, expected), plan


def test_launch_plan_refuses_a_task_whose_local_rank_has_no_gpu():
  environ = _slurm_job(1, 4, 2, 3)  # 4 tasks on a node that SLURM gave 2 GPUs
  with pytest.raises(distributed.LauncherError,
                     match=r'SLURM_LOCALID=3 but CUDA_VISIBLE_DEVICES lists 2 GPUs'):
    distributed.launch_plan(environ, 'task')
  with pytest.raises(distributed.LauncherError, match='try --devices_per_process=node'):
    distributed.launch_plan(environ, 'gpu')


def test_main_refuses_devices_per_process_in_a_run_of_one_process(tmp_path, capsys):
  """The layout flag means something only where several processes join: set on a lone
  process it is refused before any work, not ignored."""
  from tests.tiny import run_main
  output = tmp_path / 'p.json'
  code = run_main('--mode=predict', f'--workdir={tmp_path / "none"}',
                  f'--images={tmp_path}/*.jpg', f'--output={output}',
                  '--devices_per_process=task')
  stderr = capsys.readouterr().err
  assert code == 1, stderr[-2000:]
  assert 'error: --devices_per_process=task chooses the GPUs' in stderr
  assert 'leave the flag out' in stderr and 'Traceback' not in stderr
  assert not output.exists()

