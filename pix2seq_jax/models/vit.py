"""The ViT stem: non-overlapping patches as feature vectors.

A ViT encoder is Pix2Seq's own encoder fed with patches: the patch embedding (a
p x p / p convolution with bias) is the model's input projection, followed by LN,
2D sin-cos positions, the pre-LN layers and a final LN (pix2seq.Pix2Seq.encode), as
in the official ViT with `stem_ln`. No class token.
"""

from __future__ import annotations

import jax
from flax import nnx


class Patchify(nnx.Module):
  """images [B, H, W, 3] -> patches [B, H/p, W/p, p*p*3] (row-major within a patch)."""

  feature_dropout = False  # no dropout on raw pixels

  def __init__(self, patch_size: int):
    self.stride = patch_size
    self.num_features = patch_size * patch_size * 3

  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    del train  # no state
    batch, height, width, channels = images.shape
    p = self.stride
    if height % p or width % p:
      raise ValueError(f'Image size {height}x{width} is not divisible by the patch size {p}.')
    x = images.reshape(batch, height // p, p, width // p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, H/p, W/p, p, p, C]
    return x.reshape(batch, height // p, width // p, p * p * channels)
