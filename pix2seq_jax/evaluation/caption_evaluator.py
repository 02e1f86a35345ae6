"""Evaluating captioning (`config.task='captioning'`): a caption decoded for every val image
and scored against the image's reference captions with the COCO caption metrics
(`caption_metrics`: BLEU-1..4, METEOR, ROUGE-L, CIDEr), beside the teacher-forced
validation loss of its caption sequences; written under `<workdir>/eval/step_<N>/` as the
other evaluators write theirs (metrics.json, and captions.json in the COCO caption
results format [{"image_id", "caption"}]).

Decoding samples as the official multi-task config (`tasks/captioning.py`: temperature 1,
no top-k or top-p limit); the tokens become text on the host with the run's tokenizer
(`inference/captions.py`). Process 0 gathers every process's rows, as the detection
`Evaluator` does. The official code's captioning metric only writes its captions out;
these scores are pycocoevalcap's, the COCO caption evaluation's own code.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from pix2seq_jax.data import caption_targets, coco_json, pipeline
from pix2seq_jax.evaluation import caption_metrics, instance_evaluator, val_loss
from pix2seq_jax.inference import captions, sharded_decode
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import files as workdir_lib

Evaluation = instance_evaluator.Evaluation
RESULTS_FILE = 'captions.json'


class CaptionEvaluator:
  """Compiles the decoder and the validation loss once; `evaluate` at every evaluation of
  a training run."""

  def __init__(self, config: ml_collections.FrozenConfigDict, split: coco_json.CocoSplit,
               targets: caption_targets.CaptionTargets, vocab: vocab_lib.Vocabulary,
               graphdef: nnx.GraphDef, mesh: Mesh):
    self.config, self.split, self.targets = config, split, targets
    self.vocab, self.mesh = vocab, mesh
    self.tokenizer = captions.load_tokenizer(config)
    self.task = captions.caption_task(config, vocab, self.tokenizer)
    self.decode_fn = sharded_decode.CaptionDecodeFn(config, graphdef, self.task, mesh)
    self.val_loss_fn = val_loss.make_val_loss_fn(graphdef, vocab, mesh,
                                                 config.train.matmul_precision)

  def __call__(self, params: nnx.State, batch_stats: nnx.State, step: int,
               workdir: str) -> dict[str, float]:
    return self.evaluate(params, batch_stats, step, workdir).metrics

  def evaluate(self, params: nnx.State, batch_stats: nnx.State, step: int, workdir: str,
               draw: bool = True) -> Evaluation:
    """The val split's caption metrics and teacher-forced metrics (process 0; {}
    elsewhere). `draw` is accepted for the detection Evaluator's signature."""
    del draw
    config = self.config
    max_images = config.eval.max_images
    records = self.split.records[:max_images] if max_images else self.split.records
    batches = pipeline.eval_batches(
        self.split, config.data, self.vocab, global_batch_size=config.eval.batch_size,
        max_images=max_images, process_index=jax.process_index(),
        process_count=jax.process_count(), task='captioning', targets=self.targets)
    total = pipeline.num_eval_batches(len(records), config.eval.batch_size)
    likelihood, rows, pending = val_loss.ValLoss(), [], None
    for batch in tqdm(batches, total=total, desc=f'eval@{step}', leave=False,
                      disable=jax.process_index() > 0):
      arrays = mesh_lib.put_batch({k: batch[k] for k in val_loss.BATCH_KEYS}, self.mesh)
      sums = self.val_loss_fn(params, batch_stats, arrays)
      outputs = self.decode_fn(params, batch_stats, arrays['image'], step)
      if pending is not None:  # the previous batch, fetched while this one runs
        rows.append(self._fetched(*pending, likelihood))
      pending = (sums, outputs, {k: batch[k] for k in ('image_id', 'mask')})
    if pending is not None:
      rows.append(self._fetched(*pending, likelihood))
    (tokens, _), meta = mesh_lib.gather_to_process_0(rows)
    if jax.process_index() > 0:
      return Evaluation({})
    results = captions.caption_results(tokens[meta['mask']], meta['image_id'][meta['mask']],
                                       self.tokenizer, self.vocab)
    references = {r.image_id: list(texts) for r, texts in zip(records, self.targets.texts)}
    metrics = caption_metrics.score_captions(
        references, {r['image_id']: r['caption'] for r in results})
    metrics.update({k: v for k, v in likelihood.metrics().items() if not math.isnan(v)})
    out = workdir_lib.eval_dir(workdir, step)
    workdir_lib.write_json(os.path.join(out, 'metrics.json'), metrics)
    workdir_lib.write_json(os.path.join(out, RESULTS_FILE), results)
    logging.info('eval@%d (captioning) on %d images: %s', step, len(records),
                 ' '.join(f'{k}={v:.4f}' for k, v in metrics.items()))
    return Evaluation(metrics)

  @staticmethod
  def _fetched(sums, outputs, meta: dict[str, np.ndarray],
               likelihood: val_loss.ValLoss) -> tuple:
    """One batch on this host: its val-loss sums added to `likelihood`, and (outputs,
    meta) of this process's rows."""
    likelihood.add(sums)
    return jax.tree.map(sharded_decode.local_rows, outputs), meta
