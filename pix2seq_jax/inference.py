"""From images to detections: the jitted, sharded decode and conversion to COCO results.

Shared by evaluation (train loop, --mode=eval) and prediction (Predictor).
"""

from __future__ import annotations

from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax import decode, detections, sharding
from pix2seq_jax import vocab as vocab_lib


def make_decode_fn(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                   vocab: vocab_lib.Vocabulary, mesh: Mesh) -> Callable:
  """(params, batch_stats, images [B, H, W, 3]) -> (tokens [B, L], scores [B, L]).

  The outputs are `decode.detection_outputs`, ready for `detections.parse_tokens`. One
  compilation per image shape.
  """
  dec = config.decode
  length = vocab_lib.sequence_length(dec.max_objects or config.data.max_instances)

  def run(params, batch_stats, images, rng):
    params, batch_stats = sharding.gathered((params, batch_stats), mesh)
    model = nnx.merge(graphdef, params, batch_stats)
    state = decode.decode(model, images, vocab, length=length, temperature=dec.temperature,
                          top_k=dec.top_k, top_p=dec.top_p, rng=rng)
    return decode.detection_outputs(state, vocab, dec.score)

  # Parameters come replicated or sharded (train.shard_params); `run` gathers them.
  jitted = jax.jit(run, in_shardings=(None, None, sharding.batch_sharded(mesh),
                                      sharding.replicated(mesh)),
                   out_shardings=sharding.batch_sharded(mesh))
  seed = config.seed

  def decode_fn(params, batch_stats, images, step: int = 0):
    """Decodes with the sampling key of `step` (greedy decoding ignores it)."""
    return jitted(params, batch_stats, images, jax.random.fold_in(jax.random.key(seed), step))

  decode_fn.compilations = jitted._cache_size  # executables compiled so far (one per shape)
  return decode_fn


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards], axis=0)


def coco_results(tokens: np.ndarray, scores: np.ndarray, batch: dict[str, np.ndarray],
                 vocab: vocab_lib.Vocabulary, category_ids: tuple[int, ...],
                 canvas_size: int) -> list[dict]:
  """Decoded rows -> COCO results (`image_id`, `category_id`, `bbox` [x, y, w, h], `score`).

  Rows whose `mask` is False (padding examples) give nothing.
  """
  results = []
  mask = batch.get('mask', np.ones(len(tokens), bool))
  for row in np.flatnonzero(mask):
    found = detections.parse_tokens(tokens[row], vocab, scores[row])
    boxes = detections.to_original_pixels(
        found.boxes, canvas_size, float(batch['scale'][row]),
        tuple(int(v) for v in batch['original_size'][row]))
    for box, label, score in zip(boxes, found.labels, found.scores):
      results.append({'image_id': int(batch['image_id'][row]),
                      'category_id': int(category_ids[label]),
                      'bbox': [round(float(v), 2) for v in box], 'score': float(score)})
  return results
