"""Two processes with two CPU devices each train as one process does.

Real `main.py` runs joined by `jax.distributed.initialize` on localhost: each process
reads its rows of every global batch, the state is sharded over all four devices, a
SIGTERM sent to process 1 alone stops both at the same step with one collective
checkpoint (the processes agree on signals every `train.preemption_check_every` steps and
at saves, not every step: the test counts these collectives), the same command resumes
from it, evaluation decodes each process's slice
and gathers it, and only process 0 writes logs and metrics. The reference is the same
run in a test process on one device (conftest's `reference_run`; test_train checks 1 and 8
devices, and 4 with the state sharded, step by step).
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Callable

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from tests import tiny
from tests.tiny import REFERENCE_STEPS as STEPS
from tests.tiny import ROOT, main_command

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _logged(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _losses(log):
  return [e['loss'] for e in log if 'loss' in e]


def _trained(workdir: str, steps: int) -> bool:
  """Whether process 0 has logged the loss of step `steps` (a line still being written
  is not read)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    lines = [line for line in f if line.endswith('\n')]
  return any('"loss"' in line and json.loads(line)['step'] >= steps for line in lines)


def _detections_by_image(workdir: str) -> dict[int, list[dict]]:
  """The final evaluation's detections, per image id, each image's in decoding order."""
  with open(os.path.join(workdir, 'eval', f'step_{STEPS}', 'detections.json')) as f:
    detections = json.load(f)
  by_image = {}
  for d in detections:
    by_image.setdefault(d['image_id'], []).append(d)
  return dict(sorted(by_image.items()))


def _agreements(runs) -> tuple[int, int, int]:
  """(collectives, first step, last step) that both processes logged agreeing on signals."""
  counts = set()
  for _, err in runs:
    found = re.findall(r'Agreed on signals (\d+) times over steps (\d+)-(\d+)', err)
    assert len(found) == 1, err[-2000:]
    counts.add(tuple(int(x) for x in found[0]))
  assert len(counts) == 1, counts
  return counts.pop()


def _two_processes(command, signal_process_1_when: Callable[[], bool] | None = None):
  """Runs `command` as processes 0 and 1 of 2 (2 CPU devices each); with
  `signal_process_1_when`, sends SIGTERM to process 1 once it returns True.
  Returns [(exit code, stderr)] per process."""
  address = f'localhost:{_free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  # Output goes to files: a full pipe would stop one process while the other waits for it.
  logs = [tempfile.TemporaryFile('w+') for _ in range(2)]
  with tiny.killed_at_exit([]) as processes:
    for i in range(2):
      processes.append(subprocess.Popen(
          command + [f'--coordinator_address={address}', '--num_processes=2',
                     f'--process_id={i}'],
          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logs[i], text=True))

    def signal_later():
      deadline = time.time() + 600
      while not signal_process_1_when() and time.time() < deadline:
        if processes[1].poll() is not None:
          return
        time.sleep(0.02)
      processes[1].send_signal(signal.SIGTERM)

    # A daemon: should a wait below fail, the processes are killed and the thread ends.
    sender = (threading.Thread(target=signal_later, daemon=True) if signal_process_1_when
              else None)
    if sender:
      sender.start()
    codes = [p.wait(timeout=900) for p in processes]
    if sender:
      sender.join()
  errors = []
  for log in logs:
    log.seek(0)
    errors.append(log.read())
    log.close()
  return list(zip(codes, errors))


def test_two_processes_of_two_devices_equal_one_process(reference_run, shapes_dir, tmp_path):
  reference = reference_run  # tiny.reference_config: evaluated on 6 images, as below
  config = tiny.frozen(tiny.reference_config(shapes_dir))
  vocab = vocab_lib.for_categories('compact', range(1, 10), config.data.num_bins)  # shapes'
  four = jax.sharding.AbstractMesh((4,), (mesh_lib.DATA_AXIS,))
  arrays = jax.tree.leaves(nnx.state(build.abstract_model(config, vocab)))
  # shard_params below splits at least one array over the four devices
  assert any(mesh_lib.leaf_sharding(x.shape, four, shard=True).spec != P() for x in arrays)
  multi = str(tmp_path / 'multi')
  # Saved only on the signal and at the end: each collective save costs both processes.
  every = 3  # agreements on a signal after steps 3 and 6, and at the save of step 8
  command = main_command(multi, shapes_dir, steps=STEPS, checkpoint_every=STEPS) + [
      '--config.eval.max_images=6', '--config.train.shard_params=True',
      f'--config.train.preemption_check_every={every}']
  stopped = _two_processes(command, lambda: _trained(multi, 2))
  for code, err in stopped:
    assert code == 128 + signal.SIGTERM, err[-3000:]
  saved = sorted(int(d) for d in os.listdir(os.path.join(multi, 'checkpoints')) if d.isdigit())
  assert len(saved) == 1, saved  # the signal's save
  stopped_at = saved[-1]
  assert 2 <= stopped_at < STEPS and stopped_at % every == 0, saved
  for _, err in stopped:  # process 0 stopped too, at the step process 1 did
    assert f'SIGTERM received: saved the checkpoint of step {stopped_at}' in err, err[-2000:]
  # One collective per `every` steps; none at the other steps.
  assert _agreements(stopped) == (stopped_at // every, 1, stopped_at)

  resumed = _two_processes(command)
  for code, err in resumed:
    assert code == 0, err[-3000:]
  assert 'Process 1 of 2' in resumed[1][1] and '2 local and 4 global devices' in resumed[1][1]
  # Steps 6 (if the run stopped at 3) and 8 (the save), then 8 again after the last step.
  agreed_at = [s for s in range(stopped_at + 1, STEPS + 1) if s % every == 0 or s == STEPS]
  assert _agreements(resumed) == (len(agreed_at) + 1, stopped_at + 1, STEPS)
  assert 'Resumed from' in resumed[0][1] and f'at step {stopped_at}' in resumed[0][1]

  one, two = _logged(reference), _logged(multi)
  assert len(_losses(two)) == STEPS  # one writer: process 0, each step once
  np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-4)
  final = lambda log: [e for e in log if 'eval/val_loss' in e][-1]
  np.testing.assert_allclose(final(two)['eval/val_loss'], final(one)['eval/val_loss'],
                             rtol=1e-4)
  # Every process's slice was gathered, each image's detections under its own id: the
  # same objects, scores and boxes as one process found (an 8-step model's AP is 0 on
  # both sides, so the metrics alone would prove nothing).
  detections = [_detections_by_image(run) for run in (multi, reference)]
  assert detections[0].keys() == detections[1].keys() and len(detections[1]) >= 3
  for image_id, found in detections[1].items():
    got = detections[0][image_id]
    assert [d['category_id'] for d in got] == [d['category_id'] for d in found], image_id
    np.testing.assert_allclose([d['score'] for d in got], [d['score'] for d in found],
                               rtol=1e-3)
    np.testing.assert_allclose([d['bbox'] for d in got], [d['bbox'] for d in found],
                               atol=1e-2)
  assert STEPS in [int(d) for d in os.listdir(os.path.join(multi, 'checkpoints'))
                   if d.isdigit()]
