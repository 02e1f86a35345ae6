"""AdamW with linear warmup then linear or cosine decay, and global-norm clipping.

Parameters of frozen backbone stages (`model.frozen_backbone_stages`) get no update.
"""

from __future__ import annotations

import copy
import math

import jax
import ml_collections
import optax

from pix2seq_jax import tree_paths
from pix2seq_jax.models import backbones, variants


def resolve_epochs(config: ml_collections.ConfigDict,
                   num_train_images: int) -> ml_collections.ConfigDict:
  """With `train.epochs` > 0: a copy whose steps and warmup_steps count those epochs.

  steps = ceil(epochs * images / batch_size); warmup_steps = round(warmup_epochs *
  images / batch_size). Without epochs the config is returned unchanged.
  """
  train = config.train
  if train.epochs <= 0:
    return config
  resolved = copy.deepcopy(config)
  steps_per_epoch = num_train_images / train.batch_size
  resolved.train.steps = max(1, math.ceil(train.epochs * steps_per_epoch))
  resolved.train.warmup_steps = round(train.warmup_epochs * steps_per_epoch)
  return resolved


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
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


def frozen_prefixes(model: ml_collections.ConfigDict) -> tuple[tuple[str, ...], ...]:
  """Parameter path prefixes, from the model's root, that `model.frozen_backbone_stages`
  freezes (e.g. ('backbone', 'blocks', '0'))."""
  if not model.frozen_backbone_stages:
    return ()
  backbone = backbones.abstract_backbone(variants.get_spec(model.variant).backbone)
  backbones.freeze(backbone, model.frozen_backbone_stages, model.frozen_batch_norm)
  return tuple(('backbone',) + path for path in backbone.frozen_paths())


def frozen_mask(params, prefixes: tuple[tuple[str, ...], ...]):
  """True for the parameters under any of `prefixes`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(tree_paths.path_names(path)[:len(p)] == p for p in prefixes), params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW on the schedule, after clipping; frozen parameters' updates set to zero."""
  train = config.train
  tx = optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2,
                   weight_decay=train.weight_decay, mask=_decay_mask)
  if train.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), tx)
  prefixes = frozen_prefixes(config.model)
  if prefixes:
    tx = optax.chain(tx, optax.masked(optax.set_to_zero(),
                                      lambda params: frozen_mask(params, prefixes)))
  return tx
