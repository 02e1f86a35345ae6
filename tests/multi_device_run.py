"""One process with 8 CPU devices: train-step losses of the tests' tiny model and batch
(tests/tiny.py) on a mesh of 8 devices, and on 4 of them with the state sharded. Writes
one JSON object to OUT. `losses` also runs in the test process, for one device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multi_device_run OUT

Also the configs and fixed-batch steps of tests/test_instance_training.py
(`instance_config`, `instance_losses`) and tests/test_multitask.py (`multitask_config`,
`multitask_losses`), whose 4-device half runs here on the batch that test saved, in a
process with 4 CPU devices; this module imports no TensorFlow, so that process starts in
a third of the time:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.multi_device_run \
      --multitask FOLDER OUT
"""

import json
import os
import sys

import jax
import ml_collections
import numpy as np

from pix2seq_jax.config import default, resolve
from pix2seq_jax.data import synthetic
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import compilation_cache
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import optimizer
from pix2seq_jax.train import state as state_lib
from pix2seq_jax.train import step as step_lib
from tests import tiny

STEPS = 3


def losses(devices: int, shard: bool) -> tuple[list[float], dict]:
  """The losses of STEPS steps on the first `devices` devices, and the largest parameter's
  layout."""
  config = tiny.tiny_config('unused')
  config.train.shard_params = shard
  config = tiny.frozen(config)
  vocab = vocab_lib.Vocabulary(num_classes=9, num_bins=config.data.num_bins)  # shapes'
  batch_size = config.train.batch_size
  mesh = mesh_lib.make_mesh(jax.devices()[:devices])
  tx = optimizer.make_optimizer(config)
  state = state_lib.create_train_state(config, vocab, mesh, tx)
  step = step_lib.train_step_for(config, build.model_graphdef(config, vocab), mesh, tx)
  rng = np.random.default_rng(0)
  length = vocab_lib.sequence_length(config.data.max_instances)
  values = []
  for index in range(STEPS):
    batch = synthetic.random_batch(rng, batch_size, config.data.image_size, length,
                                   vocab.size)
    state, metrics = step(state, mesh_lib.put_batch(batch, mesh), index)
    values.append(float(metrics['loss']))
  largest = max(jax.tree.leaves(state.params), key=lambda x: x.size)
  return values, {'largest_param': list(largest.shape),
                  'largest_param_shard_shapes': [
                      list(s) for s in {s.data.shape for s in largest.addressable_shards}]}


INSTANCE_TASK = 'instance_segmentation'
INSTANCE_STEPS = 6


def instance_config(coco_dir: str) -> ml_collections.ConfigDict:
  """vit_nano on 64-px coco_mini: 2 objects per image, 8 polygon points (21 tokens)."""
  config = default.get_config()
  config.task = INSTANCE_TASK
  data = config.data
  data.source, data.coco_dir = 'coco_files', coco_dir
  data.image_size, data.max_instances, data.max_points = 64, 2, 8
  data.eos_weight = default.SEGMENTATION_EOS_WEIGHT
  data.noise_objects = data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'
  config.model.variant = 'vit_nano'
  config.model.dropout = config.model.drop_path = 0.0
  config.train.batch_size = config.eval.batch_size = 2
  config.train.steps, config.train.warmup_steps = INSTANCE_STEPS, 0
  config.train.learning_rate = 1e-3
  config.train.log_every = config.train.checkpoint_every = 1
  config.eval.max_images = 2
  return config


def fixed_batch_losses(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                       batch: dict, devices: int, steps: int) -> list[dict[str, float]]:
  """The loss metrics (loss, and a multi-task step's loss_<task>) of `steps` steps on one
  fixed batch on the first `devices` devices."""
  config = resolve.resolve(config)
  mesh = mesh_lib.make_mesh(jax.devices()[:devices])
  tx = optimizer.make_optimizer(config)
  state = state_lib.create_train_state(config, vocab, mesh, tx)
  step = step_lib.train_step_for(config, build.model_graphdef(config, vocab), mesh, tx)
  placed = mesh_lib.put_batch(batch, mesh)
  values = []
  for index in range(steps):
    state, metrics = step(state, placed, index)
    values.append({k: float(v) for k, v in metrics.items() if k.startswith('loss')})
  return values


def instance_losses(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                    batch: dict[str, np.ndarray], devices: int) -> list[float]:
  """The losses of INSTANCE_STEPS steps on one fixed batch on the first `devices`
  devices."""
  return [m['loss'] for m in fixed_batch_losses(config, vocab, batch, devices, INSTANCE_STEPS)]


MULTITASK_STEPS = 3
MULTITASK_RUN_STEPS = 6  # of the session's multi-task run (conftest.multitask_run)
MULTITASK_WEIGHTS = {'object_detection': 1.0, 'instance_segmentation': 0.5, 'captioning': 2.0}


def multitask_config(coco_dir: str, tokenizer: str) -> ml_collections.ConfigDict:
  """vit_nano on 64-px coco_mini learning detection (2 objects), segmentation (2 objects
  of 4 points) and captioning (2 captions of 12 tokens) in one model, weighted
  MULTITASK_WEIGHTS; batch 4 per task."""
  config = default.get_config()
  config.task = 'object_detection'
  data = config.data
  data.source, data.coco_dir = 'coco_files', coco_dir
  data.image_size, data.max_instances = 64, 2
  config.model.vocabulary = 'official_multitask'
  config.model.variant = 'vit_nano'
  config.model.dropout = config.model.drop_path = 0.0
  quiet = dict(noise_objects=False, corrupt_classes=False)
  config.tasks.object_detection = dict(weight=MULTITASK_WEIGHTS['object_detection'], data={})
  config.tasks.instance_segmentation = dict(
      weight=MULTITASK_WEIGHTS['instance_segmentation'],
      data=dict(max_points=4, eos_weight=default.SEGMENTATION_EOS_WEIGHT, **quiet))
  config.tasks.captioning = dict(weight=MULTITASK_WEIGHTS['captioning'], data=dict(
      tokenizer=tokenizer, max_text_len=12, captions_per_image=2, **quiet))
  config.train.batch_size, config.eval.batch_size = 4, 2
  config.train.steps, config.train.warmup_steps = MULTITASK_STEPS, 0
  config.train.learning_rate = 1e-3
  config.train.log_every = config.train.checkpoint_every = 1
  config.eval.max_images = 1
  return config


def multitask_losses(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                     batch: dict[str, dict[str, np.ndarray]],
                     devices: int) -> list[dict[str, float]]:
  """The metrics (loss and loss_<task>) of MULTITASK_STEPS steps on one fixed multi-task
  batch on the first `devices` devices."""
  return fixed_batch_losses(config, vocab, batch, devices, MULTITASK_STEPS)


def multitask_main(folder: str, out: str) -> None:
  """The metrics of the multi-task batch test_multitask saved in `folder` (batch.npz with
  task/field keys, and run.json: coco_dir, tokenizer, category ids) on 4 devices, with
  2 accumulation steps."""
  jax.config.update('jax_disable_most_optimizations', True)
  compilation_cache.enable()
  assert jax.device_count() == 4, jax.devices()
  with open(os.path.join(folder, 'run.json')) as f:
    run = json.load(f)
  batch = {}
  for key, value in np.load(os.path.join(folder, 'batch.npz')).items():
    task, field = key.split('/')
    batch.setdefault(task, {})[field] = value
  vocab = vocab_lib.for_categories('official_multitask', run['category_ids'], 1000)
  config = multitask_config(run['coco_dir'], run['tokenizer'])
  config.train.grad_accum_steps = 2
  with open(out, 'w') as f:
    json.dump(multitask_losses(config, vocab, batch, 4), f)


def main(out: str) -> None:
  jax.config.update('jax_disable_most_optimizations', True)
  compilation_cache.enable()
  assert jax.device_count() == 8, jax.devices()
  result = {'losses': {}}
  for name, devices, shard in (('8', 8, False), ('4_sharded', 4, True)):
    result['losses'][name], layout = losses(devices, shard)
    if shard:
      result.update(layout)
  with open(out, 'w') as f:
    json.dump(result, f)


if __name__ == '__main__':
  if sys.argv[1] == '--multitask':
    multitask_main(*sys.argv[2:])
  else:
    main(*sys.argv[1:])
