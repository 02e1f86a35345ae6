"""The jitted, data-parallel train step: a pure function of (state, batch).

`nnx.merge` rebuilds the model from its static graphdef and the state's parameters
inside the jitted function. Batches are split over 'data'; the state is replicated, or
with `train.shard_params` sharded over 'data' (parallel/mesh.py): the step then all-gathers the
parameters for the model and constrains gradients and the new state back to their shards,
which XLA turns into reduce-scatters.

Mixed precision (`train.compute_dtype='bfloat16'`): parameters and optimizer state stay
float32; a bfloat16 copy of the parameters runs the model, so gradients arrive in
float32 through the cast. Gradient accumulation (`train.grad_accum_steps=k`) scans over
k micro-batches (rows j, j+k, j+2k, ... of the global batch, so every device keeps a
share), sums the weighted token losses, their weights and gradients, and normalises
once: the same update as one step on the whole batch, except that batch norm sees the
statistics of each micro-batch.

Instance tasks (`config.task='instance_segmentation'`) bring n sequences per image,
tokens and weights [B, n, L]: the model encodes each image once for its n sequences and
the loss is the same weighted mean over every token of the batch (the official
`ar_model.Model.compute_loss`); the batch still splits over devices along B.

Multi-task runs (`config.tasks`) bring one batch per task, {task: batch}: the model runs
once on each, and the loss is the sum of the tasks' losses (each its own weighted mean)
times their weights, as the official multi-task trainer sums its tasks' gradients.

The step's inputs besides state and batch are host values (numpy scalars and the seed's
key data), made without device work, and its random key is derived inside from the
state's step counter: the host dispatches step after step without waiting for the device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.config import multitask, resolve
from pix2seq_jax.data import canvas
from pix2seq_jax.models import counted_rngs
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import jit_cache, precision
from pix2seq_jax.train import optimizer
from pix2seq_jax.train.state import TrainState


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array,
                           weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sum of weighted token cross-entropies and sum of weights (over the global batch)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(losses * weights), jnp.sum(weights)


def cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
  """Casts the floating-point leaves of `tree` to `dtype`."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _micro_batches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
  """[B, ...] -> [k, B/k, ...]; micro-batch j holds rows j, j + k, j + 2k, ..."""
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _multitask_loss_fn(graphdef: nnx.GraphDef, compute_dtype: jnp.dtype,
                       task_weights: tuple[tuple[str, float], ...],
                       normalisers: dict[str, jax.Array]) -> Callable:
  """The loss of a multi-task step as `train_step`'s `loss_sum`: (params, batch_stats,
  {task: batch}, rng) -> (sum_t weight_t * sum(w * CE)_t / normaliser_t, ({task: its
  weighted mean loss}, batch stats)). Each task's batch runs the model once (the tasks in
  `task_weights` order, batch statistics passed on), its dropout keyed by the task's
  index; `normalisers` are the tasks' total token weights over the global batch, so that
  micro-batches add up to the whole batch's loss."""
  def loss_sum(params, batch_stats, batches, rng):
    total, parts = jnp.zeros(()), {}
    for index, (name, weight) in enumerate(task_weights):
      micro = batches[name]
      model = nnx.merge(graphdef, cast_floats(params, compute_dtype), batch_stats, copy=True)
      logits = model(canvas.model_images(micro), micro['input_tokens'], train=True,
                     rngs=counted_rngs.CountedRngs(jax.random.fold_in(rng, index)))
      task_total, _ = weighted_cross_entropy(logits, micro['target_tokens'],
                                             micro['loss_weights'])
      parts[name] = task_total / normalisers[name]
      total = total + weight * parts[name]
      batch_stats = nnx.state(model, nnx.BatchStat)
    return total, (parts, batch_stats)
  return loss_sum


def train_step(state: TrainState, batch: dict[str, jax.Array], hyperparams: dict[str, jax.Array],
               seed_key_data: jax.Array, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation,
               compute_dtype: jnp.dtype = jnp.float32, grad_accum_steps: int = 1,
               sharded_over: Mesh | None = None,
               task_weights: tuple[tuple[str, float], ...] | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW step on the global batch; returns the new state and scalar metrics.

  `hyperparams`: the optimizer's inputs for this step (`optimizer.HostHyperparams`).
  `seed_key_data`: uint32 [2], `seed_key_data(config.seed)`; the step's draws use its key
  folded with the state's step counter.
  `sharded_over`: the mesh whose 'data' axis shards the state (train.shard_params).
  `task_weights`: ((task, weight), ...) of a multi-task run, whose `batch` is {task: its
  batch}: the loss is sum_t weight_t * loss_t, each task's loss its own weighted mean
  (the official multi-task trainer), logged as loss_<task> beside the total.
  """
  if task_weights is not None:
    return _multitask_step(state, batch, hyperparams, seed_key_data, graphdef=graphdef,
                           tx=tx, compute_dtype=compute_dtype,
                           grad_accum_steps=grad_accum_steps, sharded_over=sharded_over,
                           task_weights=task_weights)
  rng = jax.random.fold_in(jax.random.wrap_key_data(seed_key_data), state.step)
  params = state.params
  if sharded_over is not None:  # gather the full parameters for the model
    params = mesh_lib.gathered(params, sharded_over)

  def loss_sum(params, batch_stats, micro, micro_rng):
    model = nnx.merge(graphdef, cast_floats(params, compute_dtype), batch_stats,
                      copy=True)  # fresh Variables in this trace
    logits = model(canvas.model_images(micro), micro['input_tokens'], train=True,
                   rngs=counted_rngs.CountedRngs(micro_rng))  # [b, L, V] or [b, n, L, V]
    total, weight = weighted_cross_entropy(logits, micro['target_tokens'],
                                           micro['loss_weights'])
    return total, (weight, nnx.state(model, nnx.BatchStat))

  grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
  total, weight, grads, batch_stats = _summed_over_micro_batches(
      grad_fn, params, state.batch_stats, batch, rng, grad_accum_steps, jnp.zeros(()))
  # The loss is sum(w * CE) / sum(w) over the whole batch; its gradient is the summed
  # gradient over the same normaliser.
  normaliser = jnp.maximum(weight, 1e-8)
  loss, grads = total / normaliser, jax.tree.map(lambda g: g / normaliser, grads)
  return _apply(state, grads, batch_stats, hyperparams, tx, sharded_over, {'loss': loss})


def _summed_over_micro_batches(grad_fn: Callable, params: Any, batch_stats: Any,
                               batch: dict, rng: jax.Array, k: int, aux_zeros: Any
                               ) -> tuple[jax.Array, Any, Any, Any]:
  """(loss sum, aux sum, gradient sum, batch statistics) of `grad_fn` — (params,
  batch_stats, batch, rng) -> ((loss, (aux, batch_stats)), grads) — over the batch, or with
  k > 1 over its k micro-batches (`_micro_batches`) in a scan, each with the rng folded
  with its index and the batch statistics passed on; `aux_zeros` starts the aux sum."""
  if k == 1:
    (total, (aux, batch_stats)), grads = grad_fn(params, batch_stats, batch, rng)
    return total, aux, grads, batch_stats

  def accumulate(carry, micro_and_index):
    micro, index = micro_and_index
    total, aux, grads, batch_stats = carry
    (t, (a, batch_stats)), g = grad_fn(params, batch_stats, micro,
                                       jax.random.fold_in(rng, index))
    return (total + t, jax.tree.map(jnp.add, aux, a), jax.tree.map(jnp.add, grads, g),
            batch_stats), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (total, aux, grads, batch_stats), _ = jax.lax.scan(
      accumulate, (jnp.zeros(()), aux_zeros, zeros, batch_stats),
      (_micro_batches(batch, k), jnp.arange(k)))
  return total, aux, grads, batch_stats


def _apply(state: TrainState, grads: Any, batch_stats: Any, hyperparams: dict[str, jax.Array],
           tx: optax.GradientTransformation, sharded_over: Mesh | None,
           metrics: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimizer update of `grads` and the step's metrics (`metrics` and the gradient
  norm and learning rate)."""
  constrain = jax.lax.with_sharding_constraint
  if sharded_over is not None:  # each device keeps the gradient of its shard
    grads = constrain(grads, mesh_lib.state_shardings(grads, sharded_over, True))
  batch_stats = cast_floats(batch_stats, jnp.float32)
  opt_state = optimizer.with_hyperparams(state.opt_state, hyperparams)
  updates, opt_state = tx.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                 learning_rate=hyperparams['learning_rate'])
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state)
  if sharded_over is not None:
    new_state = constrain(new_state, mesh_lib.state_shardings(new_state, sharded_over, True))
  return new_state, metrics


def _multitask_step(state: TrainState, batches: dict[str, dict[str, jax.Array]],
                    hyperparams: dict[str, jax.Array], seed_key_data: jax.Array, *,
                    graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    compute_dtype: jnp.dtype, grad_accum_steps: int,
                    sharded_over: Mesh | None,
                    task_weights: tuple[tuple[str, float], ...]
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_step` of a multi-task run (its `task_weights`)."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(seed_key_data), state.step)
  params = state.params
  if sharded_over is not None:
    params = mesh_lib.gathered(params, sharded_over)
  normalisers = {name: jnp.maximum(jnp.sum(batches[name]['loss_weights']), 1e-8)
                 for name, _ in task_weights}
  grad_fn = jax.value_and_grad(
      _multitask_loss_fn(graphdef, compute_dtype, task_weights, normalisers), has_aux=True)
  loss, parts, grads, batch_stats = _summed_over_micro_batches(
      grad_fn, params, state.batch_stats, batches, rng, grad_accum_steps,
      {name: jnp.zeros(()) for name, _ in task_weights})
  metrics = {'loss': loss, **{f'loss_{name}': value for name, value in parts.items()}}
  return _apply(state, grads, batch_stats, hyperparams, tx, sharded_over, metrics)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh, *,
                    compute_dtype: str = 'float32', grad_accum_steps: int = 1,
                    shard_params: bool = False, matmul_precision: str = 'default',
                    task_weights: tuple[tuple[str, float], ...] | None = None) -> Callable:
  """train_step jitted over `mesh`: (state, batch, hyperparams, seed_key_data) -> (state,
  metrics), the state donated, the batch split over 'data', traced at `matmul_precision`
  (precision.py).

  The fields it binds are its arguments (from `config.train`); one jitted function per
  structure in a process (jit_cache.py). A replicated state is pinned by in/out
  shardings; a sharded one (`shard_params`) keeps the shardings it comes with, which the
  step's constraints restore on the way out.
  """
  def build() -> Callable:
    step = functools.partial(train_step, graphdef=graphdef, tx=tx,
                             compute_dtype=jnp.dtype(compute_dtype),
                             grad_accum_steps=grad_accum_steps,
                             sharded_over=mesh if shard_params else None,
                             task_weights=task_weights)
    step = precision.traced(step, matmul_precision)
    state_sharding = None if shard_params else mesh_lib.replicated(mesh)
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(state_sharding, mesh_lib.batch_sharded(mesh),
                                       replicated, replicated),
                   out_shardings=(state_sharding, replicated), donate_argnums=0)

  key = ('train_step', graphdef, tx, mesh, compute_dtype, grad_accum_steps, shard_params,
         matmul_precision, task_weights)
  return jit_cache.cached(key, build)


def seed_key_data(seed: int) -> np.ndarray:
  """uint32 [2]: the data of `jax.random.key(seed)`, made once on the host."""
  with jax.default_device(optimizer.host_device()):
    return np.asarray(jax.random.key_data(jax.random.key(seed)))


@dataclasses.dataclass(frozen=True, eq=False)
class TrainStep:
  """A run's train step: `(state, batch, step) -> (state, metrics)`, where `step` is the
  0-based index of the update (`int(state.step)`, counted on the host), from which the
  optimizer's inputs are read (`optimizer.HostHyperparams`)."""

  jitted: Callable  # make_train_step's (state, batch, hyperparams, seed_key_data) -> ...
  hyperparams: optimizer.HostHyperparams
  seed_key_data: np.ndarray  # uint32 [2]

  def inputs(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(hyperparams, seed_key_data): the jitted step's inputs besides state and batch,
    host values (numpy) made without device work."""
    return self.hyperparams(step), self.seed_key_data

  def __call__(self, state: TrainState, batch: dict[str, jax.Array],
               step: int) -> tuple[TrainState, dict[str, jax.Array]]:
    return self.jitted(state, batch, *self.inputs(step))


def train_step_for(config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
                   mesh: Mesh, tx: optax.GradientTransformation) -> TrainStep:
  """The train step of a run's frozen config (seed, train.*)."""
  resolve.require_frozen(config, 'train_step_for')
  train = config.train
  task_weights = None
  if multitask.is_multitask(config):
    task_weights = tuple((name, multitask.weight(config, name))
                         for name in multitask.task_names(config))
  return TrainStep(make_train_step(graphdef, tx, mesh, compute_dtype=train.compute_dtype,
                                   grad_accum_steps=train.grad_accum_steps,
                                   shard_params=train.shard_params,
                                   matmul_precision=train.matmul_precision,
                                   task_weights=task_weights),
                   optimizer.HostHyperparams(train), seed_key_data(config.seed))
