"""One process with 8 CPU devices: train-step losses of the tests' tiny model and batch
(tests/tiny.py) on a mesh of 8 devices, and on 4 of them with the state sharded. Writes
one JSON object to OUT. `losses` also runs in the test process, for one device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multi_device_run OUT
"""

import json
import sys

import jax
import numpy as np

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
  main(*sys.argv[1:])
