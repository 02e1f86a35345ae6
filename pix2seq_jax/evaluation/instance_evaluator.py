"""Evaluating an instance task (`config.task='instance_segmentation'`) during training:
the teacher-forced validation loss of its per-object sequences, written under
`<workdir>/eval/step_<N>/metrics.json` as the detection `Evaluator` writes its metrics.

Decoding polygons and scoring them with COCOeval (segm) are not implemented yet; the
metrics are `val_loss`, `val_perplexity` and `val_perplexity_coord` (`val_loss.py`; the
class targets weigh 0 in these sequences, so there is no class perplexity).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.data import coco_json, instance_annotations, pipeline
from pix2seq_jax.evaluation import val_loss
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import files as workdir_lib


class Evaluation(NamedTuple):
  """What one evaluation gives process 0 (as `evaluator.Evaluation`; nothing drawn)."""

  metrics: dict[str, float]
  drawings: np.ndarray | None = None


class InstanceEvaluator:
  """Compiles the validation loss once; `evaluate` at every evaluation of a training run."""

  def __init__(self, config: ml_collections.FrozenConfigDict, split: coco_json.CocoSplit,
               targets: instance_annotations.InstanceTargets, vocab: vocab_lib.Vocabulary,
               graphdef: nnx.GraphDef, mesh: Mesh):
    self.config, self.split, self.targets = config, split, targets
    self.vocab, self.mesh = vocab, mesh
    self.val_loss_fn = val_loss.make_val_loss_fn(graphdef, vocab, mesh,
                                                 config.train.matmul_precision)

  def __call__(self, params: nnx.State, batch_stats: nnx.State, step: int,
               workdir: str) -> dict[str, float]:
    return self.evaluate(params, batch_stats, step, workdir).metrics

  def evaluate(self, params: nnx.State, batch_stats: nnx.State, step: int, workdir: str,
               draw: bool = True) -> Evaluation:
    """The val split's teacher-forced metrics (process 0; {} elsewhere). `draw` is
    accepted for the detection Evaluator's signature; nothing is drawn."""
    del draw
    config = self.config
    batches = pipeline.eval_batches(
        self.split, config.data, self.vocab, global_batch_size=config.eval.batch_size,
        max_images=config.eval.max_images, process_index=jax.process_index(),
        process_count=jax.process_count(), task=config.task, targets=self.targets)
    likelihood = val_loss.ValLoss()
    for batch in batches:
      arrays = mesh_lib.put_batch({k: batch[k] for k in val_loss.BATCH_KEYS}, self.mesh)
      likelihood.add(self.val_loss_fn(params, batch_stats, arrays))
    if jax.process_index() > 0:
      return Evaluation({})
    metrics = {k: v for k, v in likelihood.metrics().items() if not math.isnan(v)}
    workdir_lib.write_json(os.path.join(workdir_lib.eval_dir(workdir, step), 'metrics.json'),
                           metrics)
    logging.info('eval@%d (%s, teacher-forced): %s', step, config.task,
                 ' '.join(f'{k}={v:.4f}' for k, v in metrics.items()))
    return Evaluation(metrics)
