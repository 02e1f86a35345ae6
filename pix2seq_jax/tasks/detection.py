"""Object detection as a task (`task.Task`): its grammar, class bookkeeping and parsers.

An object is 5 tokens, ``ymin xmin ymax xmax class`` (`vocab.py`); the prompt is the
vocabulary's detection prompt (`vocab.start`).

Decoding hooks (`DetectionTask`), by `decode.mode`:
  'grammar'   a per-row grammar masks the logits so that every sequence parses: slot 0
              of an object takes a coordinate or EOS, slots 1 and 3 a coordinate, slot 2
              (ymax) a coordinate not below the object's ymin, slot 3 (xmax) one not below
              its xmin, slot 4 a class or "n/a"; the last position (after `max_objects`
              objects) can only be EOS.
  'official'  no grammar (the official Pix2Seq samples from the unmasked logits).
In both, the task's state records at each class slot of a live row the most likely real
class and its probability under the (masked) softmax: the official code's class argmax.

Outputs (`DetectionTask.outputs`, in the jitted program): (tokens [B, L], scores [B, L])
where each class slot holds that best real class and its object's score: the class
probability ('class', as the official code), optionally times the probabilities of its
four coordinate tokens ('class_x_coords'). Objects whose class slot emitted "n/a" are kept
the same way, as the official code does: a model trained with noise objects says "n/a"
where it is unsure, and its best real class then comes with a low score.

Parsers of those outputs (never failing on a malformed sequence): on the host (numpy)
`parse_tokens` ('grammar': whole objects from the start up to the first EOS or padding;
an object is dropped if it is cut off, has a non-coordinate token in a coordinate slot or a
non-class token in its class slot; reversed corners are swapped) and `parse_official`
('official', the official post-processing: every 5-token slot is an object, coordinates
dequantised and clipped to [0, 1] of the canvas whatever their token, corners as decoded;
an object is dropped only when its class names no category of the dataset); in the graph
`read_objects`, their fixed-size twin for exported detectors. Boxes are (ymin, xmin, ymax,
xmax) normalised to the square canvas; `inference/detections.py` turns them into pixels
and COCO results.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.tasks.task import NEG_INF

# The values of decode.mode and decode.score (config/default.py lists them too).
MODES = ('grammar', 'official')
SCORE_MODES = ('class', 'class_x_coords')
_SLOTS = vocab_lib.TOKENS_PER_OBJECT
_CLASS_SLOT = _SLOTS - 1


def grammar_mask(position: jax.Array, tokens: jax.Array, vocab: vocab_lib.Vocabulary,
                 length: int) -> jax.Array:
  """[B, V] bool: the tokens each row may take at `position`, given its `tokens` [B, L]."""
  ids = jnp.arange(vocab.size)
  slot = position % _SLOTS
  # ymax (slot 2) and xmax (slot 3) may not fall below ymin / xmin, two tokens back.
  lower = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(position - 2, 0), axis=1,
                                       keepdims=True)  # [B, 1]
  lower = jnp.where((slot == 2) | (slot == 3), lower, vocab.coord_offset)
  coord = vocab.is_coord(ids) & (ids >= lower)  # [B, V]
  label = vocab.is_class(ids) | (ids == vocab.noise_class)
  eos = ids == vocab.eos
  allowed = jnp.where(slot == 0, coord | eos, jnp.where(slot == _CLASS_SLOT, label, coord))
  return jnp.where(position == length - 1, eos, allowed)


class DetectionState(NamedTuple):
  """Detection's per-row decoding state: the class bookkeeping."""

  class_tokens: jax.Array  # [B, L] int32: best real class token at class slots, else PADDING
  class_probs: jax.Array  # [B, L] float32: its probability at class slots, else 0


@dataclasses.dataclass(frozen=True)
class DetectionTask:
  """The detection task's decoding hooks for `vocab`, `mode` ('grammar' or 'official') and
  `score` (how `outputs` scores an object: 'class' or 'class_x_coords')."""

  vocab: vocab_lib.Vocabulary
  mode: str = 'grammar'
  score: str = 'class'

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'decode.mode must be one of {MODES}, got {self.mode!r}.')
    if self.score not in SCORE_MODES:
      raise ValueError(f'decode.score must be one of {SCORE_MODES}, got {self.score!r}.')

  @property
  def prompt(self) -> int:
    return self.vocab.start

  def init_state(self, batch: int, length: int) -> DetectionState:
    return DetectionState(
        class_tokens=jnp.full((batch, length), self.vocab.padding, jnp.int32),
        class_probs=jnp.zeros((batch, length), jnp.float32))

  def allowed(self, position: jax.Array, tokens: jax.Array,
              state: DetectionState) -> jax.Array | None:
    if self.mode == 'official':
      return None
    return grammar_mask(position, tokens, self.vocab, tokens.shape[1])

  def update(self, state: DetectionState, position: jax.Array, logits: jax.Array,
             probs: jax.Array, token: jax.Array, done: jax.Array) -> DetectionState:
    real_class = self.vocab.is_class(jnp.arange(self.vocab.size))  # [V]
    is_class_slot = (position % _SLOTS == _CLASS_SLOT) & ~done  # [B]
    best = jnp.argmax(jnp.where(real_class, logits, NEG_INF), axis=-1).astype(jnp.int32)
    best_prob = jnp.take_along_axis(probs, best[:, None], axis=1)[:, 0]  # [B]
    write = lambda array, value: jax.lax.dynamic_update_slice_in_dim(
        array, value[:, None], position, axis=1)
    return DetectionState(
        class_tokens=write(state.class_tokens,
                           jnp.where(is_class_slot, best, self.vocab.padding)),
        class_probs=write(state.class_probs, jnp.where(is_class_slot, best_prob, 0.0)))

  def outputs(self, tokens: jax.Array, token_probs: jax.Array,
              state: DetectionState) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, L], scores [B, L]) for `parse` / `read_objects`.

    At each class slot where a real class or "n/a" was emitted (official mode: at every
    class slot), the token becomes the most likely real class and the score that object's
    score; EOS and padding stay as emitted.
    """
    vocab = self.vocab
    batch, length = tokens.shape
    if self.mode == 'official':
      label_slot = (jnp.arange(length) % _SLOTS == _CLASS_SLOT)[None]
    else:
      label_slot = vocab.is_class(tokens) | (tokens == vocab.noise_class)
    tokens = jnp.where(label_slot, state.class_tokens, tokens)
    objects = length // _SLOTS  # length is 5 * objects + 1
    per_object = token_probs[:, :objects * _SLOTS].reshape(batch, objects, _SLOTS)
    object_scores = state.class_probs[:, _CLASS_SLOT:objects * _SLOTS:_SLOTS]  # [B, objects]
    if self.score == 'class_x_coords':
      object_scores = object_scores * jnp.prod(per_object[:, :, :4], axis=-1)
    scores = jnp.zeros((batch, length), jnp.float32)
    return tokens, scores.at[:, _CLASS_SLOT:objects * _SLOTS:_SLOTS].set(object_scores)


@dataclasses.dataclass
class Detections:
  """Detections of one image. boxes: [K, 4] as (ymin, xmin, ymax, xmax)."""

  boxes: np.ndarray  # [K, 4] float32
  labels: np.ndarray  # [K] int32, contiguous labels
  scores: np.ndarray  # [K] float32


def parse_tokens(tokens: np.ndarray, vocab: vocab_lib.Vocabulary,
                 scores: np.ndarray | None = None) -> Detections:
  """Parses one token sequence ([L] ints) into detections with normalised boxes.

  Args:
    tokens: the generated response tokens, without the start token.
    vocab: the vocabulary the tokens were produced with.
    scores: optional [L] per-token scores; an object's score is the score at
      its class token. Defaults to 1.
  """
  tokens = np.asarray(tokens).reshape(-1).astype(np.int64)
  if scores is None:
    scores = np.ones(tokens.shape, np.float32)
  scores = np.asarray(scores, np.float32).reshape(-1)
  stops = np.flatnonzero((tokens == vocab.eos) | (tokens == vocab.padding))
  end = int(stops[0]) if stops.size else tokens.size
  num_objects = end // _SLOTS
  objects = tokens[:num_objects * _SLOTS].reshape(num_objects, _SLOTS)
  object_scores = scores[:num_objects * _SLOTS].reshape(num_objects, _SLOTS)[:, _CLASS_SLOT]
  coord_tokens, class_tokens = objects[:, :4], objects[:, _CLASS_SLOT]
  labels = vocab.label_of_token(class_tokens)
  valid = vocab.is_coord(coord_tokens).all(axis=1) & (labels >= 0)
  coords = vocab.bin_to_coord(coord_tokens[valid] - vocab.coord_offset).astype(np.float32)
  coords = coords.reshape(-1, 4)
  boxes = np.stack([
      np.minimum(coords[:, 0], coords[:, 2]), np.minimum(coords[:, 1], coords[:, 3]),
      np.maximum(coords[:, 0], coords[:, 2]), np.maximum(coords[:, 1], coords[:, 3]),
  ], axis=1)
  return Detections(
      boxes=boxes.astype(np.float32),
      labels=labels[valid].astype(np.int32),
      scores=object_scores[valid].astype(np.float32))


def parse_official(tokens: np.ndarray, vocab: vocab_lib.Vocabulary,
                   scores: np.ndarray | None = None) -> Detections:
  """Parses one sequence ([L] ints, class slots holding the best class token, as
  `DetectionTask.outputs` in official mode) as the official post-processing."""
  tokens = np.asarray(tokens).reshape(-1).astype(np.int64)
  scores = (np.ones(tokens.shape, np.float32) if scores is None
            else np.asarray(scores, np.float32).reshape(-1))
  num_objects = tokens.size // _SLOTS
  objects = tokens[:num_objects * _SLOTS].reshape(num_objects, -1)
  object_scores = scores[:num_objects * _SLOTS].reshape(num_objects, -1)[:, _CLASS_SLOT]
  labels = vocab.label_of_token(objects[:, _CLASS_SLOT])
  coords = np.clip(vocab.bin_to_coord((objects[:, :4] - vocab.coord_offset).astype(np.float32)),
                   0.0, 1.0)
  valid = labels >= 0
  return Detections(boxes=coords[valid].astype(np.float32),
                    labels=labels[valid].astype(np.int32),
                    scores=object_scores[valid].astype(np.float32))


def parse(tokens: np.ndarray, vocab: vocab_lib.Vocabulary, scores: np.ndarray | None = None,
          mode: str = 'grammar') -> Detections:
  """`parse_tokens` or `parse_official` by `decode.mode`."""
  return (parse_official if mode == 'official' else parse_tokens)(tokens, vocab, scores)


def read_objects(tokens: jax.Array, scores: jax.Array, vocab: vocab_lib.Vocabulary,
                 mode: str = 'grammar') -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`DetectionTask.outputs` [B, L] -> (boxes [B, K, 4], labels [B, K], scores [B, K],
  valid [B, K] bool) for K = L // 5 object slots, as `parse` reads them (in the graph)."""
  batch, length = tokens.shape
  objects = length // _SLOTS
  slots = tokens[:, :objects * _SLOTS].reshape(batch, objects, _SLOTS)  # [B, K, 5]
  object_scores = scores[:, _CLASS_SLOT:objects * _SLOTS:_SLOTS]  # [B, K]
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
