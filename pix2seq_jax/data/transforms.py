"""Image and box transforms: small pure TensorFlow functions used inside tf.data.

Boxes are float32 [N, 4] as (ymin, xmin, ymax, xmax), normalised to the current
image (before `pad_to_canvas`) or to the padded canvas (after it). Randomness is
stateless: each random transform takes a `seed` of shape [2], so the pipeline is a
pure function of the config seed and the example's position in the stream.
"""

from __future__ import annotations

import tensorflow as tf

from pix2seq_jax.canvas import PAD_VALUE


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG/BMP/GIF bytes -> float32 [H, W, 3] in [0, 1]; greyscale becomes RGB."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return tf.image.convert_image_dtype(image, tf.float32)


def resize_longest_side(image: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes so the longest side is `size`, keeping aspect. Returns (image, scale).

  Normalised boxes are unchanged by this transform; `scale` is resized / original.
  """
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_max(shape)
  new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
  resized = tf.image.resize(image, new_shape, method='bilinear', antialias=True)
  return tf.clip_by_value(resized, 0.0, 1.0), scale


def random_horizontal_flip(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor,
                           probability: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
  """Flips image and image-normalised boxes left-right with `probability`."""
  flip = tf.random.stateless_uniform([], seed=seed) < probability
  flipped_boxes = tf.stack(
      [boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)
  return (tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image),
          tf.cond(flip, lambda: flipped_boxes, lambda: boxes))


def pad_to_canvas(image: tf.Tensor, boxes: tf.Tensor, size: int,
                  value: float = PAD_VALUE) -> tuple[tf.Tensor, tf.Tensor]:
  """Pads bottom/right to a [size, size, 3] canvas; boxes become canvas-normalised."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  padded = tf.image.pad_to_bounding_box(image - value, 0, 0, size, size) + value
  ratio = tf.tile(shape / size, [2])  # (h, w, h, w) / size
  return padded, boxes * ratio[tf.newaxis]


def shuffle_objects(boxes: tf.Tensor, labels: tf.Tensor,
                    seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Puts the objects in a random order (the same permutation for boxes and labels)."""
  order = tf.argsort(tf.random.stateless_uniform(tf.shape(labels), seed=seed))
  return tf.gather(boxes, order), tf.gather(labels, order)
