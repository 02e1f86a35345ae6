"""Random in-memory batches in the pipeline's layout, for benchmarks and tests (no TF)."""

from __future__ import annotations

import numpy as np


def random_batch(rng: np.random.Generator, batch_size: int, image_size: int, length: int,
                 vocab_size: int, uniform_weights: bool = False) -> dict[str, np.ndarray]:
  """image [B, S, S, 3], input/target tokens [B, L] and loss weights [B, L]."""
  weights_shape = (batch_size, length)
  return {
      'image': rng.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
      'input_tokens': rng.integers(0, vocab_size, weights_shape).astype(np.int32),
      'target_tokens': rng.integers(0, vocab_size, weights_shape).astype(np.int32),
      'loss_weights': (np.ones(weights_shape) if uniform_weights
                       else rng.uniform(size=weights_shape)).astype(np.float32),
  }
