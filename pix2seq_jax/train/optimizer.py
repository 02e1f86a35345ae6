"""AdamW with linear warmup then linear or cosine decay, and global-norm clipping.

Weight decay skips norm scales and biases unless `train.decay_norms_and_biases` (the
official code decays every parameter); `train.grad_clip_norm` 0 does not clip (the
official fine-tuning config).

The hyperparameters are inputs of the compiled train step, not constants in it
(`optax.inject_hyperparams`): every step the loop passes `hyperparams(config.train,
step)` (this step's learning rate, the moments, weight decay and clipping norm), which
the step writes into the optimizer state before the update. So a changed learning
rate, schedule or run length reuses the compiled step (and its persistent-cache entry),
and a run resumed with another config uses that config's values, never stale ones from
the checkpoint (the state stores the values of the last step, for inspection).
Parameters of frozen backbone stages (`model.frozen_backbone_stages`) and of frozen batch
norms (`model.frozen_batch_norm`) get no update.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pix2seq_jax import jit_cache, tree_paths
from pix2seq_jax.models import backbones, variants


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup over `train.warmup_steps`, then `train.schedule` decay to the end rate
  at `train.steps` (epoch fields already resolved, config/resolve.py)."""
  peak, end = train.learning_rate, train.learning_rate * train.end_lr_factor
  warmup = max(int(train.warmup_steps), 0)
  decay_steps = max(int(train.steps) - warmup, 1)
  if train.schedule == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif train.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=train.end_lr_factor)
  else:
    raise ValueError(f"config.train.schedule={train.schedule!r}: use 'linear' or 'cosine'.")
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params):
  """Weight decay on matrices (kernels, embeddings), not on norm scales and biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _decay_everything(params):
  """Weight decay on every parameter, as the official Pix2Seq (Keras AdamW)."""
  return jax.tree.map(lambda p: True, params)


def frozen_prefixes(model: ml_collections.ConfigDict) -> tuple[tuple[str, ...], ...]:
  """Parameter path prefixes, from the model's root, that `model.frozen_backbone_stages`
  and `model.frozen_batch_norm` freeze (e.g. ('backbone', 'blocks', '0'))."""
  if not model.frozen_backbone_stages and not model.frozen_batch_norm:
    return ()
  backbone = backbones.abstract_backbone(variants.get_spec(model.variant).backbone)
  backbones.freeze(backbone, model.frozen_backbone_stages, model.frozen_batch_norm)
  return tuple(('backbone',) + path for path in backbone.frozen_paths())


def frozen_mask(params: Any, prefixes: tuple[tuple[str, ...], ...]) -> Any:
  """True for the parameters under any of `prefixes`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(tree_paths.path_names(path)[:len(p)] == p for p in prefixes), params)


def hyperparams(train: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
  """The optimizer's inputs for the update of 0-based `step`: {'learning_rate', 'b1',
  'b2', 'weight_decay', 'clip_norm'} as float32 scalars (clip_norm inf: no clipping)."""
  clip = train.grad_clip_norm if train.grad_clip_norm > 0 else np.inf
  values = {'learning_rate': learning_rate_schedule(train)(step), 'b1': train.b1,
            'b2': train.b2, 'weight_decay': train.weight_decay, 'clip_norm': clip}
  return {k: np.float32(v) for k, v in values.items()}


def _clipped_adamw(learning_rate, b1, b2, weight_decay, clip_norm, decay_all=False):
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay,
                                 mask=_decay_everything if decay_all else _decay_mask))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipping then AdamW, their hyperparameters held in the state (set every step by
  `with_hyperparams`); frozen parameters' updates set to zero.

  Its structure depends only on `config.model`'s frozen stages (one object per structure
  in a process, so that train steps built from it are traced once); the hyperparameters
  start at 0 and take `hyperparams(config.train, step)` at every step.
  """
  prefixes = frozen_prefixes(config.model)
  decay_all = bool(config.train.decay_norms_and_biases)

  def build() -> optax.GradientTransformation:
    adamw = optax.inject_hyperparams(_clipped_adamw, static_args=('decay_all',))(
        learning_rate=0.0, b1=0.0, b2=0.0, weight_decay=0.0, clip_norm=0.0,
        decay_all=decay_all)
    frozen = (optax.masked(optax.set_to_zero(), lambda params: frozen_mask(params, prefixes))
              if prefixes else optax.identity())
    return optax.chain(adamw, frozen)

  return jit_cache.cached(('optimizer', prefixes, decay_all), build)


def with_hyperparams(opt_state, values: dict) -> tuple:
  """`make_optimizer`'s state with the hyperparameters replaced by `values` (traceable)."""
  adamw, *rest = opt_state
  current = adamw.hyperparams
  updated = {**current, **{k: jnp.asarray(v, current[k].dtype) for k, v in values.items()}}
  return (adamw._replace(hyperparams=updated), *rest)
