"""Helpers shared by the tests: the tiny config, main.py commands, the shared real data."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator

import ml_collections
import numpy as np
import pytest

from pix2seq_jax.config import config_file, default, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get('PIX2SEQ_SHARED_DATA',
                             os.path.join(os.path.dirname(ROOT), 'shared', 'data'))


def shared_path(*parts: str) -> str:
  """A path under the shared real data; skips the test when it is absent."""
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent: set PIX2SEQ_SHARED_DATA to the folder holding '
                'coco_tiny/ and cocoapi_eval/.')
  return path


@contextlib.contextmanager
def killed_at_exit(processes: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
  """Kills whichever of `processes` (a list the block may still append to) still runs
  when the block ends, so that a failing or timed-out test leaves no process behind."""
  try:
    yield processes
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
      process.wait()


def tiny_config(data_dir: str) -> ml_collections.ConfigDict:
  """The tiny model on 64-px shapes: a train step compiles and runs in seconds.

  Its model, vocabulary (9 shapes classes, 64 bins) and batches are those of
  tests/multi_device_run.py, so that tests share compiled programs (the optimizer's values
  and the seed, which differ, are inputs of the step). `main_config` has the same data and
  batches with the smaller `vit_nano` model.
  """
  config = default.get_config()
  config.data.source = 'shapes'
  config.data.shapes_dir = data_dir
  config.data.shapes_num_train = 24
  config.data.shapes_num_val = 6
  config.data.image_size = 64
  config.data.max_instances = 8
  config.data.num_bins = 64
  config.model.variant = 'tiny'
  config.model.dropout = 0.1  # dropout and DropPath on, as in most configs
  config.model.drop_path = 0.1
  config.train.steps = 4
  config.train.batch_size = 8  # divides over 1, 2, 4 and 8 devices
  config.train.warmup_steps = 1
  config.train.learning_rate = 1e-3
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.eval.batch_size = 8  # as the Predictor's default batch
  return config


def frozen(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """`config` as a run reads it: frozen (no epoch fields are set in the tests)."""
  return resolve.resolve(config)


def main_overrides(shapes_dir: str, steps: int, checkpoint_every: int) -> list[str]:
  """configs/shapes.py overridden to tiny_config's sizes, 512 bins and the `vit_nano` model.

  The tests that start main.py processes (kill and resume, two processes) run these: each
  process traces its programs anew and, but for process 0, compiles them anew (JAX writes
  the persistent cache from process 0 only, under a key naming the process's devices), so
  they take the smallest model, whose programs trace, compile and run several times
  faster than tiny_config's. Batch statistics in checkpoints are checked on the tiny
  ResNet by tests/test_train.py. 512 bins make the token embedding (525 x 32) the one
  array large enough to be split when the state is sharded (mesh.leaf_sharding).
  """
  return [f'--config.data.shapes_dir={shapes_dir}', '--config.data.shapes_num_train=24',
          '--config.data.shapes_num_val=6', '--config.data.image_size=64',
          '--config.data.max_instances=8', '--config.data.num_bins=512',
          '--config.model.variant=vit_nano',
          '--config.model.dropout=0.1', '--config.model.drop_path=0.1',
          '--config.train.batch_size=8', f'--config.train.steps={steps}',
          '--config.train.warmup_steps=2', '--config.train.log_every=1',
          f'--config.train.checkpoint_every={checkpoint_every}', '--config.train.eval_every=0',
          '--config.eval.max_images=4', '--config.eval.batch_size=8']


def main_command(workdir: str, shapes_dir: str, steps: int, checkpoint_every: int) -> list[str]:
  """main.py training the tiny model on 64-px shapes."""
  return [sys.executable, os.path.join(ROOT, 'main.py'),
          f'--config={os.path.join(ROOT, "configs", "shapes.py")}',
          f'--workdir={workdir}', *main_overrides(shapes_dir, steps, checkpoint_every)]


def main_config(shapes_dir: str, steps: int, checkpoint_every: int) -> ml_collections.ConfigDict:
  """The config `main_command` trains with, built in this process."""
  config = config_file.load(os.path.join(ROOT, 'configs', 'shapes.py'))
  for override in main_overrides(shapes_dir, steps, checkpoint_every):
    name, value = override[len('--config.'):].split('=', 1)
    section, field = name.split('.')
    config[section][field] = type(config[section][field])(value)
  return config


REFERENCE_STEPS = 8


def reference_config(shapes_dir: str) -> ml_collections.ConfigDict:
  """`main_command`'s run of REFERENCE_STEPS steps as one test process trains it: saved
  once, at the end (how often a run saves does not change what it computes), and
  evaluated on 6 images."""
  config = main_config(shapes_dir, steps=REFERENCE_STEPS, checkpoint_every=REFERENCE_STEPS)
  config.eval.max_images = 6
  return config


def load_main_module():
  """main.py as a module, to run its command line in this process."""
  spec = importlib.util.spec_from_file_location('pix2seq_main', os.path.join(ROOT, 'main.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_MAIN_MODULE = None


def run_main(*argv: str) -> int:
  """Runs main.py's command line with `argv` in this process; returns its exit code."""
  global _MAIN_MODULE
  from absl import flags
  if _MAIN_MODULE is None:  # main.py defines its flags once per process
    _MAIN_MODULE = load_main_module()
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)  # a previous run's overrides; the config flag defines its own
  saved_argv, sys.argv = sys.argv, ['main.py', *argv]  # config_flags reads overrides there
  try:
    remaining = flags.FLAGS(sys.argv)
  finally:
    sys.argv = saved_argv
  try:
    _MAIN_MODULE.main(remaining)
  except SystemExit as stop:
    return stop.code
  return 0


def eager_and_in_dataset(fn, args: tuple):
  """(fn(*args) run eagerly, the same inside a tf.data map): each tf.data transform is
  tested both ways. `args` () runs fn in a one-element dataset of no inputs."""
  import tensorflow as tf  # noqa: PLC0415 (only the tf.data tests need it)
  eager = fn(*args)
  if args:
    ds = tf.data.Dataset.from_tensors(args).map(lambda *a: fn(*a))
  else:
    ds = tf.data.Dataset.range(1).map(lambda _: fn())
  return eager, next(iter(ds))


def likely_coordinates(model, vocab, count: int = 20, lift: float = 12.0) -> None:
  """Makes `count` coordinate tokens (spread over the canvas) far more likely in a freshly
  initialised model's output (its output bias): sampled polygons and points of random
  positions, and a nucleus found among the most likely tokens (a flat 35000-token
  softmax would be sorted at every step, `decoding.nucleus_threshold`)."""
  likely = np.linspace(vocab.coord_offset + 100, vocab.coord_offset + 900, count).astype(int)
  bias = model.decoder.output_bias
  bias.value = bias.value.at[likely].add(lift)
