"""AdamW with linear warmup then linear or cosine decay, and global-norm clipping.

Weight decay skips norm scales and biases unless `train.decay_norms_and_biases` (the
official code decays every parameter); `train.grad_clip_norm` 0 does not clip (the
official fine-tuning config).

The hyperparameters are inputs of the compiled train step, not constants in it
(`optax.inject_hyperparams`): every step the loop passes `HostHyperparams(config.train)(step)`
(this step's learning rate, the moments, weight decay and clipping norm), which the step
writes into the optimizer state before the update. They are host float32 scalars: the
learning rates of the whole run are computed once on the host into a table, equal to
optax's schedule to the last bit, so that a step's inputs never wait for the device (the
schedule evaluated per step would queue behind the previous step on an accelerator). So
a changed learning rate, schedule or run length reuses the compiled step (and its
persistent-cache entry), and a run resumed with another config uses that config's values,
never stale ones from the checkpoint (the state stores the values of the last step, for
inspection).
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

from pix2seq_jax.models import backbones, tree_paths, variants
from pix2seq_jax.runtime import jit_cache


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


def host_device() -> jax.Device:
  """This process's CPU device (JAX_PLATFORMS may leave the CPU out: then its first device)."""
  try:
    return jax.local_devices(backend='cpu')[0]
  except RuntimeError:
    return jax.local_devices()[0]


def _linear(init: float, end: float, count: np.ndarray, length: int) -> np.ndarray:
  """optax.linear_schedule(init, end, length) at integer `count`s, rounded as optax rounds."""
  f32 = np.float32
  frac = f32(1) - np.clip(count, 0, length).astype(f32) / f32(length)
  return f32(init - end) * frac + f32(end)


def learning_rate_table(train: ml_collections.ConfigDict) -> np.ndarray:
  """float32 [n]: `learning_rate_schedule(train)` at steps 0..n-1, constant from n - 1 on.

  Optax's formulas in numpy float32, operation by operation as optax rounds them at one
  step; only the cosine is XLA's, on the host's CPU (numpy's differs in the last bit, and
  XLA's vectorised division differs from its scalar one, so optax itself cannot be
  evaluated on all steps at once). Tested bit for bit against optax.
  """
  f32 = np.float32
  peak, alpha = float(train.learning_rate), float(train.end_lr_factor)
  warmup = max(int(train.warmup_steps), 0)
  decay_steps = max(int(train.steps) - warmup, 1)
  steps = np.arange(warmup + decay_steps + 1)  # [n]
  count = steps - warmup  # steps into the decay
  if train.schedule == 'linear':
    decay = _linear(peak, peak * alpha, count, decay_steps)
  elif train.schedule == 'cosine':
    phase = f32(np.pi) * np.minimum(count.astype(f32), f32(decay_steps)) / f32(decay_steps)
    with jax.default_device(host_device()):
      cosine = np.asarray(jnp.cos(phase), f32)
    decay = f32(peak) * (f32(1 - alpha) * (f32(0.5) * (f32(1) + cosine)) + f32(alpha))
  else:
    raise ValueError(f"config.train.schedule={train.schedule!r}: use 'linear' or 'cosine'.")
  if warmup == 0:
    return decay.astype(f32)
  return np.where(steps < warmup, _linear(0.0, peak, steps, warmup), decay).astype(f32)


class HostHyperparams:
  """The optimizer's inputs for the update of 0-based `step`: {'learning_rate', 'b1',
  'b2', 'weight_decay', 'clip_norm'} as numpy float32 scalars (clip_norm inf: no
  clipping), read from a table made once: no device work per step."""

  def __init__(self, train: ml_collections.ConfigDict):
    self.learning_rates = learning_rate_table(train)  # [n]
    clip = train.grad_clip_norm if train.grad_clip_norm > 0 else np.inf
    self.constants = {'b1': np.float32(train.b1), 'b2': np.float32(train.b2),
                      'weight_decay': np.float32(train.weight_decay),
                      'clip_norm': np.float32(clip)}

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    rate = self.learning_rates[min(max(int(step), 0), len(self.learning_rates) - 1)]
    return {'learning_rate': rate, **self.constants}


def _clipped_adamw(learning_rate, b1, b2, weight_decay, clip_norm, decay_all=False):
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay,
                                 mask=_decay_everything if decay_all else _decay_mask))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipping then AdamW, their hyperparameters held in the state (set every step by
  `with_hyperparams`); frozen parameters' updates set to zero.

  Its structure depends only on `config.model`'s frozen stages (one object per structure
  in a process, so that train steps built from it are traced once); the hyperparameters
  start at 0 and take `HostHyperparams(config.train)(step)` at every step.
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
