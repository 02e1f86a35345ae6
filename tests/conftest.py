"""Shared fixtures (a small shapes dataset, a trained tiny workdir), the session's
compilation settings, which main.py processes started by the tests inherit, and the
order in which pytest-xdist's workers take the test groups."""

import os

import pytest

from pix2seq_jax.runtime import compilation_cache
from pix2seq_jax.runtime import cpu as cpu_runtime

# The XLA:CPU flags main.py runs with where the backend is the CPU (cpu_runtime.py), set
# before JAX starts a backend; the processes the tests start inherit them. No restart
# with huge pages behind malloc: the test processes keep glibc's defaults.
cpu_runtime.configure(restart=False)
# Float32 matmuls and convolutions at full float32 on every backend (on GPUs JAX's
# default runs them as TF32): the parity and equivalence tests' tolerances assume it.
# Nothing changes on the CPU, where every precision is float32. Processes the tests
# start inherit it.
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')

# Tiny models compile several times faster with most of XLA's optimisations off, and the
# persistent cache lets every process and test reuse what another compiled (config of
# tests only). Tests marked `xla_default` (parity with the official model, numeric
# shortcuts against their references, checks of compiled programs) run with XLA's
# default optimisation, as users' runs compile: see `pytest_runtest_setup` below.
_FAST_COMPILE = 'JAX_DISABLE_MOST_OPTIMIZATIONS'
os.environ.setdefault(_FAST_COMPILE, 'true')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault(compilation_cache.ENV, compilation_cache.default_dir() + '-tests')

import jax  # noqa: E402

_SUITE_FAST_COMPILE = os.environ[_FAST_COMPILE].lower() in ('1', 'true')
jax.config.update('jax_disable_most_optimizations', _SUITE_FAST_COMPILE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_default_matmul_precision',
                  os.environ['JAX_DEFAULT_MATMUL_PRECISION'])
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
def mini_tokenizer(tmp_path_factory):
  """A SentencePiece model (300 pieces) trained on coco_mini's train captions, once per
  session."""
  from pix2seq_jax.data import captions
  from pix2seq_jax.tasks import tokenizer
  source = tiny.shared_path('coco_mini', 'annotations', 'captions_train2017.json')
  folder, lock = _shared_tmp(tmp_path_factory, 'mini_tokenizer')
  path = os.path.join(folder, 'tokenizer.model')
  with lock:
    if not os.path.exists(path):
      os.makedirs(folder, exist_ok=True)
      tokenizer.train_tokenizer(captions.load_captions(source).all_texts(), path, 300)
  return path


@pytest.fixture(scope='session')
def multitask_run(mini_tokenizer, tmp_path_factory):
  """(workdir, final metrics) of `multi_device_run.multitask_config` (detection,
  segmentation and captioning on coco_mini) trained its MULTITASK_RUN_STEPS steps without
  interruption, once per session: what test_multitask's killed run must reproduce and
  what test_predict_tasks predicts with. METEOR is left out of its evaluations (its Java
  process takes seconds to start; tests/test_caption_metrics.py checks it)."""
  import json

  from pix2seq_jax.evaluation import caption_metrics
  from pix2seq_jax.train import loop
  from tests import multi_device_run as runs
  workdir, lock = _shared_tmp(tmp_path_factory, 'multitask_run')
  done = os.path.join(workdir, 'final_metrics.json')
  with lock:
    if not os.path.exists(done):
      config = runs.multitask_config(tiny.shared_path('coco_mini'), mini_tokenizer)
      config.train.steps = runs.MULTITASK_RUN_STEPS
      meteor, caption_metrics._meteor = caption_metrics._meteor, lambda gts, res: 0.0
      try:
        final = loop.train_and_evaluate(config, workdir)
      finally:
        caption_metrics._meteor = meteor
      with open(done, 'w') as f:
        json.dump(final, f)
  with open(done) as f:
    return workdir, json.load(f)


@pytest.fixture(scope='session')
def multi_device_run(tmp_path_factory):
  """tests/multi_device_run.py's results, from one process with 8 CPU devices."""
  import json
  import subprocess
  import sys
  out = str(tmp_path_factory.mktemp('multi_device') / 'result.json')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=' '.join(  # and the CPU tuning's
      [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8']).strip())
  run = subprocess.run([sys.executable, '-m', 'tests.multi_device_run', out], cwd=tiny.ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(out) as f:
    return json.load(f)


# Test groups, longest first (measured with the whole suite on 2 cores: BENCHMARKS.md,
# "The test suite"). With `--dist loadgroup --no-loadscope-reorder` (pyproject.toml)
# pytest-xdist hands whole groups to idle workers in collection order, which its option
# documents as kept; starting with the longest is the classic longest-first heuristic,
# leaving short groups to even out the end. Groups not named here go last, in file order.
_FIRST_GROUPS = ('multitask_run', 'tests.test_reliability', 'tests.test_multihost',
                 'tests.test_deploy', 'tests.test_instance_training', 'tests.test_gpu_check',
                 'tests.test_notebook', 'official', 'tests.test_captioning',
                 'tests.test_multihost_setup', 'tests.test_end_to_end',
                 'tests.test_caption_metrics',
                 'multi_device', 'tests.test_train', 'tests.test_distributed',
                 'tests.test_model', 'tests.test_decode', 'train', 'tests.test_tasks',
                 'tests.test_keypoint_training', 'tests.test_bad_data', 'tests.test_transforms',
                 'tests.test_predict_instances', 'tests.test_predict', 'tests.test_instance_eval',
                 'tests.test_data', 'tests.test_augment', 'tests.test_no_tensorflow',
                 'tests.test_pretrained', 'tests.test_geometry', 'tests.test_coco_metrics_types',
                 'tests.test_evaluate')


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


_compiling_fast = [_SUITE_FAST_COMPILE]  # this process's current mode


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Before a test and its fixtures: XLA's default optimisation for tests marked
  `xla_default`, the suite's fast compilation for the others. Programs compiled in the
  other mode are dropped when it changes (JAX keeps them in memory under keys that do
  not name it); the persistent cache keeps both apart. main.py processes the test starts
  compile as it does."""
  fast = _SUITE_FAST_COMPILE and not item.get_closest_marker('xla_default')
  if fast != _compiling_fast[0]:
    jax.clear_caches()
    jax.config.update('jax_disable_most_optimizations', fast)
    os.environ[_FAST_COMPILE] = 'true' if fast else 'false'
    _compiling_fast[0] = fast


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """With PIX2SEQ_NO_SKIPS=1 (.ci/run) a skipped test fails: CI has the shared data and
  everything else every test needs, so a skip there is a test that did not run."""
  outcome = yield
  report = outcome.get_result()
  if report.skipped and os.environ.get('PIX2SEQ_NO_SKIPS') == '1':
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = 'failed'
    report.longrepr = f'skipped, and PIX2SEQ_NO_SKIPS=1 forbids skips: {reason}'
