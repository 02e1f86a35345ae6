"""What two processes agree on before training: the image files they skip, and the
parameters they start from (`model.init_from`, `model.pretrained_backbone`) with the
state split over both (`train.shard_params`).

Each case starts two real processes on localhost, one CPU device each, joined by
`jax.distributed.initialize` with explicit arguments (tests/test_distributed.py checks
the launchers' variables; tests/test_multihost.py trains and evaluates with main.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from pix2seq_jax.config import workdir_config
from pix2seq_jax.data import coco_json, image_check, shapes
from pix2seq_jax.models import tree_paths
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import init_from, optimizer
from pix2seq_jax.train import state as state_lib
from pix2seq_jax.workdir import checkpoints
from pix2seq_jax.workdir import files as workdir_lib
from tests import tiny

# Each worker joins as process argv[2] of 2 at argv[1], then runs its case.
_JOIN = r'''
import sys
import jax
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from pix2seq_jax.runtime import compilation_cache
compilation_cache.enable()
'''
# argv[3]: the annotation file; argv[4]: this process's images folder. Prints the checked
# split as one JSON line.
_CHECK_WORKER = _JOIN + r'''
import json, os
from pix2seq_jax.data import coco_json, sources
split = sources.check_images(coco_json.load_split(sys.argv[3], sys.argv[4]), max_instances=8)
print(json.dumps({'image_ids': [r.image_id for r in split.records],
                  'orientations': [r.orientation for r in split.records],
                  'skipped': [(os.path.basename(p), problem, detail)
                              for p, problem, detail in split.skipped_images],
                  'dropped': split.dropped}))
'''
# argv[3]: the init_from workdir; argv[4]: the pretrained ResNet-50 file; argv[5]: the
# .npz this process writes: the parameters and batch statistics of both states, every
# array made whole by one jitted program here (not by the code under test).
_STATE_WORKER = _JOIN + r'''
import numpy as np
from pix2seq_jax.parallel import mesh as mesh_lib
from tests import test_multihost_setup as case
mesh = mesh_lib.make_mesh()
states = {'init_from': case.init_from_state(sys.argv[3], mesh),
          'pretrained': case.pretrained_state(sys.argv[4], mesh)}
arrays = {}
for name, state in states.items():
  flat = case.flat_model_state(state)
  for path, x in flat.items():
    assert x.sharding == mesh_lib.leaf_sharding(x.shape, mesh, True), (path, x.sharding)
    arrays[f'{name}/{path}/split'] = np.asarray(not x.sharding.is_fully_replicated)
  whole = jax.jit(lambda t: t, out_shardings=mesh_lib.replicated(mesh))(flat)
  arrays.update({f'{name}/{path}': np.asarray(x.addressable_data(0))
                 for path, x in whole.items()})
np.savez(sys.argv[5], **arrays)
'''
_CLEARED = ('SLURM_', 'OMPI_', 'PMI_', 'PMIX_', 'JAX_COORDINATOR', 'JAX_NUM_PROCESSES',
            'JAX_PROCESS_ID', 'JAX_LOCAL_DEVICE_IDS')
_TIMEOUT_S = 180
# One class of the init_from source renamed: its rows keep their fresh values.
_RENAMED = {'red circle': 'ball'}
_VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run_pair(worker: str, args: list[list[str]]) -> list[str]:
  """Runs `worker` as processes 0 and 1 of 2 (args[r] for process r, one CPU device
  each); returns their stdout. Both are killed if either overruns."""
  address = f'localhost:{_free_port()}'
  env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  # Output goes to files: a full pipe would stop one process while the other waits for it.
  outs = [(tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')) for _ in range(2)]
  with tiny.killed_at_exit([]) as processes:
    for rank in range(2):
      processes.append(subprocess.Popen(
          [sys.executable, '-c', worker, address, str(rank), *args[rank]], cwd=tiny.ROOT,
          env=env, stdout=outs[rank][0], stderr=outs[rank][1], text=True))
    codes = [p.wait(timeout=_TIMEOUT_S) for p in processes]
  stdouts = []
  for code, (stdout, stderr) in zip(codes, outs):
    stdout.seek(0)
    stderr.seek(0)
    assert code == 0, stderr.read()[-3000:]
    stdouts.append(stdout.read())
  return stdouts


def flat_model_state(state: state_lib.TrainState) -> dict[str, jax.Array]:
  """{'params/...' or 'batch_stats/...': array} of `state`."""
  return {f'{collection}/{"/".join(map(str, path))}': x
          for collection in ('params', 'batch_stats')
          for path, x in tree_paths.flatten(getattr(state, collection).to_pure_dict()).items()}


def _renamed_categories(workdir: str) -> coco_json.CategoryMap:
  categories = coco_json.CategoryMap.from_file(os.path.join(workdir, workdir_lib.CATEGORIES))
  return coco_json.CategoryMap(categories.category_ids,
                               tuple(_RENAMED.get(n, n) for n in categories.names))


def _fresh_state(config, vocab: vocab_lib.Vocabulary, mesh) -> state_lib.TrainState:
  """A stand-in for `create_train_state`'s fresh state that compiles in a fraction of
  its time: parameters and batch statistics of distinct values (a pure function of each
  array's place), made in their train-state shardings on `mesh` by one jitted program.
  No optimizer state: loading parameters ignores it."""
  abstract = state_lib.abstract_train_state(config, vocab, mesh,
                                            optimizer.make_optimizer(config))
  model = (abstract.params, abstract.batch_stats)
  leaves, treedef = jax.tree.flatten(model)

  def values():
    return treedef.unflatten([
        jnp.sin(jnp.arange(x.size, dtype=jnp.float32) + i).reshape(x.shape).astype(x.dtype)
        for i, x in enumerate(leaves)])
  params, batch_stats = jax.jit(values, out_shardings=jax.tree.map(lambda x: x.sharding,
                                                                   model))()
  return state_lib.TrainState(step=abstract.step, params=params, batch_stats=batch_stats,
                              opt_state=None)


def init_from_state(source_workdir: str, mesh) -> state_lib.TrainState:
  """The tiny model's state, split over `mesh` (`train.shard_params`), started from
  `source_workdir` (one class renamed: its rows keep their fresh values)."""
  config = tiny.tiny_config('unused')
  config.train.shard_params = True
  config.model.init_from = source_workdir
  config = tiny.frozen(config)
  categories = _renamed_categories(source_workdir)
  vocab = vocab_lib.for_categories(config.model.vocabulary, categories.category_ids,
                                   config.data.num_bins)
  return init_from.with_init_from(_fresh_state(config, vocab, mesh), config, vocab,
                                  categories, mesh)


def pretrained_state(weights_path: str, mesh) -> state_lib.TrainState:
  """An R50 model's state, split over `mesh`, its backbone loaded from `weights_path`."""
  config = tiny.tiny_config('unused')
  config.model.variant = 'r50'
  config.model.pretrained_backbone = weights_path
  config.model.image_normalization = 'imagenet'
  config.train.shard_params = True
  config = tiny.frozen(config)
  state, _ = state_lib.with_pretrained_backbone(_fresh_state(config, _VOCAB, mesh), config,
                                                mesh)
  return state


def test_processes_skip_the_files_any_of_them_cannot_read(shapes_dir, tmp_path):
  """Process 1 reads a copy of the images in which one file is cut short (a transient
  read error, a host-local copy): both skip that file and keep the same records."""
  images, annotations = shapes.ensure_dataset(shapes_dir, seed=0, num_train=24,
                                              num_val=6)['val']
  split = coco_json.load_split(annotations, images)
  copy = str(tmp_path / 'images')
  shutil.copytree(images, copy)
  cut = split.records[2]
  with open(os.path.join(copy, os.path.basename(cut.path)), 'r+b') as f:
    f.truncate(os.path.getsize(cut.path) // 2)
  outputs = _run_pair(_CHECK_WORKER, [[annotations, images], [annotations, copy]])
  seen = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  expected = [r.image_id for r in split.records if r.image_id != cut.image_id]
  assert seen[0]['image_ids'] == seen[1]['image_ids'] == expected
  assert seen[0]['orientations'] == seen[1]['orientations']
  name = os.path.basename(cut.path)
  assert seen[0]['skipped'] == [[name, 'truncated', 'as read by process 1']], seen[0]
  assert seen[1]['skipped'] == [[name, 'truncated', 'JPEG without its end marker']], seen[1]
  assert seen[0]['dropped'] == seen[1]['dropped'] == {'image_truncated': 1}


def test_agreement_takes_the_first_process_problem_and_refuses_other_orientations():
  files = [(f'{i}.jpg', 10, 20) for i in range(4)]
  here = image_check.CheckReport(
      [image_check.FileCheck(), image_check.FileCheck(orientation=6),
       image_check.FileCheck(), image_check.FileCheck('missing')], [], {})
  codes = np.array([[[0, 1], [0, 6], [0, 1], [1, 1]],  # this process (0)
                    [[4, 1], [0, 6], [0, 3], [0, 1]],
                    [[5, 1], [0, 6], [0, 1], [0, 1]]], np.int32)  # [processes, files, 2]
  np.testing.assert_array_equal(image_check.verdict_codes(here), codes[0])
  agreed = image_check.agreed(files, here, codes)
  assert [c.problem for c in agreed.checks] == ['truncated', '', 'differs_between_processes',
                                                'missing']
  assert agreed.checks[0].detail == 'as read by process 1'
  assert agreed.checks[1].orientation == 6 and agreed.fixed == {'exif_rotated': 1}
  assert agreed.skipped_counts == {'truncated': 1, 'differs_between_processes': 1,
                                   'missing': 1}


def test_split_state_starts_from_init_from_and_pretrained_as_one_process(tiny_workdir,
                                                                         tmp_path):
  """`train.shard_params` over two processes: `model.init_from` and
  `model.pretrained_backbone` read arrays neither process holds whole, and both end with
  the parameters that one process computes."""
  from tests.test_pretrained import torchvision_resnet50_state_dict
  weights = torchvision_resnet50_state_dict(3)
  weights_path = str(tmp_path / 'resnet50.safetensors')
  save_file(weights, weights_path)
  outs = [str(tmp_path / f'process_{rank}.npz') for rank in range(2)]
  _run_pair(_STATE_WORKER, [[tiny_workdir, weights_path, out] for out in outs])
  got = [dict(np.load(out)) for out in outs]

  one = mesh_lib.make_mesh(jax.devices()[:1])
  expected = {f'{name}/{path}': np.asarray(x)
              for name, state in (('init_from', init_from_state(tiny_workdir, one)),
                                  ('pretrained', pretrained_state(weights_path, one)))
              for path, x in flat_model_state(state).items()}
  assert {k for k in got[0] if not k.endswith('/split')} == expected.keys()
  for path, value in expected.items():
    for process in got:
      np.testing.assert_array_equal(process[path], value, err_msg=path)
  for name in ('init_from', 'pretrained'):  # some arrays of each were split in two
    assert any(got[0][f'{k}/split'] for k in expected if k.startswith(name)), name
  # What was loaded: the source's arrays, the file's backbone.
  source = _source_params(tiny_workdir)
  kernel = 'params/backbone/blocks/1/conv1/kernel'
  assert got[0][f'init_from/{kernel}/split']
  np.testing.assert_array_equal(expected[f'init_from/{kernel}'], source[kernel])
  kernel = 'pretrained/params/backbone/blocks/0/conv2/kernel'
  assert got[0][f'{kernel}/split']
  np.testing.assert_array_equal(expected[kernel],
                                weights['layer1.0.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(expected['pretrained/batch_stats/backbone/stem_norm/var'],
                                weights['bn1.running_var'])


def _source_params(workdir: str) -> dict[str, np.ndarray]:
  """{'params/...': array} of the latest checkpoint in `workdir`, read on one device."""
  config = workdir_config.load(workdir)
  categories = coco_json.CategoryMap.from_file(os.path.join(workdir, workdir_lib.CATEGORIES))
  vocab = vocab_lib.for_categories(config.model.vocabulary, categories.category_ids,
                                   config.data.num_bins)
  manager = checkpoints.make_manager(workdir)
  restored = checkpoints.restore_model(manager, checkpoints.model_template(
      config, vocab, mesh_lib.make_mesh(jax.devices()[:1])))
  manager.close()
  return {f'params/{"/".join(map(str, path))}': np.asarray(x)
          for path, x in tree_paths.flatten(restored['params'].to_pure_dict()).items()}
