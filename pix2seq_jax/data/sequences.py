"""Objects -> decoder input tokens, target tokens and per-token loss weights (TensorFlow).

target = [y0 x0 y1 x1 c]*n + [EOS] + [PAD]*rest    (length 5 * max_instances + 1)
input  = [START] + target[:-1]
weight = 1 on object tokens, `eos_weight` on EOS, 0 on padding.
Objects beyond `max_instances` are dropped (their order is already random).
"""

from __future__ import annotations

import types

import tensorflow as tf

from pix2seq_jax import vocab as vocab_lib


def build_sequences(boxes: tf.Tensor, labels: tf.Tensor, vocab: vocab_lib.Vocabulary,
                    max_instances: int, eos_weight: float) -> dict[str, tf.Tensor]:
  """boxes: [N, 4] canvas-normalised; labels: [N] int. Returns the three [L] sequences."""
  length = vocab_lib.sequence_length(max_instances)
  boxes, labels = boxes[:max_instances], labels[:max_instances]
  num_objects = tf.shape(labels)[0]
  coords = tf.cast(vocab.coord_to_bin(boxes, xp=_TF_NUMPY), tf.int32) + vocab.coord_offset  # [n, 4]
  classes = tf.cast(vocab.class_token(labels), tf.int32)[:, tf.newaxis]  # [n, 1]
  objects = tf.reshape(tf.concat([coords, classes], axis=1), [-1])  # [5n]
  target = tf.concat([objects, [vocab_lib.EOS]], axis=0)
  num_tokens = tf.shape(target)[0]
  target = tf.pad(target, [[0, length - num_tokens]], constant_values=vocab_lib.PADDING)
  positions = tf.range(length)
  object_tokens = vocab_lib.TOKENS_PER_OBJECT * num_objects
  weights = tf.where(positions < object_tokens, 1.0,
                     tf.where(positions == object_tokens, eos_weight, 0.0))
  target = tf.ensure_shape(target, [length])
  inputs = tf.concat([[vocab_lib.START], target[:-1]], axis=0)
  return {'input_tokens': inputs, 'target_tokens': target,
          'loss_weights': tf.ensure_shape(tf.cast(weights, tf.float32), [length])}


# The two numpy functions `Vocabulary.coord_to_bin` needs, on TF tensors.
_TF_NUMPY = types.SimpleNamespace(round=tf.round, clip=tf.clip_by_value)
