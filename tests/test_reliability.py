"""Interrupted runs lose nothing: exact resume after SIGKILL, a checkpoint on SIGTERM/SIGINT,
a stop without saving on a non-finite loss; bad input is refused before any work.

The uninterrupted reference (conftest's `reference_run`) and the SIGTERM/SIGINT runs train
in a test process (a thread sends the signal to it); the SIGKILL run is a real main.py
process, resumed in the test process.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pix2seq_jax.evaluation import evaluator
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.train import checkpoints, loop, preemption, step as step_lib
from tests.tiny import REFERENCE_STEPS as STEPS
from tests.tiny import ROOT, main_command, main_config, run_main, tiny_config


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


def _wait_for_checkpoints(workdir: str, count: int, alive=lambda: True) -> None:
  deadline = time.time() + 300
  while len(_steps_saved(workdir)) < count:
    assert alive(), 'the run ended before its checkpoint appeared'
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.02)


def _assert_same_run(workdir: str, reference: str) -> None:
  """Every step's loss and the final parameters equal the reference run's, exactly."""
  assert _losses(workdir) == _losses(reference)
  assert sorted(_losses(workdir)) == list(range(1, STEPS + 1))
  jax.tree.map(np.testing.assert_array_equal, _final_state(workdir, STEPS),
               _final_state(reference, STEPS))


@pytest.fixture(scope='module')
def uninterrupted(reference_run):
  """main_command's run of STEPS steps, trained in a test process without interruption."""
  return reference_run


@pytest.fixture(scope='module')
def killed_and_resumed(tmp_path_factory, shapes_dir, uninterrupted):
  """A main.py run killed with SIGKILL mid-run (a checkpoint every step: the kill most
  likely lands inside a save), then resumed by the same run in this process."""
  workdir = str(tmp_path_factory.mktemp('killed') / 'run')
  command = main_command(workdir, shapes_dir, steps=STEPS, checkpoint_every=1)
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoints(workdir, 3, alive=lambda: process.poll() is None)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert process.returncode == -signal.SIGKILL
  killed_at = _steps_saved(workdir)
  assert killed_at and killed_at[-1] < STEPS, killed_at
  loop.train_and_evaluate(main_config(shapes_dir, steps=STEPS, checkpoint_every=STEPS),
                          workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line)['step'] for line in f if '"loss"' in line]
  # Resumed, not restarted: only a step logged after the last complete save runs twice.
  assert len(logged) - len(set(logged)) <= 1, logged
  return workdir


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(killed_and_resumed,
                                                                       uninterrupted):
  _assert_same_run(killed_and_resumed, uninterrupted)


@pytest.mark.slow
def test_main_predicts_with_the_resumed_workdir(killed_and_resumed, shapes_dir, tmp_path):
  output, drawn = str(tmp_path / 'p.json'), str(tmp_path / 'drawn')
  run = _run(main_command(killed_and_resumed, shapes_dir, 1, 1)[:2] + [
      '--mode=predict', f'--workdir={killed_and_resumed}', f'--images={shapes_dir}/val/*.jpg',
      f'--output={output}', f'--draw_dir={drawn}'])
  assert run.returncode == 0, run.stderr[-3000:]
  with open(output) as f:
    assert len(json.load(f)) == 6
  assert len(os.listdir(drawn)) == 6


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_the_current_step_and_stop(uninterrupted, shapes_dir, tmp_path,
                                                           signum):
  workdir = str(tmp_path / 'preempted')
  config = main_config(shapes_dir, steps=STEPS, checkpoint_every=3)
  sender = threading.Thread(target=lambda: (_wait_for_checkpoints(workdir, 1),
                                            os.kill(os.getpid(), signum)))
  sender.start()
  with pytest.raises(preemption.Preempted) as stopped:
    loop.train_and_evaluate(config, workdir)
  sender.join()
  assert stopped.value.exit_code == 128 + signum  # what main.py exits with
  stopped_at = _steps_saved(workdir)[-1]
  assert 3 <= stopped_at < STEPS
  assert (f'{signal.Signals(signum).name} received: saved the checkpoint of step '
          f'{stopped_at}') in str(stopped.value)
  assert max(_losses(workdir)) == stopped_at  # it stopped right after the saved step
  assert signal.getsignal(signum) is not None  # the previous handler is back
  if signum == signal.SIGTERM:  # the same command resumes it to the reference's end
    loop.train_and_evaluate(config, workdir)
    _assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_non_finite_loss_stops_and_saves_nothing(shapes_dir, tmp_path):
  config = tiny_config(shapes_dir)
  config.train.learning_rate = 1e30  # the first update overflows the parameters
  config.train.warmup_steps = 0
  config.train.steps = 6
  config.train.log_every = 100
  config.train.checkpoint_every = 3
  workdir = str(tmp_path / 'diverged')
  with pytest.raises(FloatingPointError) as error:
    loop.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert 'Non-finite' in message and 'at step 3' in message
  assert 'last good checkpoint is none' in message
  assert _steps_saved(workdir) == []


def test_a_checkpoint_of_another_model_is_refused_naming_the_shapes(tiny_workdir, shapes_dir):
  config = tiny_config(shapes_dir)
  config.data.num_bins = 80  # the checkpoint was written with 64 bins
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    evaluator.evaluate_checkpoint(config, tiny_workdir)
  message = str(error.value)
  found = re.search(r'params/decoder/embed/embedding/value: checkpoint \((\d+), 128\) vs config '
                    r'\((\d+), 128\)', message)
  assert found, message
  assert int(found.group(2)) - int(found.group(1)) == 80 - 64  # the extra coordinate bins
  assert 'config.json' in message
  config = tiny_config(shapes_dir)
  config.model.variant = 'vit_tiny'
  with pytest.raises(checkpoints.CheckpointMismatchError, match='only in the checkpoint'):
    evaluator.evaluate_checkpoint(config, tiny_workdir)


def test_every_random_draw_follows_the_seed(shapes_dir):
  """Dropout, DropPath, flips and sequence noise on. Everything built anew from the same
  config trains identically; the train step's seed alone (same start, same batches)
  changes the losses through its dropout draws; the config's seed changes the batches
  and the initial parameters."""
  config = tiny_config(shapes_dir)
  # The smallest model: its encoder and decoder hold every random draw a model makes (the
  # tiny ResNet adds none) and its train step, traced three times here, traces fastest.
  config.model.variant = 'vit_nano'
  assert config.model.dropout == config.model.drop_path == 0.1

  def run(setup, step_fn):
    state, batches, losses = setup.create_state(), setup.train_batches(), []
    for index in range(3):
      state, metrics = step_fn(state, mesh_lib.put_batch(next(batches), setup.mesh), index)
      losses.append(float(metrics['loss']))
    return losses, jax.device_get(state)

  setup = loop.make_setup(config)
  first, a = run(setup, setup.train_step)
  again = loop.make_setup(config)
  second, b = run(again, again.train_step)
  assert first == second
  jax.tree.map(np.testing.assert_array_equal, a, b)

  config.seed = 1
  reseeded = loop.make_setup(config)
  step_seed_only = step_lib.train_step_for(reseeded.config, setup.graphdef, setup.mesh,
                                           setup.tx)
  assert run(setup, step_seed_only)[0] != first
  batch0, batch1 = next(setup.train_batches()), next(reseeded.train_batches())
  assert not np.array_equal(batch0['image'], batch1['image'])
  init0, init1 = jax.device_get((setup.create_state().params, reseeded.create_state().params))
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(init0),
                                                       jax.tree.leaves(init1)))


@pytest.mark.parametrize('override, message', [
    ('--config.model.variant=r101', "config.model.variant='r101' is unknown; choose one of"),
    ('--config.data.train_annotations={bad_json}', 'bad.json: not valid JSON'),
])
def test_main_refuses_bad_input_before_any_work(shapes_dir, tmp_path, capsys, override, message):
  bad_json = tmp_path / 'bad.json'
  bad_json.write_text('{"images": [')
  workdir = str(tmp_path / 'run')
  command = main_command(workdir, shapes_dir, steps=2, checkpoint_every=1)[2:]
  if 'annotations' in override:
    command = [c for c in command if not c.startswith('--config.data.shapes_')]
    command += ['--config.data.source=coco_files', f'--config.data.train_images={shapes_dir}',
                f'--config.data.val_images={shapes_dir}',
                f'--config.data.val_annotations={bad_json}']
  code = run_main(*command, override.format(bad_json=bad_json))
  stderr = capsys.readouterr().err
  assert code == 1, stderr[-3000:]
  assert 'error: ' in stderr and message in stderr, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert not os.path.exists(workdir)  # refused before anything was written


@pytest.mark.parametrize('argv, message', [
    (['--config={root}/configs/coco.py', '--config.train.steps=20'],
     'keep one: --config.train.epochs=0 for 20 steps'),
    (['--mode=predict', '--config={root}/configs/shapes.py', '--config.data.image_size=128',
      '--images=x.jpg', '--output=p.json'], '--config.data.image_size has no effect in '
     '--mode=predict'),
])
def test_main_refuses_a_setting_it_would_ignore(tmp_path, capsys, argv, message):
  workdir = str(tmp_path / 'run')
  code = run_main(*[a.format(root=ROOT) for a in argv], f'--workdir={workdir}')
  stderr = capsys.readouterr().err
  assert code == 1 and message in stderr, stderr[-3000:]
  assert not os.path.exists(workdir)


def test_a_save_cut_short_leaves_the_previous_checkpoint_as_latest(tiny_workdir, shapes_dir,
                                                                  tmp_path):
  """What a kill mid-save leaves (orbax writes into `<step>.orbax-checkpoint-tmp` and
  renames it only once complete) is ignored: the latest readable step is restored."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_workdir, workdir)
  partial = os.path.join(workdir, 'checkpoints', '4.orbax-checkpoint-tmp', 'default')
  os.makedirs(partial)
  with open(os.path.join(partial, '_METADATA'), 'w') as f:
    f.write('{"tree_metadata": {')  # cut off mid-write
  setup = loop.make_setup(tiny_config(shapes_dir))
  manager = checkpoints.make_manager(workdir)
  assert manager.latest_step() == 2
  state = checkpoints.restore(manager, setup.abstract_state())
  assert int(state.step) == 2
  manager.close()
