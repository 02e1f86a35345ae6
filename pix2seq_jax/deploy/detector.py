"""The whole detector as one pure JAX function: canvases in, detections out.

`detector_fn` joins the model's weights with the cached decoding of `inference/decoding.py`
and reads the token sequences back into fixed-size arrays inside the same program, so it
can be exported (`export.py`) and run without the model code:

  boxes           [B, K, 4] float32  (ymin, xmin, ymax, xmax), normalised to the S x S canvas
  classes         [B, K] int32       the annotation file's category ids (-1 past the last)
  scores          [B, K] float32     (0 past the last)
  num_detections  [B] int32          how many of the K rows are detections, which come first

K is decode.max_objects (or data.max_instances). `read_objects` is the in-graph twin of
`inference/detections.parse_tokens` (grammar) and `parse_official` (official): the same
objects in the same order (tests/test_deploy.py checks it against them).
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
from pix2seq_jax.tasks import vocab as vocab_lib

_SLOTS = vocab_lib.TOKENS_PER_OBJECT
OUTPUTS = ('boxes', 'classes', 'scores', 'num_detections')


def read_objects(tokens: jax.Array, scores: jax.Array, vocab: vocab_lib.Vocabulary,
                 mode: str = 'grammar') -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`decoding.detection_outputs` [B, L] -> (boxes [B, K, 4], labels [B, K], scores [B, K],
  valid [B, K] bool) for K = L // 5 object slots, as `detections.parse` reads them."""
  batch, length = tokens.shape
  objects = length // _SLOTS
  slots = tokens[:, :objects * _SLOTS].reshape(batch, objects, _SLOTS)  # [B, K, 5]
  object_scores = scores[:, 4:objects * _SLOTS:_SLOTS]  # [B, K]
  table = np.full(vocab.size, -1, np.int32)
  table[vocab.class_tokens] = np.arange(vocab.num_classes)
  labels = jnp.asarray(table)[jnp.clip(slots[:, :, 4], 0, vocab.size - 1)]  # [B, K]
  labels = jnp.where((slots[:, :, 4] >= 0) & (slots[:, :, 4] < vocab.size), labels, -1)
  coords = vocab.bin_to_coord((slots[:, :, :4] - vocab.coord_offset).astype(jnp.float32))
  if mode == 'official':  # every slot, coordinates clipped, corners as decoded
    boxes = jnp.clip(coords, 0.0, 1.0)
    valid = labels >= 0
  else:  # whole objects before the first EOS / padding, corners in order
    stop = (slots == vocab.eos) | (slots == vocab.padding)  # [B, K, 5]
    before_stop = jnp.cumsum(jnp.any(stop, axis=-1), axis=1) == 0  # [B, K]
    ymin, xmin, ymax, xmax = (coords[:, :, i] for i in range(4))
    boxes = jnp.stack([jnp.minimum(ymin, ymax), jnp.minimum(xmin, xmax),
                       jnp.maximum(ymin, ymax), jnp.maximum(xmin, xmax)], axis=-1)
    valid = before_stop & jnp.all(vocab.is_coord(slots[:, :, :4]), axis=-1) & (labels >= 0)
  return boxes, labels, object_scores, valid


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

  def detect(params, batch_stats, canvases):
    model = nnx.merge(graphdef, params, batch_stats)
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    state = decoding.decode(model, canvases, vocab, length=length,
                            temperature=dec.temperature, top_k=dec.top_k, top_p=dec.top_p,
                            rng=rng, mode=dec.mode)
    tokens, scores = decoding.detection_outputs(state, vocab, dec.score, dec.mode)
    return first_valid(*read_objects(tokens, scores, vocab, dec.mode), category_ids)

  return detect
