"""The input canvas contract shared by the tf.data pipeline and the TF-free Predictor.

Images are floats in [0, 1], resized so the longest side equals the canvas size S and
padded bottom/right with PAD_VALUE (the official code's 0.3). Box coordinates are always
normalised to the S x S square, whatever canvas the pixels are placed on.

`resize_bilinear` is the pipeline's resize (`tf.image.resize`, bilinear, antialiased when
shrinking) in numpy: the same separable triangle filter, in float32, so a canvas made
here equals the pipeline's to float rounding.

For inference the padding can be trimmed: with `buckets` k > 1 an image is placed on
the smallest of a few canvases, S x S and S x (i * S / k) for i < k in both
orientations (sides rounded up to the backbone stride), so a wide image costs about
its own area and every image size maps to one of 2k - 1 shapes, each compiled once.
The kept pixels, and their 2D positions, are exactly those of the S x S canvas.

Training batches carry uint8 source pixels with the linear map from canvas pixels to
source positions (`transforms.window_source`); `model_images` resamples them into this
float32 canvas on the device, with the same triangle filter.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAD_VALUE = 0.3


def resample_weights(sample: jax.Array, step: jax.Array, source_size: jax.Array,
                     out_size: int, in_size: int) -> jax.Array:
  """float32 [B, out_size, in_size]: row j resamples a source of `source_size` [B] pixels
  at position sample + j * step ([B] each; source pixel k spans [k, k + 1)).

  The triangle filter of `tf.image.resize` (half-width max(|step|, 1), so antialiased
  when shrinking), over the source pixels only, normalised to sum to 1 (`_filter_taps`).
  """
  out = jnp.arange(out_size, dtype=jnp.float32)
  pixel = jnp.arange(in_size, dtype=jnp.float32) + 0.5
  position = sample[:, None] + out[None] * step[:, None]  # [B, out]
  reach = jnp.maximum(jnp.abs(step), 1.0)[:, None, None]
  weight = jnp.maximum(0.0, 1.0 - jnp.abs(pixel - position[..., None]) / reach)
  weight = jnp.where(pixel < source_size[:, None, None], weight, 0.0)  # [B, out, in]
  total = weight.sum(axis=-1, keepdims=True)
  return weight / jnp.where(total > 0, total, 1.0)


def model_images(batch: Mapping[str, Any]) -> jax.Array:
  """The model's float32 images [B, H, W, 3] of a batch (inside jit, on the device).

  A training batch's uint8 sources `image` [B, H, W, 3] become x * float32(1/255)
  (TensorFlow's uint8 to float32 conversion), resampled as `resample` [B, 2, 2] says
  (`resample_weights`, over each row's `source_extent` [B, 2]), clipped to [0, 1], and
  PAD_VALUE outside each row's `extent` [B, 2] (height, width). float32 images
  (evaluation, the Predictor) are returned as they are.
  """
  images = batch['image']
  if images.dtype != jnp.uint8:
    return images
  _, height, width, _ = images.shape
  resample, source = batch['resample'], batch['source_extent']  # [B, 2, 2], [B, 2]
  rows = resample_weights(resample[:, 0, 0], resample[:, 0, 1], source[:, 0], height, height)
  cols = resample_weights(resample[:, 1, 0], resample[:, 1, 1], source[:, 1], width, width)
  pixels = images.astype(jnp.float32) * np.float32(1 / 255)
  exact = jax.lax.Precision.HIGHEST  # no reduced-precision passes on accelerators
  pixels = jnp.einsum('bih,bhwc->biwc', rows, pixels, precision=exact)
  pixels = jnp.einsum('bjw,biwc->bijc', cols, pixels, precision=exact)  # [B, H, W, 3]
  extent = batch['extent']  # [B, 2]
  inside_rows = jnp.arange(height)[None, :, None] < extent[:, None, 0, None]  # [B, H, 1]
  inside_cols = jnp.arange(width)[None, None, :] < extent[:, None, None, 1]  # [B, 1, W]
  return jnp.where((inside_rows & inside_cols)[..., None], jnp.clip(pixels, 0.0, 1.0),
                   np.float32(PAD_VALUE))


def canvas_shapes(size: int, stride: int, buckets: int = 1) -> list[tuple[int, int]]:
  """The (height, width) canvases for square side `size`, smallest area first."""
  if buckets < 1:
    raise ValueError(f'buckets={buckets} must be at least 1.')
  short = sorted({min(size, math.ceil(size * i / buckets / stride) * stride)
                  for i in range(1, buckets)} - {size})
  shapes = [(size, size)]
  for side in short:
    shapes += [(side, size), (size, side)]
  return sorted(shapes, key=lambda hw: (hw[0] * hw[1], hw))


def resized_shape(height: int, width: int, size: int) -> tuple[tuple[int, int], float]:
  """((height, width) after resizing the longest side to `size`, scale).

  In float32 and rounded half to even, as the pipeline's `transforms.resize_longest_side`.
  """
  scale = np.float32(size) / np.float32(max(height, width))
  new_h, new_w = (int(max(1, np.round(np.float32(side) * scale))) for side in (height, width))
  return (new_h, new_w), float(scale)


def as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W], [H, W, 1|2|3|4] -> [H, W, 3]: grey repeated, alpha dropped (as PIL's
  convert('RGB') and the pipeline's decoder)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'Expected a uint8 image, got {image.dtype}.')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or 0 in image.shape[:2]:
    raise ValueError(f'Expected an image [H, W] or [H, W, 1-4 channels], got shape '
                     f'{image.shape}.')
  if image.shape[2] <= 2:  # grey, grey + alpha
    return np.repeat(image[..., :1], 3, axis=2)
  return np.ascontiguousarray(image[..., :3])


def _filter_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices [out, taps], weights [out, taps] float32) of the triangle filter that
  resizes `in_size` samples to `out_size`, widened by the scale when shrinking
  (TensorFlow's ScaleAndTranslate with antialias; unused taps have weight 0)."""
  inv_scale = np.float32(in_size) / np.float32(out_size)
  kernel_scale = max(inv_scale, np.float32(1.0))
  centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * inv_scale  # [out]
  start = np.clip(np.ceil(centre - kernel_scale - np.float32(0.5)), 0, in_size - 1)
  stop = np.clip(np.floor(centre + kernel_scale - np.float32(0.5)), 0, in_size - 1) + 1
  taps = int((stop - start).max())
  index = start.astype(np.int64)[:, None] + np.arange(taps)  # [out, taps]
  inside = index < stop[:, None]
  index = np.minimum(index, in_size - 1)
  distance = (index.astype(np.float32) + np.float32(0.5) - centre[:, None]) / kernel_scale
  weight = np.where(inside, np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(distance)),
                    np.float32(0.0)).astype(np.float32)
  total = weight.sum(axis=1, keepdims=True)
  return index, (weight / np.where(total > 0, total, 1)).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """float32 [H, W, C] -> [height, width, C] as `tf.image.resize(..., antialias=True)`."""
  image = np.asarray(image, np.float32)
  if image.shape[:2] == (height, width):
    return image
  rows, row_weights = _filter_taps(image.shape[0], height)
  cols, col_weights = _filter_taps(image.shape[1], width)
  tall = np.einsum('ot,otwc->owc', row_weights, image[rows])  # [height, W, C]
  return np.einsum('pt,optc->opc', col_weights, tall[:, cols]).astype(np.float32)


def choose_canvas(height: int, width: int, shapes: list[tuple[int, int]]) -> tuple[int, int]:
  """The smallest canvas in `shapes` that holds a resized image of (height, width)."""
  for shape in sorted(shapes, key=lambda hw: hw[0] * hw[1]):
    if shape[0] >= height and shape[1] >= width:
      return shape
  raise ValueError(f'No canvas in {shapes} holds an image of {height}x{width}.')


def to_canvas(image: np.ndarray, size: int,
              shape: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
  """uint8 [H, W, 3] -> (float32 [h, w, 3] in [0, 1], scale); (h, w) = shape or (size, size).

  The pipeline's evaluation canvas: pixels scaled to [0, 1] as TensorFlow converts uint8,
  resized (longest side `size`), clipped to [0, 1] and padded bottom/right.
  """
  (new_h, new_w), scale = resized_shape(*image.shape[:2], size)
  height, width = shape or (size, size)
  if new_h > height or new_w > width:
    raise ValueError(f'A {new_h}x{new_w} image does not fit a {height}x{width} canvas.')
  pixels = np.asarray(image, np.uint8).astype(np.float32) * np.float32(1 / 255)
  canvas = np.full((height, width, 3), PAD_VALUE, np.float32)
  canvas[:new_h, :new_w] = np.clip(resize_bilinear(pixels, new_h, new_w), 0.0, 1.0)
  return canvas, scale


def canvas_batches(images: Sequence[np.ndarray], size: int, shapes: list[tuple[int, int]],
                   batch_size: int) -> Iterator[tuple[list[int], np.ndarray, list[float]]]:
  """uint8 images [H, W, 3] in fixed-size batches, each of one canvas shape: (the
  images' indices, float32 canvases [batch_size, h, w, 3] padded with PAD_VALUE rows
  where a last batch is short, their scales)."""
  groups: dict[tuple[int, int], list[int]] = {}
  for index, image in enumerate(images):
    resized, _ = resized_shape(*image.shape[:2], size)
    groups.setdefault(choose_canvas(*resized, shapes), []).append(index)
  for shape, indices in groups.items():
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      canvases = np.full((batch_size, *shape, 3), PAD_VALUE, np.float32)
      scales = []
      for row, index in enumerate(chunk):
        canvases[row], scale = to_canvas(images[index], size, shape)
        scales.append(scale)
      yield chunk, canvases, scales
