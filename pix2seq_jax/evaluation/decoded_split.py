"""A val split decoded batch by batch beside its teacher-forced validation loss, the rows
gathered on process 0: what the evaluators of the tasks other than detection share
(instance_evaluator.py, caption_evaluator.py).

Each batch's val-loss sums and decoding are dispatched before the previous batch's
results are fetched, so the host reads one batch while the devices work on the next.
Every process takes part; process 0 gets every process's rows in the global order.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from pix2seq_jax.data import coco_json, pipeline
from pix2seq_jax.evaluation import val_loss
from pix2seq_jax.inference import sharded_decode
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib

# (params, batch_stats, images placed on the mesh, the host batch, step) -> (the decoded
# outputs, sharded over B like the images, and host arrays kept beside them, e.g. prompts)
DecodeBatch = Callable[[nnx.State, nnx.State, jax.Array, dict[str, np.ndarray], int],
                       tuple[Any, Any]]


def decode_split(config: ml_collections.FrozenConfigDict, split: coco_json.CocoSplit,
                 targets: pipeline.Targets, vocab: vocab_lib.Vocabulary, mesh: Mesh,
                 val_loss_fn: Callable, decode_batch: DecodeBatch, meta_keys: tuple[str, ...],
                 params: nnx.State, batch_stats: nnx.State, step: int
                 ) -> tuple[tuple[Any, Any, dict[str, np.ndarray]] | None, dict[str, float]]:
  """((outputs, kept, meta) of every eval example, or None on other processes than 0;
  the val-loss metrics) of `config.task` on the first `eval.max_images` images of `split`
  (all if 0). `meta` holds the batches' `meta_keys` fields (e.g. image_id, mask)."""
  max_images = config.eval.max_images
  batches = pipeline.eval_batches(
      split, config.data, vocab, global_batch_size=config.eval.batch_size,
      max_images=max_images, process_index=jax.process_index(),
      process_count=jax.process_count(), task=config.task, targets=targets)
  total = pipeline.num_eval_batches(
      pipeline.num_eval_examples(split, config.task, max_images), config.eval.batch_size)
  likelihood, rows, pending = val_loss.ValLoss(), [], None

  def fetched(sums, outputs, kept, meta):  # one batch on this host
    likelihood.add(sums)
    return jax.tree.map(sharded_decode.local_rows, outputs), kept, meta

  for batch in tqdm(batches, total=total, desc=f'eval@{step}', leave=False,
                    disable=jax.process_index() > 0):
    arrays = mesh_lib.put_batch({k: batch[k] for k in val_loss.BATCH_KEYS}, mesh)
    sums = val_loss_fn(params, batch_stats, arrays)
    outputs, kept = decode_batch(params, batch_stats, arrays['image'], batch, step)
    if pending is not None:  # the previous batch, fetched while this one runs
      rows.append(fetched(*pending))
    pending = (sums, outputs, kept, {k: batch[k] for k in meta_keys if k in batch})
  if pending is not None:
    rows.append(fetched(*pending))
  gathered = mesh_lib.gather_to_process_0(rows)
  return (gathered if jax.process_index() == 0 else None), likelihood.metrics()
