"""Evaluating parameters on the val split: decoded detections scored with COCOeval, and
the teacher-forced validation loss; written under `<workdir>/eval/step_<N>/`.

Every process decodes its rows of each global batch (the tf.data pipeline pads the split
to whole batches with masked examples) and keeps them on its host; the host fetches a
batch's outputs only after it has sent the next batch to the devices, so that it
prepares one batch while the devices decode another. After the last batch one gather
(`process_allgather`: JAX has no gather to one process, so every process receives the
rows, once) brings every process's rows to process 0, which turns them into boxes, runs
COCOeval and writes the files. The other processes return as soon as the gather ends:
they are not held for the scoring, but their next collective (the next train step)
waits until process 0 has scored and joins it.

Process 0 also draws the split's first `eval.num_images_drawn` images, read again from
their files, with the detections already decoded for them and their ground truth
(`inference/drawing.py`): the training loop writes them to TensorBoard.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from pix2seq_jax.data import coco_json, pipeline
from pix2seq_jax.evaluation import coco_metrics, val_loss
from pix2seq_jax.inference import detections, drawing, sharded_decode
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import files as workdir_lib

_META_KEYS = ('image_id', 'scale', 'original_size', 'mask')


def _fetched(sums: dict[str, jax.Array], tokens: jax.Array, scores: jax.Array,
             meta: dict[str, np.ndarray], likelihood: val_loss.ValLoss) -> tuple:
  """One batch's outputs on this host: its val-loss sums added to `likelihood`, and
  (tokens, scores, meta) of this process's rows."""
  likelihood.add(sums)
  return sharded_decode.local_rows(tokens), sharded_decode.local_rows(scores), meta


def draw_records(records: list[coco_json.ImageRecord], results: list[dict],
                 categories: coco_json.CategoryMap,
                 threshold: float = drawing.DEFAULT_THRESHOLD) -> np.ndarray:
  """`records`' images with their `results` (COCO results of any images) scored at least
  `threshold` and their ground truth drawn, as uint8 [N, H, W, 3] (padded to one size).
  An image that cannot be read again is left out, with a warning."""
  names = dict(zip(categories.category_ids, categories.names))
  pictures = []
  for record in records:
    try:
      image = images_lib.load_image(record.path, record.orientation,
                                    (record.height, record.width))
    except images_lib.UNREADABLE_IMAGE_ERRORS as e:
      logging.warning('%s: not drawn for TensorBoard (%s)', record.path, e)
      continue
    found = [dict(r, category_name=names.get(r['category_id'], str(r['category_id'])))
             for r in results if r['image_id'] == record.image_id]
    scale = np.array([record.height, record.width] * 2, np.float64)
    truth = [{'bbox': [x1, y1, x2 - x1, y2 - y1],
              'category_id': int(categories.category_ids[label])}
             for (y1, x1, y2, x2), label in zip(record.boxes * scale, record.labels)]
    pictures.append(drawing.draw(image, found, ground_truth=truth, threshold=threshold))
  return drawing.as_batch(pictures)


class Evaluation(NamedTuple):
  """What one evaluation gives process 0 (elsewhere: no metrics, no drawings)."""

  metrics: dict[str, float]
  drawings: np.ndarray | None  # uint8 [N, H, W, 3], eval.num_images_drawn val images


class Evaluator:
  """Compiles the decoder and the validation loss once; called at every evaluation."""

  def __init__(self, config: ml_collections.FrozenConfigDict, split: coco_json.CocoSplit,
               vocab: vocab_lib.Vocabulary, graphdef: nnx.GraphDef, mesh: Mesh):
    self.config, self.split, self.vocab, self.mesh = config, split, vocab, mesh
    self.decode_fn = sharded_decode.DecodeFn(config, graphdef, vocab, mesh)
    self.val_loss_fn = val_loss.make_val_loss_fn(graphdef, vocab, mesh,
                                                 config.train.matmul_precision)

  def __call__(self, params: nnx.State, batch_stats: nnx.State, step: int,
               workdir: str) -> dict[str, float]:
    """The metrics of (`params`, `batch_stats`) at `step` (process 0; {} elsewhere)."""
    return self.evaluate(params, batch_stats, step, workdir, draw=False).metrics

  def evaluate(self, params: nnx.State, batch_stats: nnx.State, step: int, workdir: str,
               draw: bool = True) -> Evaluation:
    """The metrics and, with `draw`, the first `eval.num_images_drawn` val images drawn
    with their detections and ground truth (process 0; nothing elsewhere)."""
    config, split = self.config, self.split
    max_images = config.eval.max_images
    records = split.records[:max_images] if max_images else split.records
    batches = pipeline.eval_batches(
        split, config.data, self.vocab, global_batch_size=config.eval.batch_size,
        max_images=max_images, process_index=jax.process_index(),
        process_count=jax.process_count())
    total = pipeline.num_eval_batches(len(records), config.eval.batch_size)
    likelihood, rows, pending = val_loss.ValLoss(), [], None
    for batch in tqdm(batches, total=total, desc=f'eval@{step}', leave=False,
                      disable=jax.process_index() > 0):
      arrays = mesh_lib.put_batch({k: batch[k] for k in val_loss.BATCH_KEYS}, self.mesh)
      sums = self.val_loss_fn(params, batch_stats, arrays)
      tokens, scores = self.decode_fn(params, batch_stats, arrays['image'], step)
      if pending is not None:  # the previous batch, fetched while this one runs
        rows.append(_fetched(*pending, likelihood))
      pending = (sums, tokens, scores, {k: batch[k] for k in _META_KEYS})
    if pending is not None:
      rows.append(_fetched(*pending, likelihood))
    tokens, scores, meta = mesh_lib.gather_to_process_0(rows)
    if jax.process_index() > 0:
      return Evaluation({}, None)
    results = detections.coco_results(tokens, scores, meta, self.vocab, split.categories,
                                      config.data.image_size, config.decode.mode)
    coco_gt = coco_metrics.load_ground_truth(split.annotations_path)
    metrics = coco_metrics.coco_metrics(coco_gt, results,
                                        image_ids=[r.image_id for r in records])
    metrics.update(likelihood.metrics())
    out = workdir_lib.eval_dir(workdir, step)
    workdir_lib.write_json(os.path.join(out, 'metrics.json'), metrics)
    workdir_lib.write_json(os.path.join(out, 'detections.json'), results)
    logging.info('eval@%d on %d images: %s', step, len(records),
                 ' '.join(f'{k}={v:.4f}' for k, v in metrics.items()))
    shown = records[:config.eval.num_images_drawn] if draw else []
    drawings = draw_records(shown, results, split.categories) if shown else None
    return Evaluation(metrics, drawings if drawings is not None and len(drawings) else None)
