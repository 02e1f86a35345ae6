"""Image files read with PIL exactly as the training pipeline reads them (no TensorFlow)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pix2seq_jax.data import canvas

# What a bad file raises in PIL: missing, empty, truncated, not an image.
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_90}


def load_image(path: str, orientation: int | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
  """An image file as uint8 [H, W, 3], read as the training pipeline reads it.

  Greyscale, palette, alpha and CMYK images become RGB; 16-bit greyscale is scaled to
  8 bits (as TensorFlow's decoder does, not clipped). `orientation`: the EXIF orientation
  to apply (1: pixels as stored); None follows the file's own tag, so photos come out
  upright. `size` (h, w): resize to it where the file differs (image_check's fix).
  """
  with Image.open(path) as image:
    if orientation is None:
      image = ImageOps.exif_transpose(image)
    elif orientation in _EXIF_TRANSPOSE:
      image = image.transpose(_EXIF_TRANSPOSE[orientation])
    if size is not None and image.size != (size[1], size[0]):
      image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    if image.mode.startswith('I'):  # 16- or 32-bit greyscale
      grey = np.clip(np.round(np.asarray(image, np.float64) / 257), 0, 255).astype(np.uint8)
      return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert('RGB'))


def as_arrays(images: Sequence[str | np.ndarray]) -> list[np.ndarray]:
  """File paths or uint8 arrays [H, W], [H, W, 1-4] -> uint8 [H, W, 3] each (grey
  repeated, alpha dropped); a bad one raises ValueError naming its index."""
  arrays = []
  for index, image in enumerate(images):
    try:
      arrays.append(load_image(image) if isinstance(image, str) else canvas.as_rgb(image))
    except ValueError as e:
      raise ValueError(f'Image {index}: {e}') from None
  return arrays
