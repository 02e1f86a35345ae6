"""Interrupted runs lose nothing: exact resume after SIGKILL, checkpoint on SIGTERM/SIGINT,
and a stop without saving on a non-finite loss."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pix2seq_jax import train
from tests.conftest import ROOT, main_command as _command, tiny_config


def _run(command, **kwargs):
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)


def _losses(workdir: str) -> dict[int, float]:
  """step -> loss from metrics.jsonl; a step logged twice (before a kill and after the
  resume) keeps the later value, and both must agree."""
  losses = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      entry = json.loads(line)
      if 'loss' in entry:
        step = entry['step']
        if step in losses:
          assert losses[step] == entry['loss'], f'step {step} differs after resuming'
        losses[step] = entry['loss']
  return losses


def _final_state(workdir: str, step: int):
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  return ocp.StandardCheckpointer().restore(path)


def _steps_saved(workdir: str) -> list[int]:
  folder = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def _start_and_signal(command, workdir, signum, after_checkpoints: int) -> subprocess.Popen:
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  deadline = time.time() + 300
  while len(_steps_saved(workdir)) < after_checkpoints:
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.02)
  process.send_signal(signum)
  return process


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, shapes_dir):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  out = _run(_command(workdir, shapes_dir, steps=16, checkpoint_every=1))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(
    uninterrupted, shapes_dir, tmp_path):
  workdir = str(tmp_path / 'killed')
  command = _command(workdir, shapes_dir, steps=16, checkpoint_every=1)
  # A checkpoint every step: the kill most likely lands inside a save.
  process = _start_and_signal(command, workdir, signal.SIGKILL, after_checkpoints=4)
  process.communicate()
  assert process.returncode == -signal.SIGKILL
  killed_at = _steps_saved(workdir)
  assert killed_at and killed_at[-1] < 16, killed_at
  out = _run(command)  # the same command resumes
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resumed from' in out.stderr

  reference, resumed = _losses(uninterrupted), _losses(workdir)
  assert sorted(resumed) == list(range(1, 17))
  assert resumed == reference  # every step's loss, exactly
  jax.tree.map(np.testing.assert_array_equal, _final_state(workdir, 16),
               _final_state(uninterrupted, 16))


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_the_current_step_and_exit(uninterrupted, shapes_dir, tmp_path,
                                                           signum):
  workdir = str(tmp_path / 'preempted')
  command = _command(workdir, shapes_dir, steps=16, checkpoint_every=5)
  process = _start_and_signal(command, workdir, signum, after_checkpoints=1)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 128 + signum, stderr[-3000:]
  saved = _steps_saved(workdir)
  stopped_at = saved[-1]
  assert 5 <= stopped_at < 16
  name = signal.Signals(signum).name
  assert f'{name} received: saved the checkpoint of step {stopped_at}' in stderr, (
      saved, stderr[-600:])
  assert max(_losses(workdir)) == stopped_at  # it stopped right after the saved step
  if signum == signal.SIGINT:
    return  # the same path as SIGTERM from here on: resumed once, below
  out = _run(command)
  assert out.returncode == 0, out.stderr[-3000:]
  assert _losses(workdir) == _losses(uninterrupted)
  jax.tree.map(np.testing.assert_array_equal, _final_state(workdir, 16),
               _final_state(uninterrupted, 16))


def test_non_finite_loss_stops_and_saves_nothing(shapes_dir, tmp_path):
  config = tiny_config(shapes_dir)
  config.train.learning_rate = 1e30  # the first update overflows the parameters
  config.train.warmup_steps = 0
  config.train.steps = 6
  config.train.log_every = 100
  config.train.checkpoint_every = 3
  workdir = str(tmp_path / 'diverged')
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert 'Non-finite' in message and 'at step 3' in message
  assert 'last good checkpoint is none' in message
  assert _steps_saved(workdir) == []


def test_a_checkpoint_of_another_model_is_refused_naming_the_shapes(tiny_workdir, shapes_dir):
  from pix2seq_jax import checkpoint
  config = tiny_config(shapes_dir)
  config.data.num_bins = 80  # the checkpoint was written with 64 bins
  with pytest.raises(checkpoint.CheckpointMismatchError) as error:
    train.evaluate_latest(config, tiny_workdir)
  message = str(error.value)
  found = re.search(r'params/decoder/embed/embedding/value: checkpoint \((\d+), 128\) vs config '
                    r'\((\d+), 128\)', message)
  assert found, message
  assert int(found.group(2)) - int(found.group(1)) == 80 - 64  # the extra coordinate bins
  assert 'config.json' in message
  config = tiny_config(shapes_dir)
  config.model.variant = 'vit_tiny'
  with pytest.raises(checkpoint.CheckpointMismatchError, match='only in the checkpoint'):
    train.evaluate_latest(config, tiny_workdir)


def test_two_runs_with_the_same_seed_give_identical_losses(shapes_dir):
  """Dropout, DropPath, flips and sequence noise on: every draw follows (seed, step).

  The train loop's own pieces (train.make_setup, the pipeline, the jitted step), compiled
  once; the SIGKILL test above compares whole processes.
  """
  from pix2seq_jax import sharding, train_step
  from pix2seq_jax.data import pipeline
  config = tiny_config(shapes_dir)
  config.model.drop_path = 0.1
  setup = train.make_setup(config, 'train')
  step_fn = train_step.make_train_step(config, setup.graphdef, setup.mesh, setup.tx)

  def run(seed):
    config.seed = seed
    state = train_step.create_train_state(config, setup.vocab, setup.mesh, setup.tx)
    batches = pipeline.train_batches(setup.splits.train, config.data, setup.vocab, seed=seed,
                                     local_batch_size=config.train.batch_size)
    losses = []
    for _ in range(4):
      state, metrics = step_fn(state, sharding.put_batch(next(batches), setup.mesh))
      losses.append(float(metrics['loss']))
    return losses, state

  (first, a), (second, b) = run(0), run(0)
  assert first == second
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
  assert run(1)[0] != first  # and the seed matters


@pytest.mark.parametrize('override, message', [
    ('--config.model.variant=r101', "config.model.variant='r101' is unknown; choose one of"),
    ('--config.data.train_annotations={bad_json}', 'bad.json: not valid JSON'),
])
def test_main_refuses_bad_input_before_any_work(shapes_dir, tmp_path, override, message):
  bad_json = tmp_path / 'bad.json'
  bad_json.write_text('{"images": [')
  workdir = str(tmp_path / 'run')
  command = _command(workdir, shapes_dir, steps=2, checkpoint_every=1)
  if 'annotations' in override:
    command += ['--config.data.source=coco_files', f'--config.data.train_images={shapes_dir}',
                f'--config.data.val_images={shapes_dir}',
                f'--config.data.val_annotations={bad_json}']
  out = _run(command + [override.format(bad_json=bad_json)])
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'error: ' in out.stderr and message in out.stderr, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert not os.path.exists(workdir)  # refused before anything was written


def test_a_save_cut_short_leaves_the_previous_checkpoint_as_latest(tiny_workdir, shapes_dir,
                                                                  tmp_path):
  """What a kill mid-save leaves (orbax writes into `<step>.orbax-checkpoint-tmp` and
  renames it only once complete) is ignored: the latest readable step is restored."""
  import shutil
  from pix2seq_jax import checkpoint
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_workdir, workdir)
  partial = os.path.join(workdir, 'checkpoints', '4.orbax-checkpoint-tmp', 'default')
  os.makedirs(partial)
  with open(os.path.join(partial, '_METADATA'), 'w') as f:
    f.write('{"tree_metadata": {')  # cut off mid-write
  config = tiny_config(shapes_dir)
  setup = train.make_setup(config, 'eval')
  manager = checkpoint.make_manager(workdir)
  assert manager.latest_step() == 2
  state = checkpoint.restore(manager, train._abstract_state(setup))
  assert int(state.step) == 2
  manager.close()
