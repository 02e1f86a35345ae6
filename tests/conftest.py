"""Shared fixtures (a small shapes dataset, a trained tiny workdir) and the session's
compilation settings, which main.py processes started by the tests inherit."""

import os

import pytest

from pix2seq_jax import compilation_cache

# Tiny models compile faster with XLA's optimisations off; the persistent cache lets
# every process and test reuse what another compiled (config of tests only).
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', 'true')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault(compilation_cache.ENV, compilation_cache.default_dir() + '-tests')

import jax  # noqa: E402

jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
compilation_cache.enable()

from tests import tiny  # noqa: E402


@pytest.fixture(scope='session')
def shapes_dir(tmp_path_factory):
  """The tiny configs' shapes dataset, made once per session in a folder every
  pytest-xdist worker sees (tiny_workdir's config names it, whichever worker trains it)."""
  from pix2seq_jax.data import shapes
  path, lock = _shared_tmp(tmp_path_factory, 'shapes')
  data = tiny.tiny_config(path).data
  with lock:
    shapes.ensure_dataset(path, seed=data.shapes_seed, num_train=data.shapes_num_train,
                          num_val=data.shapes_num_val)
  return path


@pytest.fixture
def config(shapes_dir):
  return tiny.tiny_config(shapes_dir)


def _shared_tmp(tmp_path_factory, name):
  """A folder every pytest-xdist worker of this session sees (the run's base temporary
  folder, which the workers' own sit in), and the lock that lets one of them fill it."""
  import filelock
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent
  return str(base / name), filelock.FileLock(str(base / f'{name}.lock'))


@pytest.fixture(scope='session')
def tiny_workdir(shapes_dir, tmp_path_factory):
  """A workdir with a 2-step tiny checkpoint (config.json, categories.json, checkpoints/),
  trained once per session by whichever worker asks first."""
  from pix2seq_jax.train import loop
  workdir, lock = _shared_tmp(tmp_path_factory, 'tiny_workdir')
  with lock:
    if not os.path.exists(os.path.join(workdir, 'done')):
      config = tiny.tiny_config(shapes_dir)
      config.train.steps = 2
      config.eval.max_images = 4
      loop.train_and_evaluate(config, workdir)
      open(os.path.join(workdir, 'done'), 'w').close()
  return workdir


@pytest.fixture(scope='session')
def reference_run(shapes_dir, tmp_path_factory):
  """A workdir of `tiny.reference_config` trained without interruption on this process's
  one device, once per session: what test_reliability's interrupted runs and
  test_multihost's two processes must reproduce."""
  from pix2seq_jax.train import loop
  workdir, lock = _shared_tmp(tmp_path_factory, 'reference_run')
  with lock:
    if not os.path.exists(os.path.join(workdir, 'done')):
      loop.train_and_evaluate(tiny.reference_config(shapes_dir), workdir)
      open(os.path.join(workdir, 'done'), 'w').close()
  return workdir


@pytest.fixture(scope='session')
def multi_device_run(tmp_path_factory):
  """tests/multi_device_run.py's results, from one process with 8 CPU devices."""
  import json
  import subprocess
  import sys
  out = str(tmp_path_factory.mktemp('multi_device') / 'result.json')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  run = subprocess.run([sys.executable, '-m', 'tests.multi_device_run', out], cwd=tiny.ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(out) as f:
    return json.load(f)


# Every group, longest first (measured with the whole suite on 2 cores), in the order the
# two workers should start them: xdist gives each worker two groups at first (the 1st and
# 3rd to one, the 2nd and 4th to the other), then one at a time, so the longest going first
# leaves short ones to even out the end. The 2-process run compiles the tiny model first;
# the 8-device run and a TensorFlow-only group fill the other worker until that
# compilation is in the cache. Groups not named here go last.
_FIRST_GROUPS = ('tests.test_multihost', 'multi_device', 'tests.test_augment',
                 'tests.test_reliability', 'tests.test_deploy', 'tests.test_train',
                 'tests.test_end_to_end', 'tests.test_model', 'tests.test_notebook',
                 'tests.test_pretrained', 'tests.test_decode', 'tests.test_bad_data',
                 'tests.test_data', 'tests.test_transforms', 'train', 'official',
                 'tests.test_predict', 'tests.test_evaluate', 'tests.test_no_tensorflow')


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """For pytest-xdist's `--dist loadgroup` (pyproject.toml): each test file is one group,
  so its module fixtures are made once, and tests marked `xdist_group` share theirs across
  files. The longest groups go first, so that no worker waits for one at the end."""
  for item in items:
    if not item.get_closest_marker('xdist_group'):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
  group = lambda item: item.get_closest_marker('xdist_group').args[0]
  rank = lambda item: (_FIRST_GROUPS.index(group(item)) if group(item) in _FIRST_GROUPS
                       else len(_FIRST_GROUPS))
  items.sort(key=rank)  # stable: the rest keep their order
