"""The token vocabulary: the one definition shared by the data pipeline and the decoder.

Layout (ids):
  0                      padding
  1                      end of sequence (EOS)
  2                      start token (the detection task prompt)
  3                      the "n/a" class used for noise objects
  4 .. 4+C-1             class tokens, one per contiguous label 0..C-1
  4+C .. 4+C+B-1         coordinate bins 0..B-1

An object is 5 tokens: ``ymin xmin ymax xmax class``; coordinates are normalised
to the padded square canvas and quantised as ``round(v * (B - 1))``. A target
sequence holds up to ``max_instances`` objects followed by EOS and padding.

This module imports neither TensorFlow nor JAX: its arithmetic works on numpy
arrays, JAX arrays and TF tensors alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PADDING = 0
EOS = 1
START = 2
NOISE_CLASS = 3
CLASS_OFFSET = 4
TOKENS_PER_OBJECT = 5


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Token ids for a dataset with `num_classes` classes and `num_bins` coordinate bins."""

  num_classes: int
  num_bins: int = 1000

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {self.num_classes}.')
    if self.num_bins < 2:
      raise ValueError(f'num_bins must be >= 2, got {self.num_bins}.')

  @property
  def coord_offset(self) -> int:
    return CLASS_OFFSET + self.num_classes

  @property
  def size(self) -> int:
    return self.coord_offset + self.num_bins

  def class_token(self, label):
    return label + CLASS_OFFSET

  def coord_to_bin(self, coord, xp=np):
    """[0, 1] coordinates -> bins as whole floats (round half to even, clipped).

    `xp` is any namespace with numpy's `round` and `clip` (numpy, jax.numpy, or the
    TF shim in `data/sequences.py`); callers cast the result to integers.
    """
    bins = xp.round(coord * (self.num_bins - 1))
    return xp.clip(bins, 0.0, self.num_bins - 1.0)

  def bin_to_coord(self, bins):
    """Integer bins -> [0, 1] coordinates (the bin centres)."""
    return bins / (self.num_bins - 1)

  def is_coord(self, tokens):
    return (tokens >= self.coord_offset) & (tokens < self.size)

  def is_class(self, tokens):
    return (tokens >= CLASS_OFFSET) & (tokens < self.coord_offset)


def sequence_length(max_instances: int) -> int:
  """Length of the decoder's input and target sequences: all objects plus EOS."""
  return TOKENS_PER_OBJECT * max_instances + 1
