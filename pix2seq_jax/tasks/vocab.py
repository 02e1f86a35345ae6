"""The token vocabulary: the one definition shared by the data pipeline and the decoder.

Three layouts (`config.model.vocabulary`):

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

'official_multitask' (the official multi-task model's, `configs/config_multi_task.py`:
`vocab_size=35000`, `coord_vocab_shift=1000`, `text_vocab_shift=3000`; 35000 ids): the
official layout above, and
  10 / 11 / 12 / 13      the prompts of object detection / instance segmentation /
                         keypoint detection / captioning (`prompt(task)`)
  40                     the separator (between polygons of an instance)
  41                     the invisible point (a keypoint that is not visible)
  3000 + piece id        text tokens (sentencepiece ids 0 .. 31999)

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

LAYOUTS = ('compact', 'official', 'official_multitask')
# The layouts that share the official code's ids (padding ends a sequence, class = 100 + id).
OFFICIAL_LAYOUTS = ('official', 'official_multitask')
# The official layout (the official code's vocab.py and config_det_finetune.py).
OFFICIAL_PROMPT = 10
OFFICIAL_FAKE_CLASS = 30
OFFICIAL_CLASS_OFFSET = 100
OFFICIAL_COORD_OFFSET = 1000
OFFICIAL_SIZE = 3000
# The official multi-task layout (vocab.py and configs/config_multi_task.py's vocab_id,
# vocab_size and text_vocab_shift).
OFFICIAL_PROMPTS = {'object_detection': OFFICIAL_PROMPT, 'instance_segmentation': 11,
                    'keypoint_detection': 12, 'captioning': 13}
OFFICIAL_SEPARATOR = 40
OFFICIAL_INVISIBLE = 41
OFFICIAL_TEXT_OFFSET = 3000
# The SentencePiece ids the text tokens assume (the official tokenizer, T5's
# c4_en_32k_spm.model: padding 0, EOS 1, no BOS; `tasks/tokenizer.py` refuses others), and
# the most pieces a text token can name.
TEXT_PAD_PIECE = 0
TEXT_EOS_PIECE = 1
MAX_TEXT_PIECES = 32000
OFFICIAL_MULTITASK_SIZE = 35000
# In-graph point arrays (data/geometry.py, data/instance_sequences.py) mark what is not a
# coordinate with these floats, as the official code does: padding after an object's
# last point, the separator between two polygons of one object, an invisible keypoint
# (they become the padding, separator and invisible tokens).
POINT_PADDING = -1.0
POINT_SEPARATOR = -2.0
POINT_INVISIBLE = -3.0


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Token ids for a dataset with `num_classes` classes and `num_bins` coordinate bins.

  The official layouts need `category_ids` (the category id of each contiguous label,
  each in [0, 900)): label l's class token is 100 + category_ids[l].
  """

  num_classes: int
  num_bins: int = 1000
  layout: str = 'compact'
  category_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if self.num_classes < (0 if self.layout == 'official_multitask' else 1):
      raise ValueError(f'num_classes must be >= 1, got {self.num_classes} (only the '
                       'official_multitask vocabulary serves a task without classes, '
                       'captioning).')
    if self.num_bins < 2:
      raise ValueError(f'num_bins must be >= 2, got {self.num_bins}.')
    if self.layout not in LAYOUTS:
      raise ValueError(f'config.model.vocabulary={self.layout!r}: use one of {LAYOUTS}.')
    if self.official:
      room = OFFICIAL_COORD_OFFSET - OFFICIAL_CLASS_OFFSET
      if len(self.category_ids) != self.num_classes:
        raise ValueError(f'The official vocabulary needs the {self.num_classes} classes\' '
                         f'category ids, got {len(self.category_ids)}.')
      bad = [c for c in self.category_ids if not 0 <= c < room]
      if bad:
        raise ValueError(f'The official vocabulary has class tokens for category ids 0..'
                         f'{room - 1} only; this dataset has {bad[:5]}: use '
                         '--config.model.vocabulary=compact.')
      if OFFICIAL_COORD_OFFSET + self.num_bins > OFFICIAL_TEXT_OFFSET:
        raise ValueError(f'The official vocabulary holds at most '
                         f'{OFFICIAL_TEXT_OFFSET - OFFICIAL_COORD_OFFSET} bins, not '
                         f'{self.num_bins}.')

  @property
  def official(self) -> bool:
    """Either official layout: their ids below 3000 mean the same."""
    return self.layout in OFFICIAL_LAYOUTS

  @property
  def multitask(self) -> bool:
    return self.layout == 'official_multitask'

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
    if self.multitask:
      return OFFICIAL_MULTITASK_SIZE
    return OFFICIAL_SIZE if self.official else self.coord_offset + self.num_bins

  def prompt(self, task: str) -> int:
    """The start token of `task` ('object_detection', 'instance_segmentation',
    'keypoint_detection', 'captioning'); the other layouts have detection's only."""
    if task not in OFFICIAL_PROMPTS:
      raise ValueError(f'Unknown task {task!r}: use one of {list(OFFICIAL_PROMPTS)}.')
    if task != 'object_detection' and not self.multitask:
      raise ValueError(f'The {self.layout} vocabulary has no {task} prompt: use '
                       '--config.model.vocabulary=official_multitask.')
    return OFFICIAL_PROMPTS[task] if self.official else START

  def _multitask_only(self, name: str) -> None:
    if not self.multitask:
      raise ValueError(f'The {self.layout} vocabulary has no {name}: use '
                       '--config.model.vocabulary=official_multitask.')

  @property
  def separator(self) -> int:
    """The token between the polygons of one instance (official_multitask)."""
    self._multitask_only('separator token')
    return OFFICIAL_SEPARATOR

  @property
  def invisible(self) -> int:
    """The token of a keypoint that is not visible (official_multitask)."""
    self._multitask_only('invisible-point token')
    return OFFICIAL_INVISIBLE

  @property
  def text_offset(self) -> int:
    """Text token = text_offset + sentencepiece id (official_multitask)."""
    self._multitask_only('text tokens')
    return OFFICIAL_TEXT_OFFSET

  @property
  def text_eos(self) -> int:
    """The token that ends a caption: text_offset + the EOS piece (official_multitask)."""
    return self.text_offset + TEXT_EOS_PIECE

  def is_text(self, tokens):
    """Text tokens, text_offset .. text_offset + MAX_TEXT_PIECES - 1 (official_multitask)."""
    return (tokens >= self.text_offset) & (tokens < self.text_offset + MAX_TEXT_PIECES)

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
  return Vocabulary(len(ids), num_bins, layout, ids if layout in OFFICIAL_LAYOUTS else ())


def sequence_length(max_instances: int) -> int:
  """Length of the decoder's input and target sequences: all objects plus EOS."""
  return TOKENS_PER_OBJECT * max_instances + 1
