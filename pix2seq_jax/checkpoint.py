"""Orbax checkpoints of the train state under `<workdir>/checkpoints/<step>`.

Saves are committed atomically by orbax (a step folder appears only when complete),
so the latest step is always readable. Restoring takes an abstract template (shapes,
dtypes and shardings), so a checkpoint comes back already placed on the current mesh.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


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

  Returns None when there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
