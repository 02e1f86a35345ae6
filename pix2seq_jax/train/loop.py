"""The training loop: resume or start, step, log, checkpoint, evaluate; stop cleanly.

The run's files are listed in pix2seq_jax/workdir/files.py. The data order and every random
draw are functions of (seed, step), so a run resumed from its latest checkpoint
continues exactly as if it had never stopped.

The host runs ahead of the devices: a step's inputs are host values, its batch was put on
the devices while earlier steps ran (mesh.placed_batches), and the host waits for the
devices only to log, to save, and on several processes to agree on a signal every
`train.preemption_check_every` steps (preemption.SignalAgreement).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import time
from typing import Any, Iterable

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from pix2seq_jax.config import checks, default, multitask, resolve
from pix2seq_jax.data import coco_json, pipeline, report, sources
from pix2seq_jax.evaluation import task_evaluators
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import init_from, metrics_log, optimizer, preemption
from pix2seq_jax.train import state as state_lib
from pix2seq_jax.train import step as step_lib
from pix2seq_jax.workdir import checkpoints, tokenizer_file
from pix2seq_jax.workdir import files as workdir_lib


@dataclasses.dataclass(frozen=True)
class TaskSetup:
  """One task of a run: its config (`multitask.task_config`), data and evaluator."""

  config: ml_collections.FrozenConfigDict
  splits: sources.Splits
  vocab: vocab_lib.Vocabulary  # its data's categories (every task's has the model's size)
  evaluator: Any  # evaluator.Evaluator, InstanceEvaluator or CaptionEvaluator


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a training run builds once from its frozen config."""

  config: ml_collections.FrozenConfigDict  # epochs resolved to steps
  tasks: dict[str, TaskSetup]  # every task the run trains (one without config.tasks)
  categories: coco_json.CategoryMap  # the model's (categories.json)
  vocab: vocab_lib.Vocabulary
  mesh: Mesh
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  train_step: step_lib.TrainStep  # (state, batch, 0-based step) -> (state, metrics)

  @property
  def splits(self) -> sources.Splits:
    """The data of `config.task` (which counts the epochs)."""
    return self.tasks[self.config.task].splits

  @property
  def evaluator(self):
    """The evaluator of `config.task`."""
    return self.tasks[self.config.task].evaluator

  def create_state(self) -> state_lib.TrainState:
    return state_lib.create_train_state(self.config, self.vocab, self.mesh, self.tx)

  def abstract_state(self) -> state_lib.TrainState:
    return state_lib.abstract_train_state(self.config, self.vocab, self.mesh, self.tx)

  def train_batches(self, start_step: int = 0):
    """This process's batches from `start_step` on (pipeline.train_batches); a multi-task
    run's are {task: batch}, each task's stream seeded apart (`task_seed`)."""
    streams = {
        name: pipeline.train_batches(
            task.splits.train, task.config.data, task.vocab,
            seed=task_seed(self.config, name),
            local_batch_size=self.config.train.batch_size // jax.process_count(),
            start_step=start_step, process_index=jax.process_index(),
            process_count=jax.process_count(), task=name,
            targets=task.splits.targets('train'))
        for name, task in self.tasks.items()}
    if not multitask.is_multitask(self.config):
      return streams[self.config.task]
    return ({name: next(stream) for name, stream in streams.items()} for _ in itertools.count())


def task_seed(config: ml_collections.ConfigDict, name: str) -> int:
  """The data seed of task `name`: config.seed, offset per task in a multi-task run so that
  tasks reading the same images see them in different orders."""
  if not multitask.is_multitask(config):
    return config.seed
  return config.seed + 1_000_003 * (default.TASKS.index(name) + 1)


def make_setup(config: ml_collections.ConfigDict, *, overrides: Iterable[str] = (),
               mesh: Mesh | None = None) -> Setup:
  """Checks `config`, reads the data, resolves and freezes the config, builds the step.

  `overrides`: the fields set on the command line (config/checks.py). `mesh`: the
  devices to train on (default: all of them).
  """
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  checks.validate(config, mode='train', overrides=overrides, devices=mesh.size)
  views = multitask.task_configs(config)
  splits = {}
  for name, view in views.items():
    splits[name] = sources.load_splits(view.data, name)
    report.log_data_report(splits[name])
  examples = pipeline.num_train_examples(splits[config.task].train, config.task)
  frozen = resolve.resolve(config, examples)
  if config.train.epochs > 0 or config.train.warmup_epochs > 0:
    logging.info('train.epochs=%g, warmup_epochs=%g over %d examples at batch %d: %d steps, '
                 '%d warmup steps.', config.train.epochs, config.train.warmup_epochs,
                 examples, config.train.batch_size, frozen.train.steps,
                 frozen.train.warmup_steps)
  categories = sources.model_categories(splits)
  vocab = vocab_lib.for_categories(frozen.model.vocabulary, categories.category_ids,
                                   frozen.data.num_bins)
  graphdef = build.model_graphdef(frozen, vocab)
  tx = optimizer.make_optimizer(frozen)
  tasks = {}
  for name in views:
    view = multitask.task_config(frozen, name)
    task_vocab = vocab if len(views) == 1 else vocab_lib.for_categories(
        frozen.model.vocabulary, splits[name].categories.category_ids, frozen.data.num_bins)
    tasks[name] = TaskSetup(view, splits[name], task_vocab,
                            task_evaluators.evaluator_for(view, splits[name], task_vocab, graphdef,
                                                          mesh))
  return Setup(frozen, tasks, categories, vocab, mesh, graphdef, tx,
               step_lib.train_step_for(frozen, graphdef, mesh, tx))


def _check_finite(scalars: dict, step: int, manager, workdir: str) -> None:
  """Stops on a non-finite loss or gradient, naming the step and the last good checkpoint."""
  bad = {k: float(scalars[k]) for k in ('loss', 'grad_norm') if not np.isfinite(scalars[k])}
  if bad:
    latest = manager.latest_step()
    where = (f'step {latest} under {checkpoints.checkpoint_dir(workdir)}' if latest is not None
             else 'none (no checkpoint was saved)')
    raise FloatingPointError(
        f'Non-finite {", ".join(f"{k}={v}" for k, v in bad.items())} at step {step}; '
        f'nothing was saved after it. The last good checkpoint is {where}. Lower '
        'train.learning_rate, keep train.grad_clip_norm > 0, or check the data.')


def _restore_or_create(setup: Setup, manager) -> state_lib.TrainState:
  restored = checkpoints.restore(manager, setup.abstract_state())
  if restored is not None:
    logging.info('Resumed from %s at step %d%s.', manager.directory, int(restored.step),
                 ' (model.init_from applies only to a run\'s start)'
                 if setup.config.model.init_from else '')
    return restored
  state = setup.create_state()
  if setup.config.model.init_from:
    state = init_from.with_init_from(state, setup.config, setup.vocab, setup.splits.categories,
                                     setup.mesh)
  elif setup.config.model.pretrained_backbone:
    state, ignored = state_lib.with_pretrained_backbone(state, setup.config, setup.mesh)
    logging.info('Loaded the backbone from %s (ignored %d keys: the classifier, batch counters '
                 'and stages the backbone lacks).', setup.config.model.pretrained_backbone,
                 len(ignored))
  return state


def _store_tokenizers(setup: Setup, workdir: str) -> None:
  """Copies the captioning tokenizer into the workdir, or refuses one that differs from
  the workdir's (workdir/tokenizer_file.py)."""
  for name, task in setup.tasks.items():
    if name == 'captioning':
      tokenizer_file.store(workdir, task.config.data.tokenizer)


def _write_run_files(setup: Setup, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  write = lambda name, content: workdir_lib.write_json(os.path.join(workdir, name), content)
  write(workdir_lib.CONFIG, setup.config.to_dict())
  write(workdir_lib.CATEGORIES, setup.categories.to_json())
  if multitask.is_multitask(setup.config):
    write(workdir_lib.DATA_REPORT, {name: report.data_report(task.splits)
                                    for name, task in setup.tasks.items()})
  else:
    write(workdir_lib.DATA_REPORT, report.data_report(setup.splits))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overrides: Iterable[str] = (), mesh: Mesh | None = None) -> dict:
  """Trains for config.train.steps (resuming from the latest checkpoint), evaluating
  every `train.eval_every` steps and at the end; returns the final metrics.

  Raises preemption.Preempted after saving when SIGTERM or SIGINT arrives.
  """
  setup = make_setup(config, overrides=overrides, mesh=mesh)
  config = setup.config
  train = config.train
  manager = checkpoints.make_manager(workdir, train.keep_checkpoints)
  _store_tokenizers(setup, workdir)  # refuses another tokenizer than the workdir's ...
  state = _restore_or_create(setup, manager)  # ... and another model's checkpoint ...
  _write_run_files(setup, workdir)  # ... before its run's config.json is replaced
  start_step = int(state.step)
  batches = mesh_lib.placed_batches(setup.train_batches(start_step), setup.mesh)
  log = metrics_log.MetricsLog(workdir)
  skipped = len(setup.splits.train.skipped_images)
  examples = pipeline.num_train_examples(setup.splits.train, config.task)
  epoch_of = lambda step: (step - 1) * train.batch_size // examples
  last_log = (start_step, time.perf_counter())
  progress = tqdm(total=train.steps, initial=start_step, desc='train',
                  disable=jax.process_index() > 0)

  def evaluate(state: state_lib.TrainState) -> dict[str, float]:
    """Evaluates `state` on every task, logs the metrics and drawn val images at its
    step, returns them (a multi-task run's as <task>/<metric>, written under
    <workdir>/<task>/eval/)."""
    step = int(state.step)
    if not multitask.is_multitask(config):
      result = setup.evaluator.evaluate(state.params, state.batch_stats, step, workdir)
      log.write(step, {f'eval/{k}': v for k, v in result.metrics.items()})
      if result.drawings is not None:
        log.write_images(step, {'eval/detections': result.drawings})
      return result.metrics
    metrics = {}
    for name, task in setup.tasks.items():
      result = task.evaluator.evaluate(state.params, state.batch_stats, step,
                                       os.path.join(workdir, name))
      metrics.update({f'{name}/{k}': v for k, v in result.metrics.items()})
      if result.drawings is not None:
        log.write_images(step, {f'eval/{name}/detections': result.drawings})
    log.write(step, {f'eval/{k}': v for k, v in metrics.items()})
    return metrics

  agree = preemption.SignalAgreement(train.preemption_check_every, jax.process_count())

  def log_agreements(step: int) -> None:
    if jax.process_count() > 1:
      logging.info('Agreed on signals %d times over steps %d-%d (every %d steps, at saves and '
                   'after the last step).', agree.collectives, start_step + 1, step,
                   train.preemption_check_every)

  with preemption.StopOnSignal() as stop:
    for step in range(start_step + 1, train.steps + 1):
      if skipped and (step == start_step + 1 or epoch_of(step) != epoch_of(step - 1)):
        logging.warning('Epoch %d (from step %d): %d unreadable train image(s) skipped, as '
                        'listed in data_report.json.', epoch_of(step) + 1, step, skipped)
      state, metrics = setup.train_step(state, next(batches), step - 1)
      progress.update(1)
      last = step == train.steps
      scheduled_save = step % train.checkpoint_every == 0 or last
      signum = agree(stop.signum, step, scheduled_save)  # read once: it may come at any point
      saving = scheduled_save or signum is not None
      logging_step = step % train.log_every == 0 or last
      if logging_step or saving:
        scalars = jax.device_get(metrics)
        _check_finite(scalars, step, manager, workdir)  # before any save of this state
      if logging_step:
        now = time.perf_counter()
        scalars['steps_per_second'] = (step - last_log[0]) / (now - last_log[1])
        last_log = (step, now)
        log.write(step, scalars)
        progress.set_postfix(loss=f'{scalars["loss"]:.3f}')
      if saving:
        checkpoints.save(manager, step, state)
      if last and signum is None:  # a signal during the last step (saved above) stops the
        signum = agree(stop.signum, step, True)  # run before the final evaluation
      if signum is not None:
        log_agreements(step)
        progress.close()
        log.close()
        manager.close()
        message = (f'{signal.Signals(signum).name} received: saved the checkpoint of step '
                   f'{step} under {checkpoints.checkpoint_dir(workdir)} and stopped. Run the '
                   'same command to resume from it.')
        logging.warning(message)
        raise preemption.Preempted(message, signum)
      if train.eval_every and step % train.eval_every == 0 and not last:
        evaluate(state)
  progress.close()
  log_agreements(train.steps)
  if manager.latest_step() != int(state.step):
    checkpoints.save(manager, int(state.step), state)
  final = evaluate(state)
  log.close()
  manager.close()
  return final
