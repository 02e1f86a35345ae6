"""Two processes with two CPU devices each train as one process with four devices.

Real `main.py` runs joined by `jax.distributed.initialize` on localhost: each process
reads its rows of every global batch, the checkpoint is written collectively, evaluation
decodes each process's slice and gathers it, and only process 0 writes logs and metrics.
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


def test_two_processes_of_two_devices_equal_one_process_of_four(shapes_dir, tmp_path):
  single = str(tmp_path / 'single')
  out = subprocess.run(_command(single, shapes_dir), cwd=ROOT, env=_env(4),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]

  multi = str(tmp_path / 'multi')
  address = f'localhost:{_free_port()}'
  processes = [subprocess.Popen(
      _command(multi, shapes_dir) + [f'--coordinator_address={address}', '--num_processes=2',
                                     f'--process_id={i}'],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=900)[1] for p in processes]
  for p, err in zip(processes, errors):
    assert p.returncode == 0, err[-3000:]
  assert 'Process 1 of 2; 2 local and 4 global devices.' in errors[1]

  one, two = _logged(single), _logged(multi)
  losses = lambda log: [e['loss'] for e in log if 'loss' in e]
  assert len(losses(two)) == STEPS  # one writer: process 0
  np.testing.assert_allclose(losses(two), losses(one), rtol=1e-4)
  final = lambda log: next(e for e in log if 'eval/AP' in e)
  for key in ('eval/AP', 'eval/AR100', 'eval/val_loss'):
    np.testing.assert_allclose(final(two)[key], final(one)[key], rtol=1e-3, atol=1e-6)
  with open(os.path.join(multi, 'eval', f'step_{STEPS}', 'detections.json')) as f:
    detections = json.load(f)
  with open(os.path.join(single, 'eval', f'step_{STEPS}', 'detections.json')) as f:
    assert len(detections) == len(json.load(f))  # every process's slice was gathered
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['2', '4']
