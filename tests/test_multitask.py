"""Multi-task training (Pix2Seq-v2: `config.tasks`) on real coco_mini: detection,
instance segmentation and captioning learned by one model. The config checks; each task
seen through its own config; a step's loss the weighted sum of the tasks' losses, logged
per task; the same per-task losses on 1 device and on 4 devices with gradient
accumulation; every task evaluated; a run killed with SIGKILL resumed to equal an
uninterrupted one.

The config and the fixed-batch steps live in tests/multi_device_run.py (no TensorFlow
there), whose `--multitask` run gives the 4-device half in a subprocess. The tests share
the session's multi-task run (conftest.multitask_run) with test_predict_tasks and the
notebook's multi-task test: one xdist group, so one worker trains it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pix2seq_jax.config import checks, multitask, resolve
from pix2seq_jax.evaluation import caption_metrics
from pix2seq_jax.train import loop
from tests import multi_device_run
from tests.tiny import ROOT, killed_at_exit, shared_path

pytestmark = pytest.mark.xdist_group('multitask_run')

STEPS = multi_device_run.MULTITASK_STEPS
WEIGHTS = multi_device_run.MULTITASK_WEIGHTS
TASKS = tuple(WEIGHTS)


@pytest.fixture
def config(mini_tokenizer):
  return multi_device_run.multitask_config(shared_path('coco_mini'), mini_tokenizer)


@pytest.fixture
def no_meteor(monkeypatch):
  """METEOR's Java process takes seconds to start; these runs check the other metrics."""
  monkeypatch.setattr(caption_metrics, '_meteor', lambda gts, res: 0.0)


def test_each_task_reads_its_own_config(config):
  views = multitask.task_configs(resolve.resolve(config))
  assert list(views) == list(TASKS)
  assert {name: view.task for name, view in views.items()} == {t: t for t in TASKS}
  assert views['instance_segmentation'].data.max_points == 4
  assert views['captioning'].data.max_text_len == 12
  assert views['object_detection'].data.noise_objects  # config.data, untouched
  # One decoder for every task: the longest sequence (detection's 2 * 5 + 1 = 11 < 13).
  assert {view.model.max_seq_len for view in views.values()} == {13}
  assert all(len(view.tasks) == 0 for view in views.values())


@pytest.mark.parametrize('change, message', [
    (lambda c: c.tasks.update({'panoptic': {'weight': 1.0}}), 'tasks.panoptic: unknown task'),
    (lambda c: setattr(c.tasks.captioning, 'weight', 0.0), 'weight=0.0 must be a positive'),
    (lambda c: c.tasks.captioning.data.update({'colour': 1}), 'data.colour is not a data field'),
    (lambda c: c.tasks.captioning.data.update({'image_size': 32}), 'same canvas'),
    (lambda c: setattr(c, 'task', 'keypoint_detection'), 'count train.epochs'),
    (lambda c: setattr(c.model, 'vocabulary', 'official'), 'official_multitask'),
    (lambda c: setattr(c.tasks.instance_segmentation.data, 'noise_objects', True),
     'tasks.instance_segmentation: config.data.noise_objects'),
    (lambda c: setattr(c.tasks.captioning.data, 'tokenizer', ''),
     'tasks.captioning: config.data.tokenizer is empty'),
])
def test_config_checks_name_the_task_and_the_fix(config, change, message):
  change(config)
  with pytest.raises(checks.ConfigError, match=message):
    checks.validate(config, devices=1)


def test_decode_settings_without_detection_are_refused(config):
  del config.tasks.object_detection
  config.task = 'captioning'
  checks.validate(config, devices=1)
  with pytest.raises(checks.ConfigError, match='decode settings are object detection'):
    checks.validate(config, devices=1, overrides=['decode.temperature'])


@pytest.fixture(scope='module')
def setup_and_batch(mini_tokenizer):
  config = multi_device_run.multitask_config(shared_path('coco_mini'), mini_tokenizer)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  setup = loop.make_setup(config, mesh=mesh)
  return config, setup, next(setup.train_batches())


def test_a_batch_holds_one_batch_of_each_task(setup_and_batch):
  _, _, batch = setup_and_batch
  assert set(batch) == set(TASKS)
  assert batch['object_detection']['input_tokens'].shape == (4, 11)
  assert batch['instance_segmentation']['input_tokens'].shape == (4, 2, 13)
  assert batch['captioning']['input_tokens'].shape == (4, 2, 12)
  assert batch['captioning']['input_tokens'][0, 0, 0] in (13, 30)  # prompt, or dropped
  # Each task's stream is seeded apart: the tasks' first images differ.
  ids = [tuple(batch[t]['image_id']) for t in TASKS]
  assert len(set(ids)) == len(ids)


@pytest.fixture(scope='module')
def one_device(setup_and_batch):
  config, setup, batch = setup_and_batch
  return multi_device_run.multitask_losses(config, setup.vocab, batch, 1)


def test_the_loss_is_the_weighted_sum_of_the_tasks_losses(one_device):
  for metrics in one_device:
    assert metrics['loss'] == pytest.approx(
        sum(WEIGHTS[t] * metrics[f'loss_{t}'] for t in TASKS), rel=1e-5)
  first, last = one_device[0], one_device[-1]
  assert all(last[f'loss_{t}'] < first[f'loss_{t}'] for t in TASKS), one_device


def test_four_devices_and_two_micro_batches_give_the_same_per_task_losses(
    setup_and_batch, one_device, tmp_path):
  """The step on 4 devices, each task's batch split in two micro-batches (its loss
  normalised by the whole batch's weights), against the one-device one-batch step."""
  config, setup, batch = setup_and_batch
  np.savez(tmp_path / 'batch.npz', **{f'{t}/{k}': v for t, fields in batch.items()
                                      for k, v in fields.items()})
  with open(tmp_path / 'run.json', 'w') as f:
    json.dump({'coco_dir': config.data.coco_dir,
               'tokenizer': config.tasks.captioning.data.tokenizer,
               'category_ids': list(setup.categories.category_ids)}, f)
  out = str(tmp_path / 'losses.json')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=' '.join(
      [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=4']).strip())
  run = subprocess.run([sys.executable, '-m', 'tests.multi_device_run', '--multitask',
                        str(tmp_path), out], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(out) as f:
    four = json.load(f)
  for got, want in zip(four, one_device):
    assert set(got) == {'loss', *(f'loss_{t}' for t in TASKS)}
    for key in want:
      assert got[key] == pytest.approx(want[key], rel=1e-4), key


def _logged(workdir: str) -> dict[int, dict[str, float]]:
  """step -> its loss metrics from metrics.jsonl (a step logged again keeps its later
  values, which must equal the earlier)."""
  logged = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for entry in map(json.loads, f):
      if 'loss' in entry:
        losses = {k: v for k, v in entry.items() if k.startswith('loss')}
        assert logged.setdefault(entry['step'], losses) == losses, entry['step']
  return logged


KILL_STEPS = multi_device_run.MULTITASK_RUN_STEPS


def _saved_steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(
      folder) else []


def _config_file(folder, coco_dir: str, tokenizer: str) -> str:
  """A config file of multi_device_run.multitask_config for main.py."""
  path = os.path.join(folder, 'multitask_test_config.py')
  with open(path, 'w') as f:
    f.write('from tests import multi_device_run\n\n\ndef get_config():\n'
            f'  config = multi_device_run.multitask_config({coco_dir!r}, {tokenizer!r})\n'
            f'  config.train.steps = {KILL_STEPS}\n  return config\n')
  return path


def test_an_uninterrupted_run_evaluates_every_task(multitask_run):
  workdir, final = multitask_run
  assert {key.split('/')[0] for key in final} == set(TASKS)
  assert {'object_detection/AP', 'instance_segmentation/AP', 'captioning/CIDEr',
          'captioning/val_loss'} <= set(final)
  for name in TASKS:
    assert os.path.exists(os.path.join(workdir, name, 'eval', f'step_{KILL_STEPS}',
                                       'metrics.json'))
  with open(os.path.join(workdir, 'data_report.json')) as f:
    assert set(json.load(f)) == set(TASKS)


def test_a_multitask_run_killed_and_resumed_equals_an_uninterrupted_one(
    config, multitask_run, tmp_path, no_meteor):
  uninterrupted, final = multitask_run
  config.train.steps = KILL_STEPS
  workdir = str(tmp_path / 'killed')
  config_path = _config_file(tmp_path, config.data.coco_dir,
                             config.tasks.captioning.data.tokenizer)
  command = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config_path}',
             f'--workdir={workdir}']
  with killed_at_exit([subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)]) as (process,):
    while len(_saved_steps(workdir)) < 2:
      assert process.poll() is None, 'the run ended before its second checkpoint'
      time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  assert _saved_steps(workdir)[-1] < KILL_STEPS, _saved_steps(workdir)
  resumed = loop.train_and_evaluate(config, workdir)
  assert _logged(workdir) == _logged(uninterrupted)
  assert sorted(_logged(workdir)) == list(range(1, KILL_STEPS + 1))
  assert resumed == pytest.approx(final, rel=1e-12)
