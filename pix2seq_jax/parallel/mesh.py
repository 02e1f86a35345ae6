"""Device mesh and shardings for data parallelism over all devices of all processes.

Batches are split over the 'data' axis; evaluation brings every process's rows to
process 0 (`gather_to_process_0`). The train state is replicated, or with
`train.shard_params` split FSDP-style over the same axis: each array of parameters and
optimizer state is cut along its largest dimension that the device count divides, and
the train step gathers the parameters for the forward pass and scatters the gradients.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh, axis 'data', over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


# Arrays smaller than this stay replicated when the state is sharded (biases, norms, step).
MIN_SHARDED_SIZE = 2 ** 14


def leaf_sharding(shape: tuple[int, ...], mesh: Mesh, shard: bool) -> NamedSharding:
  """Replicated, or (`shard`) split over 'data' along the largest dimension it divides."""
  devices = mesh.shape[DATA_AXIS]
  if not shard or devices == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
    return replicated(mesh)
  divisible = [d for d in range(len(shape)) if shape[d] % devices == 0]
  if not divisible:
    return replicated(mesh)
  axis = max(divisible, key=lambda d: shape[d])
  return NamedSharding(mesh, P(*[DATA_AXIS if d == axis else None for d in range(len(shape))]))


def state_shardings(tree: Any, mesh: Mesh, shard: bool) -> Any:
  """`leaf_sharding` for every array of `tree` (arrays, tracers or ShapeDtypeStructs)."""
  return jax.tree.map(lambda x: leaf_sharding(tuple(x.shape), mesh, shard), tree)


def placed_shapes(tree: Any, mesh: Mesh, shard: bool) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays with the shardings `state_shardings` gives them."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=leaf_sharding(tuple(x.shape), mesh, shard)), tree)


def gathered(tree: Any, mesh: Mesh) -> Any:
  """Inside jit: `tree` whole on every device (an all-gather where it is sharded)."""
  return jax.lax.with_sharding_constraint(tree, replicated(mesh))


def put_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """This process's slice of a global batch -> global arrays sharded over 'data' (a
  multi-task batch, {task: batch}, task by task)."""
  sharding = batch_sharded(mesh)
  return {k: put_batch(v, mesh) if isinstance(v, dict)
          else jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def placed_batches(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                   ahead: int = 2) -> Iterator[dict[str, jax.Array]]:
  """`batches` (this process's slices) put on the mesh `ahead` batches before they are
  asked for.

  Placing is asynchronous: while a step runs on the devices, the copies of the next
  batches are issued, and a step's batch is already there when it is dispatched.
  """
  queue = collections.deque()
  for batch in batches:
    queue.append(put_batch(batch, mesh))
    if len(queue) > ahead:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def gather_to_process_0(rows: list[tuple]) -> tuple:
  """Every process's rows of every batch, in the global batches' order (process 0's rows
  of batch 0, process 1's of batch 0, ...), from this process's rows per batch (a tuple
  of pytrees with leading [local, ...]: detection's (tokens, scores, meta)). Every
  process takes part in the gather (each holds the same number of batches of the same
  shapes); only process 0 uses its result (JAX has no gather to one process)."""
  # [batches * local, ...] per array
  local = jax.tree.map(lambda *batches: np.concatenate(batches), *rows)
  if jax.process_count() == 1:
    return local
  # [processes * batches * local, ...]: process 0's rows of every batch, then process 1's
  gathered = multihost_utils.process_allgather(local, tiled=True)
  batches, processes = len(rows), jax.process_count()

  def in_batch_order(x: np.ndarray) -> np.ndarray:
    x = x.reshape(processes, batches, -1, *x.shape[1:])  # [processes, batches, local, ...]
    return x.swapaxes(0, 1).reshape(-1, *x.shape[3:])
  return jax.tree.map(in_batch_order, gathered)
