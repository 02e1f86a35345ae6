"""The training loop with periodic evaluation, checkpoints and logs; and checkpoint eval.

<workdir>/
  config.json            the resolved config
  categories.json        the label map: [{"id", "name"}] in label order
  checkpoints/<step>/    orbax checkpoints; training resumes from the latest
  data_report.json       per split: what the data check left out, fixed and skipped
  metrics.jsonl          one JSON object per logged step
  events.out.tfevents.*  TensorBoard scalars
  eval/step_<N>/         metrics.json and detections.json (COCO results format)
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from pix2seq_jax import checkpoint, config_checks, evaluate, inference, metrics_log, optim, sharding
from pix2seq_jax import val_loss
from pix2seq_jax import train_step as train_step_lib
from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.data import pipeline, sources


@dataclasses.dataclass
class Setup:
  """What training and evaluation share: data, vocabulary, mesh, model and optimizer."""

  config: ml_collections.ConfigDict
  splits: sources.Splits
  vocab: vocab_lib.Vocabulary
  mesh: Mesh
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  decode_fn: Callable  # jitted once, reused by every evaluation
  val_loss_fn: Callable  # likewise


def make_setup(config: ml_collections.ConfigDict, mode: str) -> Setup:
  config_checks.validate(config, mode=mode)
  splits = sources.load_splits(config.data)
  _log_data_report(splits)
  if config.train.epochs > 0:
    config = optim.resolve_epochs(config, len(splits.train.records))
    logging.info('train.epochs=%g over %d images at batch %d: %d steps, %d warmup steps.',
                 config.train.epochs, len(splits.train.records), config.train.batch_size,
                 config.train.steps, config.train.warmup_steps)
  vocab = vocab_lib.Vocabulary(splits.categories.num_classes, config.data.num_bins)
  mesh = sharding.make_mesh()
  graphdef = train_step_lib.model_graphdef(config, vocab)
  return Setup(config, splits, vocab, mesh, graphdef, optim.make_optimizer(config),
               inference.make_decode_fn(config, graphdef, vocab, mesh),
               val_loss.make_val_loss_fn(graphdef, vocab, mesh))


_SKIPPED_NAMED_IN_LOG = 20


def data_report(splits: sources.Splits) -> dict:
  """Per split: images kept, records and objects left out or fixed, unreadable files."""
  return {name: {'annotations': split.annotations_path, 'images': len(split.records),
                 'left_out': split.dropped, 'fixed': split.fixed,
                 'skipped_images': [{'path': p, 'problem': q, 'detail': d}
                                    for p, q, d in split.skipped_images]}
          for name, split in (('train', splits.train), ('val', splits.val))}


def _log_data_report(splits: sources.Splits) -> None:
  for name, split in (('train', splits.train), ('val', splits.val)):
    if split.dropped:
      logging.info('%s: left out %s', split.annotations_path, split.dropped)
    if split.fixed:
      logging.info('%s: fixed %s', split.annotations_path, split.fixed)
    if split.skipped_images:
      named = '\n  '.join(f'{p}: {q}{" (" + d + ")" if d else ""}'
                          for p, q, d in split.skipped_images[:_SKIPPED_NAMED_IN_LOG])
      more = len(split.skipped_images) - _SKIPPED_NAMED_IN_LOG
      logging.warning('%s split: skipping %d unreadable image(s) of %s:\n  %s%s', name,
                      len(split.skipped_images), split.annotations_path, named,
                      f'\n  ... and {more} more (all in data_report.json)' if more > 0 else '')


def _write_json(path: str, content) -> None:
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(content, f, indent=1)


def run_evaluation(setup: Setup, state: train_step_lib.TrainState, workdir: str) -> dict:
  """Decodes the val split, scores it with COCOeval on process 0, writes eval/step_<N>/.

  Also measures the teacher-forced validation loss and perplexities (val_loss.py).
  """
  config, split = setup.config, setup.splits.val
  step = int(state.step)
  records = split.records[:config.eval.max_images] if config.eval.max_images else split.records
  batches = pipeline.eval_batches(
      split, config.data, setup.vocab, global_batch_size=config.eval.batch_size,
      max_images=config.eval.max_images, process_index=jax.process_index(),
      process_count=jax.process_count())
  results, likelihood = [], val_loss.ValLoss()
  total = pipeline.num_eval_batches(len(records), config.eval.batch_size)
  for batch in tqdm(batches, total=total, desc=f'eval@{step}', leave=False,
                    disable=jax.process_index() > 0):
    arrays = sharding.put_batch({k: batch[k] for k in val_loss.BATCH_KEYS}, setup.mesh)
    likelihood.add(setup.val_loss_fn(state.params, state.batch_stats, arrays))
    tokens, scores = setup.decode_fn(state.params, state.batch_stats, arrays['image'], step)
    meta = {k: batch[k] for k in ('image_id', 'scale', 'original_size', 'mask')}
    tokens, scores, meta = multihost_utils.process_allgather(
        (inference.local_rows(tokens), inference.local_rows(scores), meta), tiled=True)
    results += inference.coco_results(tokens, scores, meta, setup.vocab,
                                      setup.splits.categories.category_ids,
                                      config.data.image_size)
  metrics = {}
  if jax.process_index() == 0:
    coco_gt = evaluate.load_ground_truth(split.annotations_path)
    metrics = evaluate.coco_metrics(coco_gt, results, image_ids=[r.image_id for r in records])
    metrics.update(likelihood.metrics())
    out = os.path.join(workdir, 'eval', f'step_{step}')
    _write_json(os.path.join(out, 'metrics.json'), metrics)
    _write_json(os.path.join(out, 'detections.json'), results)
    logging.info('eval@%d on %d images: %s', step, len(records),
                 ' '.join(f'{k}={v:.4f}' for k, v in metrics.items()))
  return metrics


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint; `exit_code` 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class _StopOnSignal:
  """Turns SIGTERM and SIGINT into a request the loop honours between steps.

  A second SIGINT interrupts at once (KeyboardInterrupt). Handlers are installed only in
  the main thread and restored on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum, self._previous = None, {}

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self):
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
      self._previous = {}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _agreed_signal(signum: int | None) -> int | None:
  """The signal any process received, so that all save and stop at the same step.

  A scheduler's SIGTERM reaches hosts at slightly different times; a collective
  checkpoint needs every process to take the same branch.
  """
  if jax.process_count() == 1:
    return signum
  received = multihost_utils.process_allgather(np.int32(signum or 0))
  return int(received.max()) or None


def _check_finite(scalars: dict, step: int, manager, workdir: str) -> None:
  """Stops on a non-finite loss or gradient, naming the step and the last good checkpoint."""
  bad = {k: float(scalars[k]) for k in ('loss', 'grad_norm') if not np.isfinite(scalars[k])}
  if bad:
    latest = manager.latest_step()
    where = (f'step {latest} under {checkpoint.checkpoint_dir(workdir)}' if latest is not None
             else 'none (no checkpoint was saved)')
    raise FloatingPointError(
        f'Non-finite {", ".join(f"{k}={v}" for k, v in bad.items())} at step {step}; '
        f'nothing was saved after it. The last good checkpoint is {where}. Lower '
        'train.learning_rate, keep train.grad_clip_norm > 0, or check the data.')


def _abstract_state(setup: Setup) -> train_step_lib.TrainState:
  return train_step_lib.abstract_train_state(setup.config, setup.vocab, setup.mesh, setup.tx)


def _restore_or_create(setup: Setup, manager) -> train_step_lib.TrainState:
  restored = checkpoint.restore(manager, _abstract_state(setup))
  if restored is not None:
    logging.info('Resumed from %s at step %d.', manager.directory, int(restored.step))
    return restored
  state = train_step_lib.create_train_state(setup.config, setup.vocab, setup.mesh, setup.tx)
  if setup.config.model.pretrained_backbone:
    state, ignored = train_step_lib.with_pretrained_backbone(state, setup.config, setup.mesh)
    logging.info('Loaded the backbone from %s (ignored %d keys: the classifier, batch counters '
                 'and stages the backbone lacks).', setup.config.model.pretrained_backbone,
                 len(ignored))
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains for config.train.steps (resuming from the latest checkpoint), then evaluates."""
  setup = make_setup(config, 'train')
  config = setup.config  # with train.epochs resolved to steps
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  _write_json(os.path.join(workdir, 'categories.json'), setup.splits.categories.to_json())
  _write_json(os.path.join(workdir, 'data_report.json'), data_report(setup.splits))
  train_config = config.train
  manager = checkpoint.make_manager(workdir, train_config.keep_checkpoints)
  state = _restore_or_create(setup, manager)
  start_step = int(state.step)
  step_fn = train_step_lib.make_train_step(config, setup.graphdef, setup.mesh, setup.tx)
  batches = pipeline.train_batches(
      setup.splits.train, config.data, setup.vocab, seed=config.seed,
      local_batch_size=train_config.batch_size // jax.process_count(), start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())
  log = metrics_log.MetricsLog(workdir)
  skipped = len(setup.splits.train.skipped_images)
  epoch_of = lambda step: (step - 1) * train_config.batch_size // len(setup.splits.train.records)
  metrics, last_log = {}, (start_step, time.perf_counter())
  progress = tqdm(total=train_config.steps, initial=start_step, desc='train',
                  disable=jax.process_index() > 0)
  with _StopOnSignal() as stop:
    for step in range(start_step + 1, train_config.steps + 1):
      if skipped and (step == start_step + 1 or epoch_of(step) != epoch_of(step - 1)):
        logging.warning('Epoch %d (from step %d): %d unreadable train image(s) skipped, as '
                        'listed in data_report.json.', epoch_of(step) + 1, step, skipped)
      state, metrics = step_fn(state, sharding.put_batch(next(batches), setup.mesh))
      progress.update(1)
      signum = _agreed_signal(stop.signum)  # read once: a signal may arrive at any point
      last = step == train_config.steps
      saving = step % train_config.checkpoint_every == 0 or last or signum is not None
      logging_step = step % train_config.log_every == 0 or last
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
        checkpoint.save(manager, step, state)
      if signum is not None:
        name = signal.Signals(signum).name
        progress.close()
        log.close()
        manager.close()
        message = (f'{name} received: saved the checkpoint of step {step} under '
                   f'{checkpoint.checkpoint_dir(workdir)} and stopped. Run the same command '
                   'to resume from it.')
        logging.warning(message)
        raise Preempted(message, signum)
      if (train_config.eval_every and step % train_config.eval_every == 0
          and step != train_config.steps):
        log.write(step, {f'eval/{k}': v for k, v in run_evaluation(setup, state, workdir).items()})
  progress.close()
  if manager.latest_step() != int(state.step):
    checkpoint.save(manager, int(state.step), state)
  final = run_evaluation(setup, state, workdir)
  log.write(int(state.step), {f'eval/{k}': v for k, v in final.items()})
  log.close()
  manager.close()
  return final


def evaluate_latest(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoint in `workdir` on the val split."""
  setup = make_setup(config, 'eval')
  manager = checkpoint.make_manager(workdir)
  state = checkpoint.restore(manager, _abstract_state(setup))
  if state is None:
    raise FileNotFoundError(f'No checkpoint under {checkpoint.checkpoint_dir(workdir)}; '
                            'train first (--mode=train) or point --workdir at a trained run.')
  return run_evaluation(setup, state, workdir)
