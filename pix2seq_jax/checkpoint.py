"""Orbax checkpoints of the train state under `<workdir>/checkpoints/<step>`.

Saves are committed atomically by orbax (a step folder appears only when complete),
so the latest step is always readable. Restoring takes an abstract template (shapes,
dtypes and shardings), so a checkpoint comes back already placed on the current mesh.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from pix2seq_jax import tree_paths

_LIST_LIMIT = 12


class CheckpointMismatchError(ValueError):
  """A checkpoint whose arrays do not fit the configured model."""


def _shapes(tree) -> dict[str, tuple]:
  """{'params/decoder/embed/embedding/value': shape} for every array of a state pytree."""
  return {'/'.join(tree_paths.path_names(path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mismatches(step_dir: str, abstract_state) -> list[str]:
  """How the checkpoint at `step_dir` differs from `abstract_state`: one line per array."""
  saved = _shapes(ocp.StandardCheckpointer().metadata(
      os.path.join(step_dir, 'default')).item_metadata)
  expected = _shapes(abstract_state)
  lines = [f'{k}: checkpoint {saved[k]} vs config {expected[k]}'
           for k in sorted(saved.keys() & expected.keys()) if saved[k] != expected[k]]
  lines += [f'{k}: only in the checkpoint {saved[k]}' for k in sorted(saved.keys() - expected.keys())]
  lines += [f'{k}: only in the config {expected[k]}' for k in sorted(expected.keys() - saved.keys())]
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


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores `step` (default: the latest) as `abstract_state`'s ShapeDtypeStructs say.

  Returns None when there is no checkpoint. Raises CheckpointMismatchError, naming the
  differing arrays and shapes, when it was written for another model or vocabulary.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  step_dir = os.path.join(str(manager.directory), str(step))
  differences = mismatches(step_dir, abstract_state)
  if differences:
    shown = '\n  '.join(differences[:_LIST_LIMIT])
    more = (f'\n  (and {len(differences) - _LIST_LIMIT} more)'
            if len(differences) > _LIST_LIMIT else '')
    raise CheckpointMismatchError(
        f'The checkpoint {step_dir} does not fit the configured model ({len(differences)} '
        f'arrays differ):\n  {shown}{more}\nThe config\'s model.variant, data.num_bins, '
        'data.max_instances or the dataset\'s classes differ from the run that wrote it; '
        'use that run\'s config (config.json in its workdir).')
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
