"""Evaluating an instance task (`config.task` 'instance_segmentation' or
'keypoint_detection'): every val object decoded from its ground-truth box and class and
scored with COCOeval (`segm` or `keypoints`), and the teacher-forced validation loss of
its sequences; written under `<workdir>/eval/step_<N>/` as the detection `Evaluator`
writes its own (metrics.json, and the COCO results as segmentations.json or
keypoints.json).

The prompts are the ground truth's, as the official multi-task config evaluates
(`use_gt_box_at_test=True`): each eval example's sequences start with their prompt
[task, box, class] (`input_tokens[..., :6]`), so the objects decoded are those the
example holds (`data.max_instances` per image for segmentation, the first in the
annotation file's order: objects past them count as misses, as in the official
evaluation; one person per example for keypoints), each scored 1 as a ground-truth box
(keypoints: by its points' probability). Decoding samples as the official
(`inference/instances.instance_task`); the host turns rows into masks or keypoints in
original pixels (`inference/instances.py`). Process 0 gathers every process's rows, as
the detection `Evaluator` does.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.data import coco_json, instance_annotations
from pix2seq_jax.evaluation import coco_metrics, decoded_split, predict_split, val_loss
from pix2seq_jax.inference import instances, sharded_decode
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import files as workdir_lib


class Evaluation(NamedTuple):
  """What one evaluation gives process 0 (as `evaluator.Evaluation`; nothing drawn)."""

  metrics: dict[str, float]
  drawings: np.ndarray | None = None


# The COCOeval iou_type and the results file of each instance task.
IOU_TYPES = predict_split.IOU_TYPES
RESULTS_FILES = {'instance_segmentation': 'segmentations.json',
                 'keypoint_detection': 'keypoints.json'}
_META_KEYS = ('image_id', 'scale', 'original_size', 'crop_offset', 'mask')


class InstanceEvaluator:
  """Compiles the decoder and the validation loss once; `evaluate` at every evaluation of
  a training run."""

  def __init__(self, config: ml_collections.FrozenConfigDict, split: coco_json.CocoSplit,
               targets: instance_annotations.InstanceTargets, vocab: vocab_lib.Vocabulary,
               graphdef: nnx.GraphDef, mesh: Mesh):
    self.config, self.split, self.targets = config, split, targets
    self.vocab, self.mesh = vocab, mesh
    self.task = instances.instance_task(config, vocab)
    self.decode_fn = sharded_decode.InstanceDecodeFn(config, graphdef, self.task, mesh)
    self.val_loss_fn = val_loss.make_val_loss_fn(graphdef, vocab, mesh,
                                                 config.train.matmul_precision)

  def __call__(self, params: nnx.State, batch_stats: nnx.State, step: int,
               workdir: str) -> dict[str, float]:
    return self.evaluate(params, batch_stats, step, workdir).metrics

  def evaluate(self, params: nnx.State, batch_stats: nnx.State, step: int, workdir: str,
               draw: bool = True) -> Evaluation:
    """The val split's COCO metrics and teacher-forced metrics (process 0; {} elsewhere).
    `draw` is accepted for the detection Evaluator's signature; nothing is drawn."""
    del draw
    config = self.config
    max_images = config.eval.max_images
    records = self.split.records[:max_images] if max_images else self.split.records
    rows, likelihood = decoded_split.decode_split(
        config, self.split, self.targets, self.vocab, self.mesh, self.val_loss_fn,
        self._decode_batch, _META_KEYS, params, batch_stats, step)
    if rows is None:  # not process 0
      return Evaluation({})
    outputs, prompts, meta = rows
    results = instances.coco_results(outputs, prompts, meta, self.task, config.data.image_size)
    coco_gt = coco_metrics.load_ground_truth(self.split.annotations_path)
    metrics = coco_metrics.coco_metrics(coco_gt, results,
                                        image_ids=[r.image_id for r in records],
                                        iou_type=IOU_TYPES[config.task])
    metrics.update({k: v for k, v in likelihood.items() if not math.isnan(v)})
    out = workdir_lib.eval_dir(workdir, step)
    workdir_lib.write_json(os.path.join(out, 'metrics.json'), metrics)
    workdir_lib.write_json(os.path.join(out, RESULTS_FILES[config.task]), results)
    logging.info('eval@%d (%s) on %d images: %s', step, config.task, len(records),
                 ' '.join(f'{k}={v:.4f}' for k, v in metrics.items()))
    return Evaluation(metrics)

  def _decode_batch(self, params: nnx.State, batch_stats: nnx.State, images: jax.Array,
                    batch: dict[str, np.ndarray], step: int) -> tuple[Any, np.ndarray]:
    """`decoded_split.DecodeBatch`: every object of the batch decoded from its prompt
    [task, box, class] (`input_tokens[..., :6]`), the prompts kept."""
    prompts = batch['input_tokens'][..., :self.task.prompt_length]  # [B, n, 6]
    placed = mesh_lib.put_batch({'p': prompts}, self.mesh)['p']
    return self.decode_fn(params, batch_stats, images, placed, step), prompts
