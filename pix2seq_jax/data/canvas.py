"""The input canvas contract shared by the tf.data pipeline and the TF-free Predictor.

Images are floats in [0, 1], resized so the longest side equals the canvas size S and
padded bottom/right with PAD_VALUE (the official code's 0.3). Box coordinates are always
normalised to the S x S square, whatever canvas the pixels are placed on.

For inference the padding can be trimmed: with `buckets` k > 1 an image is placed on
the smallest of a few canvases, S x S and S x (i * S / k) for i < k in both
orientations (sides rounded up to the backbone stride), so a wide image costs about
its own area and every image size maps to one of 2k - 1 shapes, each compiled once.
The kept pixels, and their 2D positions, are exactly those of the S x S canvas.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

PAD_VALUE = 0.3


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
  """((height, width) after resizing the longest side to `size`, scale)."""
  scale = size / max(height, width)
  return (max(1, round(height * scale)), max(1, round(width * scale))), scale


def choose_canvas(height: int, width: int, shapes: list[tuple[int, int]]) -> tuple[int, int]:
  """The smallest canvas in `shapes` that holds a resized image of (height, width)."""
  for shape in sorted(shapes, key=lambda hw: hw[0] * hw[1]):
    if shape[0] >= height and shape[1] >= width:
      return shape
  raise ValueError(f'No canvas in {shapes} holds an image of {height}x{width}.')


def to_canvas(image: np.ndarray, size: int,
              shape: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
  """uint8 [H, W, 3] -> (float32 [h, w, 3] in [0, 1], scale); (h, w) = shape or (size, size)."""
  (new_h, new_w), scale = resized_shape(*image.shape[:2], size)
  height, width = shape or (size, size)
  if new_h > height or new_w > width:
    raise ValueError(f'A {new_h}x{new_w} image does not fit a {height}x{width} canvas.')
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR),
                       np.float32)
  canvas = np.full((height, width, 3), PAD_VALUE, np.float32)
  canvas[:new_h, :new_w] = resized / 255.0
  return canvas, scale
