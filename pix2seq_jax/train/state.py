"""The train state: parameters, batch-norm statistics, optimizer state and step.

The model runs through the functional NNX form: `nnx.split` gives plain state pytrees
(parameters, batch statistics) that jit, optax, orbax and shardings handle directly.
States are created directly in their shardings (`parallel/mesh.py`): replicated, or
split over 'data' with `train.shard_params`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from pix2seq_jax import jit_cache
from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.models import backbones, build, counted_rngs, pretrained, variants
from pix2seq_jax.parallel import mesh as mesh_lib


@struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: nnx.State
  batch_stats: nnx.State
  opt_state: Any


def _init_fn(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
             tx: optax.GradientTransformation) -> Callable[[jax.Array], TrainState]:
  """seed key -> the initial train state (the seed an input, so one program serves all)."""
  def init(seed_key: jax.Array) -> TrainState:
    model = build.build_model(config, vocab, counted_rngs.CountedRngs(seed_key))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=batch_stats, opt_state=tx.init(params))
  return init


def _structure_key(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                   mesh: Mesh, tx: optax.GradientTransformation) -> tuple:
  return (build.model_graphdef(config, vocab), tx, mesh, config.train.shard_params)


def abstract_train_state(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                         mesh: Mesh, tx: optax.GradientTransformation) -> TrainState:
  """The train state's shapes, dtypes and shardings, allocating nothing."""
  def build_abstract():
    _, params, batch_stats = nnx.split(build.abstract_model(config, vocab), nnx.Param,
                                       nnx.BatchStat)
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                       batch_stats=batch_stats, opt_state=jax.eval_shape(tx.init, params))
    return mesh_lib.placed_shapes(state, mesh, config.train.shard_params)
  return jit_cache.cached(('abstract_train_state', *_structure_key(config, vocab, mesh, tx)),
                          build_abstract)


def create_train_state(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                       mesh: Mesh, tx: optax.GradientTransformation) -> TrainState:
  """Initialises parameters (seeded by `config.seed`) and optimizer state directly in
  their shardings."""
  def build_init():
    shardings = jax.tree.map(lambda x: x.sharding,
                             abstract_train_state(config, vocab, mesh, tx))
    return jax.jit(_init_fn(config, vocab, tx), out_shardings=shardings)
  init = jit_cache.cached(('init', *_structure_key(config, vocab, mesh, tx)), build_init)
  return init(jax.random.key(config.seed))


def with_pretrained_backbone(state: TrainState, config: ml_collections.ConfigDict,
                             mesh: Mesh) -> tuple[TrainState, list[str]]:
  """`state` with the backbone loaded from `config.model.pretrained_backbone`.

  Returns the new state (in its shardings on `mesh`) and the file's ignored keys.
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
  return jax.device_put(state, mesh_lib.state_shardings(
      state, mesh, config.train.shard_params)), ignored
