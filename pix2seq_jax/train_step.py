"""The train state and the jitted, data-parallel train step.

The model runs through the functional NNX form: `nnx.split` gives a static graphdef
and plain state pytrees (parameters, batch-norm statistics) that jit, optax, orbax
and shardings handle directly; `nnx.merge` rebuilds the module inside the jitted
function. Batches are split over 'data'; the state is replicated, or with
`train.shard_params` sharded over 'data' (sharding.py): the step then all-gathers the
parameters for the model and constrains gradients and the new state back to their shards,
which XLA turns into reduce-scatters.

Mixed precision (`train.compute_dtype='bfloat16'`): parameters and optimizer state stay
float32; a bfloat16 copy of the parameters runs the model, so gradients arrive in
float32 through the cast. Gradient accumulation (`train.grad_accum_steps=k`) scans over
k micro-batches (rows j, j+k, j+2k, ... of the global batch, so every device keeps a
share), sums the weighted token losses, their weights and gradients, and normalises
once: the same update as one step on the whole batch, except that batch norm sees the
statistics of each micro-batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from pix2seq_jax import optim, pretrained, sharding
from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.models import backbones, pix2seq, variants


@struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: nnx.State
  batch_stats: nnx.State
  opt_state: Any


def build_model(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                rngs: nnx.Rngs) -> pix2seq.Pix2Seq:
  return pix2seq.Pix2Seq(
      variants.get_spec(config.model.variant), vocab.size,
      vocab_lib.sequence_length(config.data.max_instances),
      dropout=config.model.dropout, drop_path=config.model.drop_path,
      image_normalization=config.model.image_normalization,
      frozen_backbone_stages=config.model.frozen_backbone_stages,
      frozen_batch_norm=config.model.frozen_batch_norm, rngs=rngs)


def model_graphdef(config: ml_collections.ConfigDict,
                   vocab: vocab_lib.Vocabulary) -> nnx.GraphDef:
  """The static structure of the model, without allocating parameters."""
  abstract = nnx.eval_shape(lambda: build_model(config, vocab, nnx.Rngs(0)))
  return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


def _init_fn(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
             tx: optax.GradientTransformation) -> Callable[[], TrainState]:
  def init() -> TrainState:
    model = build_model(config, vocab, nnx.Rngs(config.seed))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=batch_stats, opt_state=tx.init(params))
  return init


def create_train_state(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                       mesh: Mesh, tx: optax.GradientTransformation) -> TrainState:
  """Initialises parameters and optimizer state directly in their shardings."""
  init = _init_fn(config, vocab, tx)
  shardings = sharding.state_shardings(jax.eval_shape(init), mesh, config.train.shard_params)
  return jax.jit(init, out_shardings=shardings)()


def with_pretrained_backbone(state: TrainState, config: ml_collections.ConfigDict,
                             mesh: Mesh) -> tuple[TrainState, list[str]]:
  """`state` with the backbone loaded from `config.model.pretrained_backbone`.

  Returns the new state (replicated over `mesh`) and the file's ignored keys.
  """
  spec = variants.get_spec(config.model.variant)
  backbone = backbones.abstract_backbone(spec.backbone)
  new_params, new_stats = jax.device_get((state.params, state.batch_stats))
  params, batch_stats = new_params.to_pure_dict(), new_stats.to_pure_dict()
  # A backbone without an ImageNet stem (tiny ResNet, ViT patches) is refused in there.
  params['backbone'], batch_stats['backbone'], ignored = pretrained.load_resnet(
      config.model.pretrained_backbone, params['backbone'], batch_stats['backbone'],
      getattr(backbone, 'stage_sizes', ()), getattr(backbone, 'stem_kind', None))
  nnx.replace_by_pure_dict(new_params, params)
  nnx.replace_by_pure_dict(new_stats, batch_stats)
  state = state.replace(params=new_params, batch_stats=new_stats)
  return jax.device_put(state, sharding.state_shardings(
      state, mesh, config.train.shard_params)), ignored


def abstract_train_state(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                         mesh: Mesh, tx: optax.GradientTransformation) -> TrainState:
  """The train state's shapes, dtypes and shardings, allocating nothing."""
  shard = config.train.shard_params
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=sharding.leaf_sharding(x.shape, mesh, shard)),
      jax.eval_shape(_init_fn(config, vocab, tx)))


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


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int,
               compute_dtype: jnp.dtype = jnp.float32, grad_accum_steps: int = 1,
               sharded_over: Mesh | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW step on the global batch; returns the new state and scalar metrics.

  `sharded_over`: the mesh whose 'data' axis shards the state (train.shard_params).
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  constrain = jax.lax.with_sharding_constraint
  params = state.params
  if sharded_over is not None:  # gather the full parameters for the model
    params = sharding.gathered(params, sharded_over)

  def loss_sum(params, batch_stats, micro, micro_rng):
    model = nnx.merge(graphdef, cast_floats(params, compute_dtype), batch_stats,
                      copy=True)  # fresh Variables in this trace
    logits = model(micro['image'], micro['input_tokens'], train=True,
                   rngs=nnx.Rngs(dropout=micro_rng))  # [b, L, V]
    total, weight = weighted_cross_entropy(logits, micro['target_tokens'],
                                           micro['loss_weights'])
    return total, (weight, nnx.state(model, nnx.BatchStat))

  grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
  if grad_accum_steps == 1:
    (total, (weight, batch_stats)), grads = grad_fn(params, state.batch_stats, batch, rng)
  else:
    def accumulate(carry, micro_and_index):
      micro, index = micro_and_index
      total, weight, grads, batch_stats = carry
      (t, (w, batch_stats)), g = grad_fn(params, batch_stats, micro,
                                         jax.random.fold_in(rng, index))
      return (total + t, weight + w, jax.tree.map(jnp.add, grads, g), batch_stats), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (total, weight, grads, batch_stats), _ = jax.lax.scan(
        accumulate, (jnp.zeros(()), jnp.zeros(()), zeros, state.batch_stats),
        (_micro_batches(batch, grad_accum_steps), jnp.arange(grad_accum_steps)))
  # The loss is sum(w * CE) / sum(w) over the whole batch; its gradient is the summed
  # gradient over the same normaliser.
  normaliser = jnp.maximum(weight, 1e-8)
  loss, grads = total / normaliser, jax.tree.map(lambda g: g / normaliser, grads)
  if sharded_over is not None:  # each device keeps the gradient of its shard
    grads = constrain(grads, sharding.state_shardings(grads, sharded_over, True))
  batch_stats = cast_floats(batch_stats, jnp.float32)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads),
             'learning_rate': schedule(state.step)}
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state)
  if sharded_over is not None:
    new_state = constrain(new_state, sharding.state_shardings(new_state, sharded_over, True))
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, mesh: Mesh,
                    tx: optax.GradientTransformation) -> Callable:
  """train_step jitted over `mesh`: the state donated, the batch split over 'data'.

  A replicated state is pinned by in/out shardings; a sharded one (train.shard_params)
  keeps the shardings it comes with, which the step's constraints restore on the way out.
  """
  shard = config.train.shard_params
  step = functools.partial(train_step, graphdef=graphdef, tx=tx,
                           schedule=optim.learning_rate_schedule(config.train),
                           seed=config.seed,
                           compute_dtype=jnp.dtype(config.train.compute_dtype),
                           grad_accum_steps=config.train.grad_accum_steps,
                           sharded_over=mesh if shard else None)
  state_sharding = None if shard else sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=0)
