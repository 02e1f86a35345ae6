"""Orbax checkpoints of the train state under `<workdir>/checkpoints/<step>`.

Saves are committed atomically by orbax (a step folder appears only when complete),
so the latest step is always readable. Restoring takes an abstract template (shapes,
dtypes and shardings), so a checkpoint comes back already placed on the current mesh.
Inference restores only the step, parameters and batch statistics (`restore_model`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.models import build, tree_paths
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib

_LIST_LIMIT = 12


class CheckpointMismatchError(ValueError):
  """A checkpoint whose arrays do not fit the configured model."""


def _shapes(tree) -> dict[str, tuple]:
  """{'params/decoder/embed/embedding/value': shape} for every array of a state pytree."""
  return {'/'.join(tree_paths.path_names(path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mismatches(step_dir: str, abstract_state, partial: bool = False) -> list[str]:
  """How the checkpoint at `step_dir` differs from `abstract_state`: one line per array.

  `partial`: the template holds only some of the saved top-level entries (inference
  leaves out the optimizer state); arrays under the others are not compared.
  """
  saved = _shapes(ocp.StandardCheckpointer().metadata(
      os.path.join(step_dir, 'default')).item_metadata)
  expected = _shapes(abstract_state)
  if partial:
    wanted = {name.split('/')[0] for name in expected}
    saved = {k: v for k, v in saved.items() if k.split('/')[0] in wanted}
  lines = [f'{k}: checkpoint {saved[k]} vs config {expected[k]}'
           for k in sorted(saved.keys() & expected.keys()) if saved[k] != expected[k]]
  lines += [f'{k}: only in the checkpoint {saved[k]}'
            for k in sorted(saved.keys() - expected.keys())]
  lines += [f'{k}: only in the config {expected[k]}'
            for k in sorted(expected.keys() - saved.keys())]
  return lines


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()


def _check_fits(step_dir: str, abstract_state, partial: bool) -> None:
  differences = mismatches(step_dir, abstract_state, partial)
  if differences:
    shown = tree_paths.first_of(differences, _LIST_LIMIT, separator='\n  ',
                              rest='\n  (and {n} more)')
    raise CheckpointMismatchError(
        f'The checkpoint {step_dir} does not fit the configured model ({len(differences)} '
        f'arrays differ):\n  {shown}\nThe config\'s model.variant, data.num_bins, '
        'data.max_instances or the dataset\'s classes differ from the run that wrote it; '
        'use that run\'s config (config.json in its workdir).')


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
  """Restores `step` (default: the latest) as `abstract_state`'s ShapeDtypeStructs say.

  Returns None when there is no checkpoint. Raises CheckpointMismatchError, naming the
  differing arrays and shapes, when it was written for another model or vocabulary.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  _check_fits(os.path.join(str(manager.directory), str(step)), abstract_state, partial=False)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def model_template(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                   mesh: Mesh) -> dict:
  """{'step', 'params', 'batch_stats'} of the train state as shapes placed on `mesh`:
  what inference restores (`restore_model`), without building an optimizer."""
  _, params, batch_stats = nnx.split(build.abstract_model(config, vocab), nnx.Param,
                                     nnx.BatchStat)
  return mesh_lib.placed_shapes(
      {'step': jax.ShapeDtypeStruct((), jnp.int32), 'params': params,
       'batch_stats': batch_stats}, mesh, config.train.shard_params)


def restore_model(manager: ocp.CheckpointManager, abstract_model_state: dict,
                  step: int | None = None) -> dict | None:
  """Restores only the entries of `abstract_model_state` (`model_template`) of `step`
  (default: the latest), reading no optimizer state. None when there is no checkpoint."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  _check_fits(os.path.join(str(manager.directory), str(step)), abstract_model_state,
              partial=True)
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
      abstract_model_state)
  return manager.restore(step, args=ocp.args.PyTreeRestore(
      item=abstract_model_state, restore_args=restore_args, partial_restore=True))
