"""Two processes with two CPU devices each train as one process with four devices.

Real `main.py` runs joined by `jax.distributed.initialize` on localhost: each process
reads its rows of every global batch, the state is sharded over all four devices, the
checkpoint is written collectively and resumed from, evaluation decodes each process's
slice and gathers it, and only process 0 writes logs and metrics.
"""

import json
import os
import socket
import subprocess

import numpy as np
import pytest

from tests.conftest import ROOT, main_command

pytestmark = pytest.mark.slow

STEPS = 4


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _logged(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _command(workdir, shapes_dir):
  return main_command(workdir, shapes_dir, steps=STEPS, checkpoint_every=2) + [
      '--config.eval.max_images=6']


def _run(command, devices):
  out = subprocess.run(command, cwd=ROOT, env=_env(devices), capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


@pytest.fixture(scope='module')
def single(shapes_dir, tmp_path_factory):
  """One process with four devices, replicated state: the reference run."""
  workdir = str(tmp_path_factory.mktemp('single'))
  _run(_command(workdir, shapes_dir), 4)
  return workdir


def _losses(log):
  return [e['loss'] for e in log if 'loss' in e]


def _two_processes(command):
  address = f'localhost:{_free_port()}'
  processes = [subprocess.Popen(
      command + [f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=900)[1] for p in processes]
  for p, err in zip(processes, errors):
    assert p.returncode == 0, err[-3000:]
  return errors


def test_two_processes_of_two_devices_equal_one_process_of_four(single, shapes_dir, tmp_path):
  """The two processes also shard the state (train.shard_params) and stop halfway: the
  resumed run restores each process's shards of the collectively written checkpoint."""
  multi = str(tmp_path / 'multi')
  sharded = '--config.train.shard_params=True'
  _two_processes(main_command(multi, shapes_dir, steps=2, checkpoint_every=2) + [
      '--config.eval.max_images=6', sharded])
  errors = _two_processes(_command(multi, shapes_dir) + [sharded])
  assert 'Process 1 of 2; 2 local and 4 global devices.' in errors[1]
  assert 'Resumed from' in errors[0] and 'at step 2' in errors[0]

  one, two = _logged(single), _logged(multi)
  assert len(_losses(two)) == STEPS  # one writer: process 0
  np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-4)
  final = lambda log: [e for e in log if 'eval/AP' in e][-1]
  for key in ('eval/AP', 'eval/AR100', 'eval/val_loss'):
    np.testing.assert_allclose(final(two)[key], final(one)[key], rtol=1e-3, atol=1e-6)
  with open(os.path.join(multi, 'eval', f'step_{STEPS}', 'detections.json')) as f:
    detections = json.load(f)
  with open(os.path.join(single, 'eval', f'step_{STEPS}', 'detections.json')) as f:
    assert len(detections) == len(json.load(f))  # every process's slice was gathered
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['2', '4']
