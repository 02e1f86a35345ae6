"""Prints the losses of 3 train steps of the tiny model on fixed batches, as JSON.

Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=N to compare
device counts: the global batch and seed are the same, so the losses must match.
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
  vocab = vocab_lib.Vocabulary(num_classes=5, num_bins=config.data.num_bins)
  mesh = sharding.make_mesh()
  tx = optim.make_optimizer(config.train)
  state = train_step.create_train_state(config, vocab, mesh, tx)
  step = train_step.make_train_step(config, train_step.model_graphdef(config, vocab), mesh, tx)
  rng = np.random.default_rng(0)
  length = vocab_lib.sequence_length(config.data.max_instances)
  losses = []
  for _ in range(3):
    batch = synthetic.random_batch(rng, 8, 64, length, vocab.size)
    state, metrics = step(state, sharding.put_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  print(json.dumps({'devices': jax.device_count(), 'losses': losses}))


if __name__ == '__main__':
  main()
