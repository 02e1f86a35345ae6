"""Prints the losses of 3 train steps of the tiny model on fixed batches, as JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=N python tests/multi_device_losses.py ROOT
      [--shard_params]

The global batch and seed are the same for every device count, so the losses must
match; --shard_params shards the state over the devices (FSDP-style) and also reports
how the largest parameter is laid out.
"""

import json
import sys

import jax
import numpy as np

jax.config.update('jax_disable_most_optimizations', True)
sys.path.insert(0, sys.argv[1])

from pix2seq_jax import optim, sharding, synthetic, train_step  # noqa: E402
from pix2seq_jax import vocab as vocab_lib  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def main():
  config = tiny_config('unused')
  config.train.batch_size = 8
  config.train.shard_params = '--shard_params' in sys.argv
  vocab = vocab_lib.Vocabulary(num_classes=5, num_bins=config.data.num_bins)
  mesh = sharding.make_mesh()
  tx = optim.make_optimizer(config)
  state = train_step.create_train_state(config, vocab, mesh, tx)
  step = train_step.make_train_step(config, train_step.model_graphdef(config, vocab), mesh, tx)
  rng = np.random.default_rng(0)
  length = vocab_lib.sequence_length(config.data.max_instances)
  losses = []
  for _ in range(3):
    batch = synthetic.random_batch(rng, 8, 64, length, vocab.size)
    state, metrics = step(state, sharding.put_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  leaves = jax.tree.leaves(state.params)
  largest = max(leaves, key=lambda x: x.size)
  shard_shapes = {tuple(s.data.shape) for s in largest.addressable_shards}
  print(json.dumps({'devices': jax.device_count(), 'losses': losses,
                    'largest_param': list(largest.shape),
                    'largest_param_shard_shapes': [list(s) for s in shard_shapes]}))


if __name__ == '__main__':
  main()
