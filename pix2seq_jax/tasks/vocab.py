"""The token vocabulary: the one definition shared by the data pipeline and the decoder.

Two layouts (`config.model.vocabulary`):

'compact' (training from scratch; ids):
  0                      padding
  1                      end of sequence (EOS)
  2                      start token (the detection task prompt)
  3                      the "n/a" class used for noise objects
  4 .. 4+C-1             class tokens, one per contiguous label 0..C-1
  4+C .. 4+C+B-1         coordinate bins 0..B-1

'official' (the official Pix2Seq's, used by its converted checkpoints; 3000 ids):
  0                      padding, which also ends a sequence (EOS = padding)
  10                     the detection prompt (start token)
  30                     the fake ("n/a") class of noise objects
  100 + category id      class tokens: 100 .. 999 (the dataset's own category ids)
  1000 + bin             coordinate bins 0..B-1 (B <= 2000)
  1000 + B .. 2999       unused here (the official text tokens start at 3000)

An object is 5 tokens: ``ymin xmin ymax xmax class``; coordinates are normalised
to the padded square canvas and quantised as ``round(v * (B - 1))``. A target
sequence holds up to ``max_instances`` objects followed by EOS and padding.

This module imports neither TensorFlow nor JAX: its arithmetic works on numpy
arrays, JAX arrays and TF tensors alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The compact layout's special ids (`Vocabulary` has them for either layout).
PADDING = 0
EOS = 1
START = 2
NOISE_CLASS = 3
CLASS_OFFSET = 4
TOKENS_PER_OBJECT = 5

LAYOUTS = ('compact', 'official')
# The official layout (the official code's vocab.py and config_det_finetune.py).
OFFICIAL_PROMPT = 10
OFFICIAL_FAKE_CLASS = 30
OFFICIAL_CLASS_OFFSET = 100
OFFICIAL_COORD_OFFSET = 1000
OFFICIAL_SIZE = 3000


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Token ids for a dataset with `num_classes` classes and `num_bins` coordinate bins.

  `layout='official'` needs `category_ids` (the category id of each contiguous label,
  each in [0, 900)): label l's class token is 100 + category_ids[l].
  """

  num_classes: int
  num_bins: int = 1000
  layout: str = 'compact'
  category_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {self.num_classes}.')
    if self.num_bins < 2:
      raise ValueError(f'num_bins must be >= 2, got {self.num_bins}.')
    if self.layout not in LAYOUTS:
      raise ValueError(f'config.model.vocabulary={self.layout!r}: use one of {LAYOUTS}.')
    if self.layout == 'official':
      room = OFFICIAL_COORD_OFFSET - OFFICIAL_CLASS_OFFSET
      if len(self.category_ids) != self.num_classes:
        raise ValueError(f'The official vocabulary needs the {self.num_classes} classes\' '
                         f'category ids, got {len(self.category_ids)}.')
      bad = [c for c in self.category_ids if not 0 <= c < room]
      if bad:
        raise ValueError(f'The official vocabulary has class tokens for category ids 0..'
                         f'{room - 1} only; this dataset has {bad[:5]}: use '
                         '--config.model.vocabulary=compact.')
      if OFFICIAL_COORD_OFFSET + self.num_bins > OFFICIAL_SIZE:
        raise ValueError(f'The official vocabulary holds at most '
                         f'{OFFICIAL_SIZE - OFFICIAL_COORD_OFFSET} bins, not {self.num_bins}.')

  @property
  def official(self) -> bool:
    return self.layout == 'official'

  @property
  def padding(self) -> int:
    return PADDING

  @property
  def eos(self) -> int:
    return PADDING if self.official else EOS

  @property
  def start(self) -> int:
    return OFFICIAL_PROMPT if self.official else START

  @property
  def noise_class(self) -> int:
    return OFFICIAL_FAKE_CLASS if self.official else NOISE_CLASS

  @property
  def class_offset(self) -> int:
    return OFFICIAL_CLASS_OFFSET if self.official else CLASS_OFFSET

  @property
  def coord_offset(self) -> int:
    return OFFICIAL_COORD_OFFSET if self.official else CLASS_OFFSET + self.num_classes

  @property
  def size(self) -> int:
    return OFFICIAL_SIZE if self.official else self.coord_offset + self.num_bins

  @property
  def class_tokens(self) -> np.ndarray:
    """[C] int32: the class token of each contiguous label."""
    if self.official:
      return np.asarray(self.category_ids, np.int32) + OFFICIAL_CLASS_OFFSET
    return np.arange(self.num_classes, dtype=np.int32) + CLASS_OFFSET

  def class_token(self, label):
    """Labels (numpy ints) -> class tokens; in TF or JAX gather from `class_tokens`."""
    return self.class_tokens[np.asarray(label)]

  def label_of_token(self, tokens: np.ndarray) -> np.ndarray:
    """Class tokens -> contiguous labels (numpy); -1 where a token is no class of ours."""
    tokens = np.asarray(tokens, np.int64)
    table = np.full(self.size, -1, np.int64)
    table[self.class_tokens] = np.arange(self.num_classes)
    inside = (tokens >= 0) & (tokens < self.size)
    return np.where(inside, table[np.clip(tokens, 0, self.size - 1)], -1)

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
    return (tokens >= self.coord_offset) & (tokens < self.coord_offset + self.num_bins)

  def is_class(self, tokens):
    """Class tokens: [4, 4+C) compact; every class slot [100, 1000) official (as the
    official decoder's class argmax), of which `label_of_token` knows the dataset's."""
    return (tokens >= self.class_offset) & (tokens < self.coord_offset)


def for_categories(layout: str, category_ids, num_bins: int) -> Vocabulary:
  """The vocabulary of `layout` for a dataset with these category ids (label order)."""
  ids = tuple(int(c) for c in category_ids)
  return Vocabulary(len(ids), num_bins, layout, ids if layout == 'official' else ())


def sequence_length(max_instances: int) -> int:
  """Length of the decoder's input and target sequences: all objects plus EOS."""
  return TOKENS_PER_OBJECT * max_instances + 1
