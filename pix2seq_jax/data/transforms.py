"""Image and box transforms: small pure TensorFlow functions used inside tf.data.

Boxes are float32 [N, 4] as (ymin, xmin, ymax, xmax), normalised to the current
image (before `pad_to_canvas`) or to the padded canvas (after it). Randomness is
stateless: each random transform takes a `seed` of shape [2], so the pipeline is a
pure function of the config seed and the example's position in the stream.

Evaluation works on float32 pixels in [0, 1]. Training keeps uint8 pixels from the
decoder to the batch (a quarter of the bytes to pad, batch and copy to the device):
resampled pixels are rounded to the nearest of the 256 levels, and the padding is left
for the device to fill (`canvas.model_images`). `random_scale_jitter_and_crop` gives the
pixels of `random_scale_jitter` then `random_crop` (the float reference) to within that
rounding, with the same draws and boxes.
"""

from __future__ import annotations

import tensorflow as tf

from pix2seq_jax.data.canvas import PAD_VALUE


def decode_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3]; greyscale becomes RGB."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def to_float(pixels: tf.Tensor) -> tf.Tensor:
  """uint8 pixels -> float32 in [0, 1] (x * float32(1/255), as `canvas.model_images`)."""
  return tf.image.convert_image_dtype(pixels, tf.float32)


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG/BMP/GIF bytes -> float32 [H, W, 3] in [0, 1]; greyscale becomes RGB."""
  return to_float(decode_pixels(image_bytes))


def round_to_pixels(levels: tf.Tensor) -> tf.Tensor:
  """float32 values on the 0..255 scale -> the nearest uint8 levels (clipped)."""
  return tf.cast(tf.round(tf.clip_by_value(levels, 0.0, 255.0)), tf.uint8)


def apply_exif_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
  """Turns stored pixels [H, W, C] upright as EXIF `orientation` (1..8) says (PIL's exif_transpose).

  2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
  8 rotate 90 counter-clockwise; 1 (and anything else) leaves the image as stored.
  """
  transpose = lambda x: tf.transpose(x, [1, 0, 2])
  branches = [
      lambda: image,
      lambda: image,
      lambda: tf.reverse(image, [1]),
      lambda: tf.reverse(image, [0, 1]),
      lambda: tf.reverse(image, [0]),
      lambda: transpose(image),
      lambda: tf.image.rot90(image, k=3),
      lambda: transpose(tf.reverse(image, [0, 1])),
      lambda: tf.image.rot90(image, k=1),
  ]
  index = tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)
  return tf.switch_case(tf.cast(index, tf.int32), branches)


def resize_to(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """Resizes to `size` (h, w) where the image has another size; else returns it unchanged.

  float32 images stay in [0, 1]; uint8 pixels are resized and rounded back to uint8.
  """
  if image.dtype == tf.uint8:
    resize = lambda: round_to_pixels(tf.image.resize(image, size, antialias=True))
  else:
    resize = lambda: tf.clip_by_value(tf.image.resize(image, size, antialias=True), 0., 1.)
  return tf.cond(tf.reduce_all(tf.shape(image)[:2] == size), lambda: image, resize)


def longest_side_shape(shape: tf.Tensor,
                       size: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(int32 [2] shape with the longest side `size`, keeping aspect; float32 scale)."""
  shape = tf.cast(shape, tf.float32)
  scale = tf.cast(size, tf.float32) / tf.reduce_max(shape)
  return tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1), scale


def resize_longest_side(image: tf.Tensor,
                        size: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes so the longest side is `size`, keeping aspect. Returns (image, scale).

  Normalised boxes are unchanged by this transform; `scale` is resized / original.
  """
  new_shape, scale = longest_side_shape(tf.shape(image)[:2], size)
  # Antialiasing only changes a downscale and costs several plain bilinear resizes
  # (BENCHMARKS.md, input pipeline): the same pixels, faster, when not shrinking.
  resized = tf.cond(scale < 1.0,
                    lambda: tf.image.resize(image, new_shape, method='bilinear', antialias=True),
                    lambda: tf.image.resize(image, new_shape, method='bilinear'))
  return tf.clip_by_value(resized, 0.0, 1.0), scale


def _jitter_size(size: int, seed: tf.Tensor, min_scale: float, max_scale: float) -> tf.Tensor:
  """size * s, s ~ U[min_scale, max_scale]: the jittered longest side."""
  jitter = tf.random.stateless_uniform([], seed=seed, minval=min_scale, maxval=max_scale)
  return tf.cast(size, tf.float32) * jitter


def random_scale_jitter(image: tf.Tensor, size: int, seed: tf.Tensor, min_scale: float,
                        max_scale: float) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes the longest side to `size * s`, s ~ U[min_scale, max_scale], keeping aspect.

  Normalised boxes are unchanged. Returns (image [H', W', 3], resized / original).
  """
  return resize_longest_side(image, _jitter_size(size, seed, min_scale, max_scale))


def _crop_window(shape: tf.Tensor, size: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(offset, window) int32 [2]: a random window of min(shape, size) inside `shape`."""
  window = tf.minimum(shape, size)
  offset = tf.cast(tf.floor(tf.random.stateless_uniform([2], seed=seed) *
                            tf.cast(shape - window + 1, tf.float32)), tf.int32)
  return tf.minimum(offset, shape - window), window  # offset uniform in [0, shape - window]


def _crop_boxes(boxes: tf.Tensor, labels: tf.Tensor, shape: tf.Tensor, offset: tf.Tensor,
                window: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Boxes normalised to `shape` -> to the window, clipped; boxes left without area dropped."""
  shape_f, offset_f, window_f = (tf.tile(tf.cast(t, tf.float32), [2])
                                 for t in (shape, offset, window))  # (h, w, h, w)
  moved = tf.clip_by_value((boxes * shape_f - offset_f) / window_f, 0.0, 1.0)
  keep = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
  return tf.boolean_mask(moved, keep), tf.boolean_mask(labels, keep)


def random_crop(image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, size: int,
                seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Crops a random window of at most size x size; boxes follow, clipped to the window.

  Boxes (image-normalised) that keep no area inside the window are dropped with their
  labels. Sides already <= size are kept whole (the window is min(side, size)).
  """
  shape = tf.shape(image)[:2]
  offset, window = _crop_window(shape, size, seed)
  cropped = tf.image.crop_to_bounding_box(image, offset[0], offset[1], window[0], window[1])
  return (cropped, *_crop_boxes(boxes, labels, shape, offset, window))


def resized_window(pixels: tf.Tensor, new_shape: tf.Tensor, offset: tf.Tensor,
                   window: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [window]: rows and columns offset .. offset + window - 1 of
  the image resized to `new_shape` as `resize_longest_side` resizes (antialiased when
  shrinking, plain bilinear otherwise), rounded to uint8.

  TensorFlow's resize kernels read the uint8 pixels directly; only the window is rounded.
  (Resampling just the window, with `tf.image.crop_and_resize` or ScaleAndTranslate,
  is slower than resizing the whole image with the bilinear kernel: BENCHMARKS.md.)
  """
  def resized(antialias: bool):
    levels = tf.image.resize(pixels, new_shape, method='bilinear', antialias=antialias)
    return round_to_pixels(tf.image.crop_to_bounding_box(levels, offset[0], offset[1],
                                                         window[0], window[1]))

  keep = lambda: tf.image.crop_to_bounding_box(pixels, offset[0], offset[1], window[0],
                                               window[1])
  shrinking = tf.reduce_any(new_shape < tf.shape(pixels)[:2])
  return tf.cond(tf.reduce_all(new_shape == tf.shape(pixels)[:2]), keep,
                 lambda: tf.cond(shrinking, lambda: resized(True), lambda: resized(False)))


def random_scale_jitter_and_crop(
    pixels: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, size: int, scale_seed: tf.Tensor,
    crop_seed: tf.Tensor, min_scale: float,
    max_scale: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """`random_scale_jitter` then `random_crop` on uint8 pixels.

  Returns (uint8 [h, w, 3] with h, w <= size, window-normalised boxes, their labels,
  scale): the same draws, boxes and labels as the two transforms with the same seeds,
  and their pixels rounded to uint8.
  """
  new_shape, scale = longest_side_shape(
      tf.shape(pixels)[:2], _jitter_size(size, scale_seed, min_scale, max_scale))
  offset, window = _crop_window(new_shape, size, crop_seed)
  boxes, labels = _crop_boxes(boxes, labels, new_shape, offset, window)
  return resized_window(pixels, new_shape, offset, window), boxes, labels, scale


def resize_pixels_longest_side(pixels: tf.Tensor,
                               size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """`resize_longest_side` on uint8 pixels, rounded back to uint8: (pixels, scale)."""
  new_shape, scale = longest_side_shape(tf.shape(pixels)[:2], size)
  return resized_window(pixels, new_shape, tf.zeros([2], tf.int32), new_shape), scale


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
  """Pads bottom/right to a [size, size, 3] canvas; boxes become canvas-normalised.

  float32 images are padded with `value`; uint8 pixels with zeros, which
  `canvas.model_images` replaces by PAD_VALUE on the device.
  """
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  if image.dtype == tf.uint8:
    padded = tf.image.pad_to_bounding_box(image, 0, 0, size, size)
  else:
    padded = tf.image.pad_to_bounding_box(image - value, 0, 0, size, size) + value
  ratio = tf.tile(shape / size, [2])  # (h, w, h, w) / size
  return padded, boxes * ratio[tf.newaxis]


def shuffle_objects(boxes: tf.Tensor, labels: tf.Tensor,
                    seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Puts the objects in a random order (the same permutation for boxes and labels)."""
  order = tf.argsort(tf.random.stateless_uniform(tf.shape(labels), seed=seed))
  return tf.gather(boxes, order), tf.gather(labels, order)
