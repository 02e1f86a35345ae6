"""Objects -> decoder input tokens, target tokens and per-token loss weights (TensorFlow).

target = [y0 x0 y1 x1 c]*n + [EOS] + [PAD]*rest    (length 5 * max_instances + 1)
input  = [START] + target[:-1]
weight = 1 on real objects' tokens, `eos_weight` on EOS, 0 on padding.
Objects beyond `max_instances` are dropped (their order is already random).

Sequence augmentation (Pix2Seq, section 2.4), each part switchable:
  noise objects     the sequence is topped up to `max_instances` objects with noise
                    objects of the "n/a" class that follow the real ones: duplicates
                    (real boxes, each coordinate moved by truncnorm(0, 0.05) x the box's
                    height or width) and bad boxes (a real box moved to a uniform
                    centre, or a random box: uniform centre, height and width
                    |truncnorm(0, 0.5)|), all inside the image (not its padding),
                    as the official code. The number of duplicates is uniform in
                    [0, noise]; bad boxes make up the rest. Their coordinate tokens
                    weigh `noise_coord_weight` (0: the model is not taught to place
                    them) and their class token `noise_class_weight` (1: it learns to
                    call them "n/a").
  class corruption  in the decoder input only, every class token is replaced by a
                    uniformly random class (p 0.5) or "n/a"; targets keep the truth.
truncnorm(0, s) is a normal of scale s truncated at two scales (TensorFlow's).
"""

from __future__ import annotations

import types

import tensorflow as tf

from pix2seq_jax.tasks import vocab as vocab_lib

# Stateless random streams of one example, folded into its seed.
_NOISE_KIND_OP, _NOISE_SOURCE_OP, _JITTER_OP, _SHIFT_OP, _RANDOM_OP, _NOISE_ORDER_OP = range(6)
_CORRUPT_OP = 6
DUPLICATE_JITTER = 0.05  # x box height/width
RANDOM_BOX_SCALE = 0.5  # of the canvas


def _fold(seed: tf.Tensor, op: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, op)


def _height_width(boxes: tf.Tensor) -> tf.Tensor:
  return tf.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)  # [N, 2]


def _from_centre(centre: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  return tf.concat([centre - size / 2, centre + size / 2], axis=1)


def jitter_boxes(boxes: tf.Tensor, seed: tf.Tensor,
                 scale: float = DUPLICATE_JITTER) -> tf.Tensor:
  """Moves each coordinate by truncnorm(0, scale) x the box's height (y) or width (x)."""
  size = tf.tile(_height_width(boxes), [1, 2])  # (h, w, h, w)
  noise = tf.random.stateless_truncated_normal(tf.shape(boxes), seed=seed, stddev=scale)
  return boxes + noise * size


def shift_boxes(boxes: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Keeps each box's height and width and moves its centre to a uniform point."""
  centre = tf.random.stateless_uniform(tf.shape(boxes[:, :2]), seed=seed)
  return _from_centre(centre, _height_width(boxes))


def random_boxes(num: int | tf.Tensor, seed: tf.Tensor,
                 scale: float = RANDOM_BOX_SCALE) -> tf.Tensor:
  """Uniform centres; height and width |truncnorm(0, scale)|. [num, 4], not clipped."""
  centre_seed, size_seed = _fold(seed, 0), _fold(seed, 1)
  centre = tf.random.stateless_uniform([num, 2], seed=centre_seed)
  size = tf.abs(tf.random.stateless_truncated_normal([num, 2], seed=size_seed, stddev=scale))
  return _from_centre(centre, size)


def _ordered_and_clipped(boxes: tf.Tensor) -> tf.Tensor:
  boxes = tf.clip_by_value(boxes, 0.0, 1.0)
  low, high = tf.minimum(boxes[:, :2], boxes[:, 2:]), tf.maximum(boxes[:, :2], boxes[:, 2:])
  return tf.concat([low, high], axis=1)


def noise_boxes(boxes: tf.Tensor, num_noise: tf.Tensor, max_noise: int,
                seed: tf.Tensor) -> tf.Tensor:
  """`num_noise` (<= max_noise) noise boxes made from the real `boxes` [N, 4]: [num_noise, 4].

  Without real boxes every noise box is a random box.
  """
  num_real = tf.shape(boxes)[0]
  has_real = num_real > 0
  num_duplicates = tf.where(has_real, tf.random.stateless_uniform(
      [], seed=_fold(seed, _NOISE_KIND_OP), maxval=num_noise + 1, dtype=tf.int32), 0)
  kind_seed = _fold(_fold(seed, _NOISE_KIND_OP), 1)
  shifted = tf.random.stateless_uniform([max_noise], seed=kind_seed) < 0.5  # else random
  source = tf.random.stateless_uniform([max_noise], seed=_fold(seed, _NOISE_SOURCE_OP),
                                       maxval=tf.maximum(num_real, 1), dtype=tf.int32)
  sources = tf.gather(tf.concat([boxes, tf.zeros([1, 4])], axis=0),
                      tf.where(has_real, source, num_real))  # [max_noise, 4]
  candidates = tf.where(
      (tf.range(max_noise) < num_duplicates)[:, None],
      jitter_boxes(sources, _fold(seed, _JITTER_OP)),
      tf.where((shifted & has_real)[:, None], shift_boxes(sources, _fold(seed, _SHIFT_OP)),
               random_boxes(max_noise, _fold(seed, _RANDOM_OP))))
  order = tf.argsort(tf.random.stateless_uniform([max_noise], seed=_fold(seed, _NOISE_ORDER_OP)))
  chosen = tf.gather(candidates, tf.boolean_mask(order, order < num_noise))
  return _ordered_and_clipped(tf.reshape(chosen, [-1, 4]))


def build_sequences(boxes: tf.Tensor, labels: tf.Tensor, vocab: vocab_lib.Vocabulary,
                    max_instances: int, eos_weight: float, *, seed: tf.Tensor | None = None,
                    noise_objects: bool = False, corrupt_classes: bool = False,
                    noise_coord_weight: float = 0.0, noise_class_weight: float = 1.0,
                    extent: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
  """boxes: [N, 4] canvas-normalised; labels: [N] int. Returns the three [L] sequences.

  `seed` [2] drives the sequence augmentation and is needed when either part is on.
  `extent` [2]: the image's height and width as fractions of the canvas (the rest is
  padding); noise boxes are made inside it, as the official code makes them before
  padding. Default: the whole canvas.
  """
  if (noise_objects or corrupt_classes) and seed is None:
    raise ValueError('Sequence augmentation needs a seed.')
  length = vocab_lib.sequence_length(max_instances)
  boxes, labels = boxes[:max_instances], labels[:max_instances]
  num_real = tf.shape(labels)[0]
  classes = tf.gather(vocab.class_tokens, labels)  # [n] int32
  if noise_objects:
    extent = tf.ones([2]) if extent is None else tf.cast(extent, tf.float32)
    scale = tf.tile(extent, [2])[None]  # (h, w, h, w): image <-> canvas coordinates
    noise = noise_boxes(boxes / scale, max_instances - num_real, max_instances,
                        _fold(seed, 0)) * scale
    boxes = tf.concat([boxes, noise], axis=0)
    classes = tf.concat([classes, tf.fill([tf.shape(noise)[0]], vocab.noise_class)], 0)
  num_objects = tf.shape(classes)[0]
  coords = tf.cast(vocab.coord_to_bin(boxes, xp=_TF_NUMPY), tf.int32) + vocab.coord_offset  # [n, 4]
  objects = tf.concat([coords, classes[:, tf.newaxis]], axis=1)  # [n, 5]
  target = tf.concat([tf.reshape(objects, [-1]), [vocab.eos]], axis=0)
  target = tf.pad(target, [[0, length - tf.shape(target)[0]]], constant_values=vocab.padding)
  target = tf.ensure_shape(target, [length])

  positions = tf.range(length)
  slot = positions % vocab_lib.TOKENS_PER_OBJECT  # 4 = class
  object_index = positions // vocab_lib.TOKENS_PER_OBJECT
  in_object = object_index < num_objects
  is_noise = in_object & (object_index >= num_real)
  noise_weight = tf.where(slot == 4, noise_class_weight, noise_coord_weight)
  weights = tf.where(
      is_noise, noise_weight,
      tf.where(in_object, 1.0,
               tf.where(positions == vocab_lib.TOKENS_PER_OBJECT * num_objects, eos_weight, 0.0)))

  inputs = target
  if corrupt_classes:
    random_class = tf.gather(vocab.class_tokens, tf.random.stateless_uniform(
        [length], seed=_fold(seed, _CORRUPT_OP), maxval=vocab.num_classes, dtype=tf.int32))
    use_random = tf.random.stateless_uniform([length], seed=_fold(seed, _CORRUPT_OP + 1)) < 0.5
    corrupted = tf.where(use_random, random_class, vocab.noise_class)
    inputs = tf.where(in_object & (slot == 4), corrupted, target)
  inputs = tf.concat([[vocab.start], inputs[:-1]], axis=0)
  return {'input_tokens': inputs, 'target_tokens': target,
          'loss_weights': tf.ensure_shape(tf.cast(weights, tf.float32), [length])}


# The two numpy functions `Vocabulary.coord_to_bin` needs, on TF tensors.
_TF_NUMPY = types.SimpleNamespace(round=tf.round, clip=tf.clip_by_value)
