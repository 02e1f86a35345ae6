"""Image and box transforms: small pure TensorFlow functions used inside tf.data.

Boxes are float32 [N, 4] as (ymin, xmin, ymax, xmax), normalised to the current
image (before `pad_to_canvas`) or to the padded canvas (after it). Randomness is
stateless: each random transform takes a `seed` of shape [2], so the pipeline is a
pure function of the config seed and the example's position in the stream.

Evaluation works on float32 pixels in [0, 1]. Training leaves the resampling to the
device: tf.data draws the scale jitter, crop and flip, moves the boxes, and sends the
uint8 pixels of the source region the output window reads (`window_source`) with the
linear map from output pixels to source positions (`resample`); `canvas.model_images`
resamples them into the float32 canvas. That equals `random_scale_jitter`, `random_crop`
and `random_horizontal_flip` on float32 pixels (the reference) to float rounding. A
source region larger than the canvas is resized here instead and rounded to uint8.
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
  # (BENCHMARKS.md, "Input pipeline experiments"): the same pixels, faster, when not
  # shrinking.
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


def crop_boxes(boxes: tf.Tensor, labels: tf.Tensor, shape: tf.Tensor, offset: tf.Tensor,
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
  return (cropped, *crop_boxes(boxes, labels, shape, offset, window))


def resized_window(pixels: tf.Tensor, new_shape: tf.Tensor, offset: tf.Tensor,
                   window: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [window]: rows and columns offset .. offset + window - 1 of
  the image resized to `new_shape` as `resize_longest_side` resizes (antialiased when
  shrinking, plain bilinear otherwise), rounded to uint8.

  TensorFlow's resize kernels read the uint8 pixels directly; only the window is rounded.
  `window_source` uses it for sources too large to send to the device.
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


def scale_jitter_and_crop_draws(
    shape: tf.Tensor, size: int, scale_seed: tf.Tensor, crop_seed: tf.Tensor,
    min_scale: float, max_scale: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """The draws of `random_scale_jitter` then `random_crop` for an image of `shape` [2].

  Returns (resized shape, scale, window offset, window size): int32 [2], float32 [],
  int32 [2], int32 [2]; `crop_boxes` moves the boxes into the window.
  """
  new_shape, scale = longest_side_shape(shape, _jitter_size(size, scale_seed, min_scale,
                                                            max_scale))
  offset, window = _crop_window(new_shape, size, crop_seed)
  return new_shape, scale, offset, window


def box_crop_region(box: tf.Tensor, shape: tf.Tensor,
                    pad_scale: float) -> tuple[tf.Tensor, tf.Tensor]:
  """The official crop-to-box window (data_utils `crop_to_bbox`) of `box` float32 [4]
  (ymin, xmin, ymax, xmax) normalised to an image of `shape` (h, w).

  The box covers pixel rows floor(ymin * (h - 1)) .. ceil(ymax * (h - 1)) (columns
  alike); the window adds int(pad_scale * rows) rows above and below it (columns alike),
  within the image. Returns (offset, size), int32 [2] each, (y, x) and (h, w) in pixels.
  """
  shape = tf.cast(shape, tf.int32)
  last = tf.cast(shape - 1, tf.float32)  # (h - 1, w - 1)
  low = tf.cast(tf.floor(box[:2] * last), tf.int32)  # [2] first row, column
  high = tf.cast(tf.math.ceil(box[2:] * last), tf.int32)  # [2] last row, column
  pad = tf.cast(tf.cast(high - low + 1, tf.float32) * pad_scale, tf.int32)  # truncated
  low = tf.maximum(low - pad, 0)
  high = tf.minimum(high + pad, shape - 1)
  return low, high - low + 1


IDENTITY_RESAMPLE = ((0.5, 1.0), (0.5, 1.0))  # output pixel j reads source pixel j


def _source_span(shape: tf.Tensor, new_shape: tf.Tensor, offset: tf.Tensor,
                 window: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """Per axis [2]: (first, end) source rows/columns that the window reads, the window's
  first sample position relative to `first`, and the step between samples.

  As `tf.image.resize` (half-pixel centres; antialiased when shrinking): output pixel i of
  the resized image samples source position (i + 0.5) * shape / new_shape, where source
  pixel k spans [k, k + 1), with a triangle filter of half-width max(shape / new_shape, 1).
  """
  step = tf.cast(shape, tf.float32) / tf.cast(new_shape, tf.float32)
  reach = tf.maximum(step, 1.0)
  first_sample = (tf.cast(offset, tf.float32) + 0.5) * step
  last_sample = (tf.cast(offset + window, tf.float32) - 0.5) * step
  first = tf.clip_by_value(tf.cast(tf.math.ceil(first_sample - reach - 0.5), tf.int32), 0,
                           shape - 1)
  end = tf.clip_by_value(tf.cast(tf.floor(last_sample + reach - 0.5), tf.int32), 0,
                         shape - 1) + 1
  return first, end, first_sample - tf.cast(first, tf.float32), step


def window_source(pixels: tf.Tensor, new_shape: tf.Tensor, offset: tf.Tensor,
                  window: tf.Tensor, max_side: int) -> tuple[tf.Tensor, tf.Tensor]:
  """What the device needs to make rows and columns offset .. offset + window - 1 of
  uint8 `pixels` [H, W, 3] resized to `new_shape` (as `resize_longest_side` resizes).

  Returns (uint8 source [h, w, 3], resample float32 [2, 2]): per axis (rows, columns),
  the position in the source of output pixel 0's sample and the step to the next one
  (`canvas.model_images`). The source is the region of `pixels` the window reads. Where
  that region is larger than `max_side`, the window is resized here (`resized_window`,
  rounded to uint8) and the resample is the identity.
  """
  new_shape, offset, window = (tf.convert_to_tensor(t, tf.int32)
                               for t in (new_shape, offset, window))
  first, end, sample, step = _source_span(tf.shape(pixels)[:2], new_shape, offset, window)

  def region():
    return pixels[first[0]:end[0], first[1]:end[1]], tf.stack([sample, step], axis=1)

  def resized():
    return (resized_window(pixels, new_shape, offset, window),
            tf.constant(IDENTITY_RESAMPLE, tf.float32))

  return tf.cond(tf.reduce_all(end - first <= max_side), region, resized)


def _flip_draw(seed: tf.Tensor, probability: float) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed=seed) < probability


def _mirrored_boxes(boxes: tf.Tensor) -> tf.Tensor:
  return tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)


def random_horizontal_flip(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor,
                           probability: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
  """Flips image and image-normalised boxes left-right with `probability`."""
  flip = _flip_draw(seed, probability)
  return (tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image),
          tf.cond(flip, lambda: _mirrored_boxes(boxes), lambda: boxes))


def random_mirror(boxes: tf.Tensor, resample: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
                  probability: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
  """`random_horizontal_flip` (the same draw) of a `window_source` window `width` wide:
  the boxes are flipped here and the columns' resample runs backwards."""
  flip = _flip_draw(seed, probability)
  sample, step = resample[1, 0], resample[1, 1]
  last = sample + tf.cast(width - 1, tf.float32) * step
  mirrored = tf.stack([resample[0], tf.stack([last, -step])])
  return (tf.cond(flip, lambda: _mirrored_boxes(boxes), lambda: boxes),
          tf.where(flip, mirrored, resample))


def canvas_boxes(boxes: tf.Tensor, extent: tf.Tensor, size: int) -> tf.Tensor:
  """Boxes normalised to an image of `extent` (h, w) -> to the size x size canvas it is
  placed on, top-left."""
  ratio = tf.tile(tf.cast(extent, tf.float32) / size, [2])  # (h, w, h, w) / size
  return boxes * ratio[tf.newaxis]


def pad_to_canvas(image: tf.Tensor, boxes: tf.Tensor, size: int,
                  value: float = PAD_VALUE) -> tuple[tf.Tensor, tf.Tensor]:
  """Pads a float32 image bottom/right with `value` to a [size, size, 3] canvas; boxes
  become canvas-normalised. (Training batches are padded with zeros when batched, and
  `canvas.model_images` puts PAD_VALUE there on the device.)"""
  return pad_image(image, size, value), canvas_boxes(boxes, tf.shape(image)[:2], size)


def pad_image(image: tf.Tensor, size: int, value: float = PAD_VALUE) -> tf.Tensor:
  """A float32 image padded bottom/right with `value` to [size, size, 3]."""
  return tf.image.pad_to_bounding_box(image - value, 0, 0, size, size) + value


def shuffle_objects(boxes: tf.Tensor, labels: tf.Tensor,
                    seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Puts the objects in a random order (the same permutation for boxes and labels)."""
  order = tf.argsort(tf.random.stateless_uniform(tf.shape(labels), seed=seed))
  return tf.gather(boxes, order), tf.gather(labels, order)
