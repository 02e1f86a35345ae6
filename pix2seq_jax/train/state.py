"""The train state: parameters, batch-norm statistics, optimizer state and step.

The model runs through the functional NNX form: `nnx.split` gives plain state pytrees
(parameters, batch statistics) that jit, optax, orbax and shardings handle directly.
States are created directly in their shardings (`parallel/mesh.py`): replicated, or
split over 'data' with `train.shard_params`.

Parameters loaded from files (a pretrained backbone, `model.init_from`) are merged on the
host: `host_values` gives every process the whole value of each array (one all-gather
of the arrays split over the devices of several processes), and `placed` puts
host values into their shardings, each process copying only its devices' blocks (no
collective; every process holds the same values, read from the same files).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pix2seq_jax.models import backbones, build, counted_rngs, pretrained, variants
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import jit_cache
from pix2seq_jax.tasks import vocab as vocab_lib


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


def host_values(tree: Any) -> Any:
  """`tree`'s arrays as numpy arrays, whole, on every process. Arrays split over the
  devices of several processes are first replicated by one jitted all-gather: every
  process must call this with the same tree."""
  leaves, treedef = jax.tree.flatten(tree)
  split = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)
           and not x.is_fully_addressable and not x.is_fully_replicated]
  if split:
    whole = jax.jit(lambda xs: xs, out_shardings=[
        NamedSharding(leaves[i].sharding.mesh, P()) for i in split])([leaves[i] for i in split])
    for i, x in zip(split, whole):
      leaves[i] = x
  return jax.tree.unflatten(treedef, [_local_copy(x) for x in leaves])


def _local_copy(x: jax.Array | np.ndarray) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))  # replicated: this process's copy is whole
  return np.asarray(x)


def placed(tree: Any, mesh: Mesh, shard: bool) -> Any:
  """Host arrays (the same on every process) -> global arrays in `mesh_lib.state_shardings`;
  each process copies only the blocks of its own devices."""
  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, mesh_lib.leaf_sharding(x.shape, mesh, shard),
                                        lambda index: x[index])
  return jax.tree.map(place, tree)


def with_pretrained_backbone(state: TrainState, config: ml_collections.ConfigDict,
                             mesh: Mesh) -> tuple[TrainState, list[str]]:
  """`state` with the backbone loaded from `config.model.pretrained_backbone`.

  Returns the new state (in its shardings on `mesh`) and the file's ignored keys.
  """
  spec = variants.get_spec(config.model.variant)
  backbone = backbones.abstract_backbone(spec.backbone)
  # Only the backbone travels to the host and back.
  host_params, host_stats = host_values((state.params['backbone'],
                                         state.batch_stats['backbone']))
  # A backbone without an ImageNet stem (tiny ResNet, ViT patches) is refused in there.
  params, batch_stats, ignored = pretrained.load_resnet(
      config.model.pretrained_backbone, host_params.to_pure_dict(),
      host_stats.to_pure_dict(), getattr(backbone, 'stage_sizes', ()),
      getattr(backbone, 'stem_kind', None))
  nnx.replace_by_pure_dict(host_params, params)
  nnx.replace_by_pure_dict(host_stats, batch_stats)
  shard = config.train.shard_params
  new_params, new_stats = nnx.State(dict(state.params)), nnx.State(dict(state.batch_stats))
  new_params['backbone'] = placed(host_params, mesh, shard)
  new_stats['backbone'] = placed(host_stats, mesh, shard)
  return state.replace(params=new_params, batch_stats=new_stats), ignored
