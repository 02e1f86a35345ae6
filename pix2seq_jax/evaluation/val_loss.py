"""Teacher-forced validation likelihood: loss and per-token perplexity, logged at each eval.

  val_loss             sum(w * CE) / sum(w), the training loss on the val split (no
                       augmentation: real objects weigh 1, EOS `data.eos_weight`)
  val_perplexity       exp(mean CE) over every target token with a weight (objects, EOS)
  val_perplexity_coord the same over coordinate tokens only
  val_perplexity_class the same over class tokens only
Padding examples (eval `mask` False) count for nothing. Instance tasks' batches ([B, n, L]
tokens, `config.task`) count every token of every sequence; their class targets weigh 0
(the official), so val_perplexity_class is NaN there.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import jit_cache, precision
from pix2seq_jax.tasks import vocab as vocab_lib

BATCH_KEYS = ('image', 'input_tokens', 'target_tokens', 'loss_weights', 'mask')
_SUMS = ('weighted_nll', 'weight', 'nll', 'tokens', 'coord_nll', 'coord_tokens',
         'class_nll', 'class_tokens')


def make_val_loss_fn(graphdef: nnx.GraphDef, vocab: vocab_lib.Vocabulary, mesh: Mesh,
                     matmul_precision: str = 'default') -> Callable:
  """Jitted (params, batch_stats, batch with BATCH_KEYS) -> {sum name: scalar} (one per
  model, mesh and precision in a process; precision.py)."""

  def sums(params, batch_stats, batch):
    params, batch_stats = mesh_lib.gathered((params, batch_stats), mesh)
    model = nnx.merge(graphdef, params, batch_stats)
    logits = model(batch['image'], batch['input_tokens'], train=False)  # [B, (n,) L, V]
    nll = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch['target_tokens'])  # [B, (n,) L]
    mask = batch['mask'].reshape(batch['mask'].shape + (1,) * (nll.ndim - 1))
    weights = batch['loss_weights'] * mask
    counted = weights > 0
    coord = counted & vocab.is_coord(batch['target_tokens'])
    label = counted & vocab.is_class(batch['target_tokens'])
    return {'weighted_nll': jnp.sum(nll * weights), 'weight': jnp.sum(weights),
            'nll': jnp.sum(nll * counted), 'tokens': jnp.sum(counted),
            'coord_nll': jnp.sum(nll * coord), 'coord_tokens': jnp.sum(coord),
            'class_nll': jnp.sum(nll * label), 'class_tokens': jnp.sum(label)}

  # Parameters come replicated or sharded (train.shard_params); `sums` gathers them.
  key = ('val_loss', graphdef, vocab, mesh, matmul_precision)
  return jit_cache.cached(key, lambda: jax.jit(
      precision.traced(sums, matmul_precision),
      in_shardings=(None, None, mesh_lib.batch_sharded(mesh)),
      out_shardings=mesh_lib.replicated(mesh)))


class ValLoss:
  """Adds up the sums of many batches and turns them into the logged metrics."""

  def __init__(self):
    self.totals = dict.fromkeys(_SUMS, 0.0)

  def add(self, sums: dict[str, jax.Array]) -> None:
    for key, value in jax.device_get(sums).items():
      self.totals[key] += float(value)

  def metrics(self) -> dict[str, float]:
    t = self.totals
    ratio = lambda a, b: t[a] / t[b] if t[b] else float('nan')
    return {'val_loss': ratio('weighted_nll', 'weight'),
            'val_perplexity': float(np.exp(ratio('nll', 'tokens'))),
            'val_perplexity_coord': float(np.exp(ratio('coord_nll', 'coord_tokens'))),
            'val_perplexity_class': float(np.exp(ratio('class_nll', 'class_tokens')))}
