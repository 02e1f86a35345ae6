"""The whole detector as one pure JAX function: canvases in, detections out (and the
decoding of the other tasks as one function each: `instance_fn`, `caption_fn`).

`detector_fn` joins the model's weights with the cached decoding of `inference/decoding.py`
and reads the token sequences back into fixed-size arrays inside the same program, so it
can be exported (`export.py`) and run without the model code:

  boxes           [B, K, 4] float32  (ymin, xmin, ymax, xmax), normalised to the S x S canvas
  classes         [B, K] int32       the annotation file's category ids (-1 past the last)
  scores          [B, K] float32     (0 past the last)
  num_detections  [B] int32          how many of the K rows are detections, which come first

K is decode.max_objects (or data.max_instances). `read_objects` (`tasks/detection.py`) is the
in-graph twin of the detection task's `parse_tokens` (grammar) and `parse_official`
(official): the same objects in the same order (tests/test_deploy.py checks it against them).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pix2seq_jax.data import coco_json
from pix2seq_jax.inference import decoding
from pix2seq_jax.tasks import captioning, detection
from pix2seq_jax.tasks import vocab as vocab_lib

OUTPUTS = ('boxes', 'classes', 'scores', 'num_detections')


def first_valid(boxes: jax.Array, labels: jax.Array, scores: jax.Array, valid: jax.Array,
                category_ids: np.ndarray) -> dict[str, jax.Array]:
  """The valid objects moved to the front, in their order; labels -> category ids."""
  order = jnp.argsort(~valid, axis=1, stable=True)  # [B, K]
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                       axis=1)
  valid = take(valid)
  ids = jnp.asarray(category_ids, jnp.int32)[jnp.maximum(take(labels), 0)]
  return {'boxes': jnp.where(valid[..., None], take(boxes), 0.0),
          'classes': jnp.where(valid, ids, -1),
          'scores': jnp.where(valid, take(scores), 0.0),
          'num_detections': jnp.sum(valid, axis=1).astype(jnp.int32)}


def detector_fn(config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
                vocab: vocab_lib.Vocabulary, categories: coco_json.CategoryMap,
                step: int) -> Callable:
  """(params, batch_stats, canvases [B, H, W, 3] float32) -> the detections above.

  Decodes as the Predictor of the same workdir and checkpoint `step` (its settings and
  sampling key).
  """
  dec = config.decode
  length = vocab_lib.sequence_length(dec.max_objects or config.data.max_instances)
  category_ids = np.asarray(categories.category_ids, np.int32)
  task = detection.DetectionTask(vocab, dec.mode, dec.score)

  def detect(params, batch_stats, canvases):
    model = nnx.merge(graphdef, params, batch_stats)
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    state = decoding.decode(model, canvases, task, length=length,
                            temperature=dec.temperature, top_k=dec.top_k, top_p=dec.top_p,
                            rng=rng, mode=dec.mode)
    tokens, scores = task.outputs(state.tokens, state.token_probs, state.task_state)
    return first_valid(*detection.read_objects(tokens, scores, vocab, dec.mode), category_ids)

  return detect


def instance_fn(config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
                task, step: int) -> Callable:
  """An instance task's decoding as one function: (params, batch_stats, canvases
  [B, S, S, 3] float32, prompts [B, n, 6] int32) -> its outputs as a dict of [B, rows, ...]
  arrays (segmentation: points [B, n * k, 2P]; keypoints: tokens, points [B, n, 34],
  points_score [B, n]), decoded as the Predictor of the same workdir and checkpoint `step`
  decodes them (`sharded_decode.InstanceDecodeFn`: its task, sampling settings and key)."""
  samples = int(getattr(task, 'num_samples', 1))

  def decode(params, batch_stats, canvases, prompts):
    model = nnx.merge(graphdef, params, batch_stats)
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    batch = canvases.shape[0]
    rows = jnp.repeat(prompts.reshape(-1, prompts.shape[-1]), samples, axis=0)  # [B*n*k, 6]
    state = decoding.decode(model, canvases, task, length=task.length, rng=rng,
                            prompt=rows, **task.sampling())
    outputs = task.outputs(state.tokens, state.token_probs, state.task_state)
    outputs = outputs._asdict() if hasattr(outputs, '_asdict') else {'points': outputs}
    return {k: v.reshape(batch, -1, *v.shape[1:]) for k, v in outputs.items()}

  return decode


def caption_fn(config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
               task: captioning.CaptioningTask, step: int) -> Callable:
  """Captioning's decoding as one function: (params, batch_stats, canvases [B, S, S, 3]
  float32) -> (tokens [B, L] int32, token_probs [B, L] float32), L = data.max_text_len,
  decoded as the Predictor of the same workdir and checkpoint `step` decodes them
  (`sharded_decode.CaptionDecodeFn`: its task, sampling settings and key); the text is
  read from the tokens on the host (`inference/captions.py`)."""

  def decode(params, batch_stats, canvases):
    model = nnx.merge(graphdef, params, batch_stats)
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    state = decoding.decode(model, canvases, task, length=task.length, rng=rng,
                            **task.sampling())
    return task.outputs(state.tokens, state.token_probs, state.task_state)

  return decode
