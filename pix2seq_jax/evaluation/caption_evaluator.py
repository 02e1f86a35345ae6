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
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.data import caption_targets, coco_json
from pix2seq_jax.evaluation import caption_metrics, decoded_split, instance_evaluator, val_loss
from pix2seq_jax.inference import captions, sharded_decode
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
    rows, likelihood = decoded_split.decode_split(
        config, self.split, self.targets, self.vocab, self.mesh, self.val_loss_fn,
        self._decode_batch, ('image_id', 'mask'), params, batch_stats, step)
    if rows is None:  # not process 0
      return Evaluation({})
    (tokens, _), _, meta = rows
    results = captions.caption_results(tokens[meta['mask']], meta['image_id'][meta['mask']],
                                       self.tokenizer, self.vocab)
    references = {r.image_id: list(texts) for r, texts in zip(records, self.targets.texts)}
    metrics = caption_metrics.score_captions(
        references, {r['image_id']: r['caption'] for r in results})
    metrics.update({k: v for k, v in likelihood.items() if not math.isnan(v)})
    out = workdir_lib.eval_dir(workdir, step)
    workdir_lib.write_json(os.path.join(out, 'metrics.json'), metrics)
    workdir_lib.write_json(os.path.join(out, RESULTS_FILE), results)
    logging.info('eval@%d (captioning) on %d images: %s', step, len(records),
                 ' '.join(f'{k}={v:.4f}' for k, v in metrics.items()))
    return Evaluation(metrics)

  def _decode_batch(self, params: nnx.State, batch_stats: nnx.State, images: jax.Array,
                    batch: dict[str, np.ndarray], step: int) -> tuple[Any, None]:
    """`decoded_split.DecodeBatch`: a caption per image, from the captioning prompt."""
    return self.decode_fn(params, batch_stats, images, step), None
