"""Importing the package: the model, train step, decoding, evaluation scorer and Predictor
import without TensorFlow, and no module of the package changes the process (environment
variables, JAX settings) or starts a JAX backend when imported. One subprocess checks both."""

import json
import os
import subprocess
import sys

import pytest

from tests.tiny import ROOT

_SCRIPT = '''
import importlib, json, os, pkgutil, sys
class BlockTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      raise ImportError('TensorFlow is blocked in this test: ' + name)
blocker = BlockTensorFlow()
sys.meta_path.insert(0, blocker)
import jax, flax.nnx, optax, orbax.checkpoint  # the dependencies' own import effects
from jax._src import xla_bridge

def state():
  return dict(os.environ), dict(jax.config.values)

def changes(before, after):
  return {f'{kind} {key}': [str(b.get(key)), str(a.get(key))]
          for kind, b, a in zip(('environ', 'jax.config'), before, after)
          for key in sorted(set(b) | set(a)) if b.get(key) != a.get(key)}

result = {}
before = state()
import pix2seq_jax.inference.decoding, pix2seq_jax.inference.predictor, pix2seq_jax.deploy.serving
import pix2seq_jax.deploy.export, pix2seq_jax.deploy.detector
import pix2seq_jax.evaluation.coco_metrics, pix2seq_jax.evaluation.val_loss
import pix2seq_jax.train.step, pix2seq_jax.train.state, pix2seq_jax.workdir.checkpoints
import pix2seq_jax.models.summary, pix2seq_jax.config.checks
result['tensorflow_imported'] = 'tensorflow' in sys.modules
result['changes'] = changes(before, state())
sys.meta_path.remove(blocker)
import tensorflow  # sets variables of its own (TF2_BEHAVIOR, ...) on import
middle = state()
modules = [m.name for m in pkgutil.walk_packages(pix2seq_jax.__path__, 'pix2seq_jax.')]
for name in modules:
  importlib.import_module(name)
result['modules'] = len(modules)
result['changes'].update(changes(middle, state()))
result['backend_started'] = xla_bridge.backends_are_initialized()
print('RESULT', json.dumps(result))
'''


@pytest.fixture(scope='module')
def imported():
  # Without the XLA_FLAGS conftest.py set, which an import that adds them would not change.
  env = {key: value for key, value in os.environ.items() if key != 'XLA_FLAGS'}
  run = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  line = [line for line in run.stdout.splitlines() if line.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_runtime_modules_do_not_import_tensorflow(imported):
  assert not imported['tensorflow_imported']


def test_importing_any_module_changes_nothing_in_the_process(imported):
  assert imported['modules'] > 50  # every module of the package was imported
  assert imported['changes'] == {}
  assert not imported['backend_started']
