"""Shared fixtures: a tiny config and a small shapes dataset; paths to the shared real data."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Subprocesses (main.py runs) inherit this: the tiny models compile ~25% faster.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', 'true')
import jax  # noqa: E402

# Compile fast: the tests run tiny models where XLA's optimisations cost more than they save.
jax.config.update('jax_disable_most_optimizations', True)

from configs import default  # noqa: E402

SHARED_DATA = os.environ.get('PIX2SEQ_SHARED_DATA',
                             os.path.join(os.path.dirname(ROOT), 'shared', 'data'))


def shared_path(*parts: str) -> str:
  """A path under the shared real data; skips the test when it is absent."""
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent: set PIX2SEQ_SHARED_DATA to the folder holding '
                'coco_tiny/ and cocoapi_eval/.')
  return path


def tiny_config(data_dir: str):
  """The tiny model on 64-px shapes: a train step compiles and runs in seconds."""
  config = default.get_config()
  config.data.source = 'shapes'
  config.data.shapes_dir = data_dir
  config.data.shapes_num_train = 24
  config.data.shapes_num_val = 6
  config.data.image_size = 64
  config.data.max_instances = 8
  config.data.num_bins = 64
  config.model.variant = 'tiny'
  config.model.dropout = 0.1
  config.train.steps = 4
  config.train.batch_size = 4
  config.train.warmup_steps = 1
  config.train.learning_rate = 1e-3
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.eval.batch_size = 4
  return config


def main_command(workdir: str, shapes_dir: str, steps: int, checkpoint_every: int) -> list[str]:
  """main.py training the tiny model on 64-px shapes (tests/conftest.tiny_config's sizes)."""
  return [sys.executable, 'main.py', '--config=configs/shapes.py', f'--workdir={workdir}',
          f'--config.data.shapes_dir={shapes_dir}', '--config.data.shapes_num_train=24',
          '--config.data.shapes_num_val=6', '--config.data.image_size=64',
          '--config.data.max_instances=8', '--config.data.num_bins=64',
          '--config.train.batch_size=4', f'--config.train.steps={steps}',
          '--config.train.warmup_steps=2', '--config.train.log_every=1',
          f'--config.train.checkpoint_every={checkpoint_every}', '--config.train.eval_every=0',
          '--config.eval.max_images=4', '--config.eval.batch_size=4']



@pytest.fixture(scope='session')
def shapes_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('shapes'))


@pytest.fixture
def config(shapes_dir):
  return tiny_config(shapes_dir)


@pytest.fixture(scope='session')
def tiny_workdir(shapes_dir, tmp_path_factory):
  """A workdir with a 2-step tiny checkpoint (config.json, categories.json, checkpoints/)."""
  from pix2seq_jax import train
  workdir = str(tmp_path_factory.mktemp('tiny_workdir'))
  config = tiny_config(shapes_dir)
  config.train.steps = 2
  config.eval.max_images = 4
  train.train_and_evaluate(config, workdir)
  return workdir
