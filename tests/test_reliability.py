"""Interrupted runs lose nothing: exact resume after SIGKILL, a checkpoint on SIGTERM/SIGINT
(a second SIGINT stops at once), a stop without saving on a non-finite loss or gradient;
bad input, and a checkpoint of another model, are refused before any work.

The uninterrupted reference (conftest's `reference_run`) trains in a test process; the
SIGKILL, SIGTERM and SIGINT runs are real main.py processes, resumed in the test process.
`StopOnSignal` and the loop's answer to a second SIGINT and to a signal during the last
step are tested in this process, with signals raised (signal.raise_signal) only while
test-owned handlers stand behind StopOnSignal's, so that none can reach pytest's own.
"""

import contextlib
import dataclasses
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

from pix2seq_jax.evaluation import task_evaluators
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.train import loop, preemption
from pix2seq_jax.train import step as step_lib
from pix2seq_jax.workdir import checkpoints
from tests.tiny import REFERENCE_STEPS as STEPS
from tests.tiny import ROOT, killed_at_exit, main_command, main_config, run_main, tiny_config


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
  with killed_at_exit([subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)]) as (process,):
    _wait_for_checkpoints(workdir, 3, alive=lambda: process.poll() is None)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
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


def _stop_with(command: list[str], workdir: str, signum: int) -> tuple[int, str]:
  """Starts `command`, sends it `signum` once it has saved a checkpoint past the workdir's
  latest; returns its exit code and stderr. The process is killed if anything fails."""
  before = max(_steps_saved(workdir), default=0)
  with killed_at_exit([subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)]) as (process,):
    deadline = time.time() + 300
    while max(_steps_saved(workdir), default=0) <= before:
      assert process.poll() is None, 'the run ended before its first checkpoint'
      assert time.time() < deadline, 'no checkpoint appeared'
      time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
  return process.returncode, stderr


@dataclasses.dataclass(frozen=True)
class _Stopped:
  """What one main.py process stopped by a signal left."""

  exit_code: int
  stderr: str
  resumed_from: int  # the workdir's latest step when it started
  saved: int  # the workdir's latest step when it ended
  last_logged: int  # the workdir's last step with a logged loss when it ended


@pytest.fixture(scope='module')
def signalled(tmp_path_factory, shapes_dir, uninterrupted):
  """One workdir, one main.py command (a checkpoint every step): stopped by SIGTERM once
  its first checkpoint is saved, resumed by the same command and stopped by SIGINT once
  it saves its next, then resumed to the end in this process."""
  workdir = str(tmp_path_factory.mktemp('signalled') / 'run')
  command = main_command(workdir, shapes_dir, steps=STEPS, checkpoint_every=1)
  stopped = {}
  for signum in (signal.SIGTERM, signal.SIGINT):
    resumed_from = max(_steps_saved(workdir), default=0)
    exit_code, stderr = _stop_with(command, workdir, signum)
    stopped[signum] = _Stopped(exit_code, stderr, resumed_from, max(_steps_saved(workdir)),
                               max(_losses(workdir)))
  loop.train_and_evaluate(main_config(shapes_dir, steps=STEPS, checkpoint_every=1), workdir)
  return workdir, stopped


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_sigterm_and_sigint_save_the_current_step_and_stop(signalled, signum):
  stopped = signalled[1][signum]
  assert stopped.exit_code == 128 + signum, stopped.stderr[-3000:]  # 143, 130
  assert stopped.resumed_from < stopped.saved < STEPS, stopped  # stopped mid-run
  assert (f'{signal.Signals(signum).name} received: saved the checkpoint of step '
          f'{stopped.saved} under ') in stopped.stderr, stopped.stderr[-3000:]
  assert stopped.last_logged == stopped.saved  # it stopped right after the saved step
  assert 'Traceback' not in stopped.stderr


@pytest.mark.slow
def test_runs_stopped_by_signals_resume_to_equal_an_uninterrupted_run(signalled, uninterrupted):
  """The same command resumed the SIGTERM's checkpoint (its losses up to the SIGINT are
  the reference's), and the SIGINT's checkpoint resumed to the reference's end."""
  _assert_same_run(signalled[0], uninterrupted)


@pytest.fixture
def own_handlers():
  """Handlers of this test for SIGTERM and SIGINT that record what reaches them, in place
  of pytest's for the test's length: a signal raised when StopOnSignal's handler is not
  installed (a bug) lands here, not in pytest."""
  received = []
  handlers = {s: (lambda signum, frame: received.append(signum))
              for s in preemption.StopOnSignal.SIGNALS}
  originals = {s: signal.signal(s, h) for s, h in handlers.items()}
  try:
    yield handlers, received
  finally:
    for s, handler in originals.items():
      signal.signal(s, handler)


def test_stop_on_signal_records_signals_and_restores_the_previous_handlers(own_handlers):
  handlers, received = own_handlers
  for leave_with in (None, preemption.Preempted('stopped', signal.SIGTERM)):
    with pytest.raises(preemption.Preempted) if leave_with else contextlib.nullcontext():
      with preemption.StopOnSignal() as stop:
        assert stop.signum is None
        assert all(signal.getsignal(s) is not handlers[s] for s in handlers)
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        signal.raise_signal(signal.SIGTERM)  # a repeated SIGTERM changes nothing
        assert stop.signum == signal.SIGTERM
        signal.raise_signal(signal.SIGINT)  # a first Ctrl-C after it: the exit code says so
        assert stop.signum == signal.SIGINT
        if leave_with:
          raise leave_with
    assert received == []  # nothing went past StopOnSignal while it stood
    for s, handler in handlers.items():
      assert signal.getsignal(s) is handler  # the very object installed before
    signal.raise_signal(signal.SIGTERM)
    assert received == [signal.SIGTERM]  # and it is the one called again
    received.clear()


def test_a_second_sigint_interrupts_at_once(own_handlers):
  handlers, received = own_handlers
  with pytest.raises(KeyboardInterrupt):
    with preemption.StopOnSignal() as stop:
      signal.raise_signal(signal.SIGINT)
      assert stop.signum == signal.SIGINT  # the first asks the loop to save and stop
      signal.raise_signal(signal.SIGINT)
      pytest.fail('a second SIGINT did not interrupt')
  assert received == []
  assert signal.getsignal(signal.SIGINT) is handlers[signal.SIGINT]


def test_stop_on_signal_leaves_handlers_alone_outside_the_main_thread(own_handlers):
  handlers, _ = own_handlers
  seen = []

  def enter_and_exit():
    with preemption.StopOnSignal() as stop:
      seen.append([signal.getsignal(s) is handlers[s] for s in handlers] + [stop.signum])

  thread = threading.Thread(target=enter_and_exit)
  thread.start()
  thread.join()
  assert seen == [[True, True, None]]
  assert all(signal.getsignal(s) is handlers[s] for s in handlers)


@pytest.mark.slow
def test_main_stops_at_once_on_a_second_sigint_saving_nothing_more(shapes_dir, tmp_path,
                                                                   monkeypatch, own_handlers,
                                                                   capsys):
  """main.py in this process: a first SIGINT during step 2, a second while step 2 is
  being saved. KeyboardInterrupt leaves main (a process exits by SIGINT on it), the save
  is cut off, and no 'saved the checkpoint' message is printed."""
  handlers, received = own_handlers
  workdir = str(tmp_path / 'run')
  make_setup, save = loop.make_setup, checkpoints.save

  def make_setup_raising(*args, **kwargs):
    setup = make_setup(*args, **kwargs)

    def train_step(state, batch, index):
      if index == 1:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C during step 2
      return setup.train_step(state, batch, index)

    return dataclasses.replace(setup, train_step=train_step)

  def save_raising(manager, step, state):
    if step == 2:
      signal.raise_signal(signal.SIGINT)  # Ctrl-C again while it saves
    save(manager, step, state)

  monkeypatch.setattr(loop, 'make_setup', make_setup_raising)
  monkeypatch.setattr(checkpoints, 'save', save_raising)
  with pytest.raises(KeyboardInterrupt):
    run_main(*main_command(workdir, shapes_dir, steps=STEPS, checkpoint_every=1)[2:])
  assert _steps_saved(workdir) == [1]
  assert max(_losses(workdir)) == 2  # step 2 ran; its save was cut short
  assert 'saved the checkpoint' not in capsys.readouterr().err
  assert received == []
  assert signal.getsignal(signal.SIGINT) is handlers[signal.SIGINT]


@pytest.mark.slow
def test_a_signal_during_the_last_step_stops_before_the_final_evaluation(
    tiny_workdir, shapes_dir, tmp_path, monkeypatch, own_handlers):
  """SIGTERM while the last step is being saved (after the loop last looked for one):
  the run stops there, as on any other step, instead of dropping the signal and going on
  into the final evaluation (minutes on COCO, past a scheduler's grace period)."""
  handlers, received = own_handlers
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_workdir, workdir)  # saved at step 2
  config = tiny_config(shapes_dir)
  save = checkpoints.save

  def save_raising(manager, step, state):
    save(manager, step, state)
    if step == config.train.steps:
      signal.raise_signal(signal.SIGTERM)

  monkeypatch.setattr(checkpoints, 'save', save_raising)
  with pytest.raises(preemption.Preempted) as stopped:
    loop.train_and_evaluate(config, workdir)  # resumes at 2, runs steps 3 and 4
  assert stopped.value.exit_code == 128 + signal.SIGTERM
  assert 'SIGTERM received: saved the checkpoint of step 4 ' in str(stopped.value)
  assert _steps_saved(workdir)[-1] == 4
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert not [line for line in f if '"step": 4' in line and 'eval/' in line]
  assert received == []
  assert all(signal.getsignal(s) is handlers[s] for s in handlers)


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


class _Manager:
  """The one method of a CheckpointManager that loop._check_finite asks."""

  def __init__(self, latest: int | None):
    self.latest = latest

  def latest_step(self) -> int | None:
    return self.latest


@pytest.mark.parametrize('scalars, named', [
    ({'loss': 2.5, 'grad_norm': float('nan')}, 'grad_norm=nan'),
    ({'loss': float('inf'), 'grad_norm': 0.5}, 'loss=inf'),
    ({'loss': float('nan'), 'grad_norm': float('inf')}, 'loss=nan, grad_norm=inf'),
], ids=['grad_norm', 'loss', 'both'])
def test_a_non_finite_loss_or_gradient_norm_stops_the_run(tmp_path, scalars, named):
  """The check the loop makes before every log and save, on a step's fetched scalars: a
  finite loss does not hide a non-finite gradient norm."""
  scalars = {k: np.float32(v) for k, v in scalars.items()}
  with pytest.raises(FloatingPointError) as error:
    loop._check_finite(scalars, 7, _Manager(6), str(tmp_path))
  message = str(error.value)
  assert f'Non-finite {named} at step 7' in message, message
  assert (f'The last good checkpoint is step 6 under {checkpoints.checkpoint_dir(str(tmp_path))}'
          in message), message
  loop._check_finite({'loss': np.float32(2.5), 'grad_norm': np.float32(0.5)}, 7, _Manager(6),
                     str(tmp_path))  # finite: goes on


@pytest.mark.slow
def test_divergence_after_a_checkpoint_names_it_and_saves_nothing_after(tiny_workdir,
                                                                        shapes_dir, tmp_path):
  """tiny_workdir (saved at step 2) resumed to step 4 with a learning rate that overflows
  the parameters at the first update (step 3), so that step 4's loss is non-finite."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_workdir, workdir)
  config = tiny_config(shapes_dir)
  config.train.steps = 4
  config.train.learning_rate = 1e30  # an input of the step: the compiled step is reused
  config.train.warmup_steps = 0
  config.train.log_every = 100  # checked at step 4 only: its save and the run's end
  config.train.checkpoint_every = 2
  with pytest.raises(FloatingPointError) as error:
    loop.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert 'Non-finite' in message and 'at step 4' in message, message
  assert (f'The last good checkpoint is step 2 under {checkpoints.checkpoint_dir(workdir)}.'
          in message), message
  assert _steps_saved(workdir) == [2]
  assert max(_losses(workdir)) == 2  # nothing logged after it either


def _files(folder: str) -> dict[str, bytes]:
  """Every file under `folder` by relative path, with its content."""
  files = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, folder)] = f.read()
  return files


@pytest.mark.parametrize('overrides, message', [
    (['--config.model.variant=tiny', '--config.data.num_bins=80'],
     r'params/decoder/embed/embedding/value: checkpoint \((\d+), 128\) vs config \((\d+), 128\)'),
    (['--config.model.variant=vit_nano', '--config.data.num_bins=64'],
     r'decoder/\S+/kernel/value: checkpoint \(128, 128\) vs config \(32, 32\)'),
], ids=['num_bins', 'variant'])
def test_resuming_training_refuses_a_checkpoint_of_another_model_changing_nothing(
    tiny_workdir, shapes_dir, tmp_path, capsys, overrides, message):
  """main.py --mode=train on tiny_workdir (the tiny model, 64 bins) with another number
  of bins or another model: one `error:` naming the arrays and their shapes, exit 1, and
  the workdir exactly as it was (its config.json is the one the message points to)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_workdir, workdir)
  before = _files(workdir)
  command = [a for a in main_command(workdir, shapes_dir, steps=4, checkpoint_every=2)[2:]
             if not a.startswith(('--config.model.variant=', '--config.data.num_bins='))]
  code = run_main(*command, *overrides)
  stderr = capsys.readouterr().err
  assert code == 1, stderr[-3000:]
  assert 'error: The checkpoint ' in stderr and 'does not fit the configured model' in stderr
  found = re.search(message, stderr)
  assert found, stderr[-3000:]
  if found.groups():
    assert int(found.group(2)) - int(found.group(1)) == 80 - 64  # the extra coordinate bins
  assert 'config.json' in stderr
  assert 'Traceback' not in stderr
  assert _files(workdir) == before


def test_a_checkpoint_of_another_model_is_refused_naming_the_shapes(tiny_workdir, shapes_dir):
  config = tiny_config(shapes_dir)
  config.data.num_bins = 80  # the checkpoint was written with 64 bins
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    task_evaluators.evaluate_checkpoint(config, tiny_workdir)
  message = str(error.value)
  found = re.search(r'params/decoder/embed/embedding/value: checkpoint \((\d+), 128\) vs config '
                    r'\((\d+), 128\)', message)
  assert found, message
  assert int(found.group(2)) - int(found.group(1)) == 80 - 64  # the extra coordinate bins
  assert 'config.json' in message
  config = tiny_config(shapes_dir)
  config.model.variant = 'vit_tiny'
  with pytest.raises(checkpoints.CheckpointMismatchError, match='only in the checkpoint'):
    task_evaluators.evaluate_checkpoint(config, tiny_workdir)


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
