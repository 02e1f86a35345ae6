"""Instance segmentation (Pix2Seq-v2, prompt 11): response tokens -> polygons -> masks.

The official post-processing (google-research/pix2seq `tasks/instance_segmentation.py`,
`tasks/task_utils.py`), in numpy (no TensorFlow):
  1. tokens -> floats: (t - 1000) / (bins - 1); tokens 0, 40, 41 -> -1, -2, -3 (padding,
     separator, invisible); only the first 2 * max_points tokens count;
  2. (y, x) normalised to the padded canvas -> original pixels: times
     canvas_hw / unpadded_hw * orig_hw (float32, in that order), reserved values kept;
     plus the crop offset (y, x) in pixels where the image was cropped;
  3. split into polygons, pairs read as (x, y): stop at the first pair holding -1, start a
     new polygon at a pair holding -2, drop empty polygons (-3 is kept as a coordinate);
  4. each polygon -> RLE by pycocotools' `frPoly` (not `frPyObjects`, which would read a
     4-number polygon as a box), the union of the object's polygons; no polygon -> an
     all-zero mask;
  5. ensembling: the mean of an object's k sampled masks, >= threshold (0.5).
Step 1 runs in the graph too (`tokens_to_points(..., xp=jnp)`, `SegmentationTask.outputs`);
steps 2-5 stay on the host (`instance_masks`: an object's k sampled rows -> one mask).

Decoding (`SegmentationTask`, the `task.Task` hooks): each row is one sample of one
object, prompted [11, box, class] (`task.instance_prompts`; the official infer conditions
on the detection task's boxes of the same model, or, as its multi-task config does
(`use_gt_box_at_test=True`), on the ground-truth boxes); the response is 2 * 128 tokens
(the official infer's `max_seq_len = 2 * max_points + 6` counts the prompt), sampled at
temperature 1, top_k 0, top_p 0.8 with the official nucleus rule, 8 samples per object
(`prompts` repeats each object's row, samples adjacent, as the official
`tile_along_batch`). In both modes a row is done at its first padding token
(`stop_tokens`): parsing stops there (step 3), so what follows it is never read, and the
loop writes padding after it and stops sampling once every row is done (the official
samples all 256 tokens; the masks are the same). By `mode`:
  'official'  no constraint: the official samples from the unmasked logits.
  'grammar'   points come in (y, x) pairs: a pair starts with a coordinate, the separator
              40 or the end (padding 0); a coordinate is followed by a coordinate, the
              separator by the separator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import _mask as coco_mask_ext
from pycocotools import mask as coco_mask

from pix2seq_jax.tasks import task as task_lib
from pix2seq_jax.tasks import vocab as vocab_lib

# The official multi-task config's settings of the task (configs/config_multi_task.py).
QUANTIZATION_BINS = 1000  # :80
MAX_POINTS = 128  # :83 max_points_per_object
ENSEMBLE_NUM_SAMPLES = 8  # :95
ENSEMBLE_THRESHOLD = 0.5  # :96
TEMPERATURE = 1.0  # :91
TOP_K = 0  # :89
TOP_P = 0.8  # :90
MODES = task_lib.INSTANCE_MODES

# Tokens -> the point markers they stand for (tasks/vocab.py).
_TOKEN_TO_FLOAT = ((vocab_lib.PADDING, vocab_lib.POINT_PADDING),
                   (vocab_lib.OFFICIAL_SEPARATOR, vocab_lib.POINT_SEPARATOR),
                   (vocab_lib.OFFICIAL_INVISIBLE, vocab_lib.POINT_INVISIBLE))
_RESERVED = (vocab_lib.POINT_PADDING, vocab_lib.POINT_SEPARATOR, vocab_lib.POINT_INVISIBLE)


def tokens_to_points(tokens: np.ndarray, bins: int = QUANTIZATION_BINS,
                     coord_shift: int = vocab_lib.OFFICIAL_COORD_OFFSET, xp: Any = np):
  """Int tokens [..., K] -> float32 [..., K] normalised coordinates or -1/-2/-3.

  `xp`: numpy (the host) or jax.numpy (in the graph); the same float32 arithmetic.
  """
  tokens = xp.asarray(tokens).astype(xp.int32)
  points = (tokens - coord_shift).astype(xp.float32) / xp.float32(bins - 1)
  for token, value in _TOKEN_TO_FLOAT:
    points = xp.where(tokens == token, xp.float32(value), points)
  return points.astype(xp.float32)


def _keep_reserved(new: np.ndarray, old: np.ndarray) -> np.ndarray:
  for value in _RESERVED:
    new = np.where(old == value, np.float32(value), new)
  return new.astype(np.float32)


def rescale_points(points: np.ndarray, canvas_hw: Sequence[int], unpadded_hw: Sequence[int],
                   orig_hw: Sequence[int],
                   crop_offset: Sequence[int] | None = None) -> np.ndarray:
  """[..., 2P] (y, x) on the padded canvas -> original pixels (float32), reserved kept.

  The sizes and offset are [2] or [..., 2] (one per row of `points`).

  canvas_hw: the padded canvas (e.g. 640, 640); unpadded_hw: the resized image on it;
  orig_hw: the image the model saw before resizing (the crop for cropped images);
  crop_offset: (y, x) pixels of that crop in the full image, or None.
  """
  points = np.asarray(points, np.float32)
  scale = (np.asarray(canvas_hw, np.float32) / np.asarray(unpadded_hw, np.float32)
           * np.asarray(orig_hw, np.float32))  # [..., 2] (y, x)
  pairs = points.reshape(points.shape[:-1] + (-1, 2))  # [..., P, 2]
  scaled = _keep_reserved((pairs * scale[..., None, :]).reshape(points.shape), points)
  if crop_offset is not None:
    offset = np.asarray(crop_offset, np.float32)[..., None, :]  # [..., 1, 2]
    shifted = scaled.reshape(pairs.shape) + offset
    scaled = _keep_reserved(shifted.reshape(points.shape), scaled)
  return scaled


def split_polygons(points_yx: np.ndarray) -> list[list[float]]:
  """Flat (y, x) points (pixels, -1/-2 markers) -> polygons as flat [x y x y ...] lists."""
  pts = np.asarray(points_yx, np.float32).reshape(-1, 2)[:, ::-1]  # [P, 2] (x, y)
  polygons: list[list[float]] = [[]]
  for x, y in pts.tolist():
    if x == vocab_lib.POINT_PADDING or y == vocab_lib.POINT_PADDING:
      break
    if x == vocab_lib.POINT_SEPARATOR or y == vocab_lib.POINT_SEPARATOR:
      polygons.append([])
    else:
      polygons[-1] += [x, y]
  return [p for p in polygons if p]


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> dict:
  """Polygons (pixels, [x y ...]) -> one COCO RLE, the union; {'size': [0, 0]} if none."""
  rles = coco_mask_ext.frPoly(polygons, height, width)
  return coco_mask.merge(rles)


def rle_to_mask(rle: dict, height: int, width: int) -> np.ndarray:
  """COCO RLE -> uint8 [height, width]; the empty RLE of no polygon -> zeros."""
  mask = coco_mask.decode(rle)
  if mask.shape[0] == 0:
    return np.zeros([height, width], np.uint8)
  return mask.astype(np.uint8)


def decode_instance_mask(tokens: np.ndarray, canvas_hw: Sequence[int],
                         unpadded_hw: Sequence[int], orig_hw: Sequence[int],
                         mask_hw: Sequence[int] | None = None,
                         crop_offset: Sequence[int] | None = None,
                         max_points: int = MAX_POINTS, bins: int = QUANTIZATION_BINS,
                         coord_shift: int = vocab_lib.OFFICIAL_COORD_OFFSET,
                         ) -> tuple[dict, list[list[float]]]:
  """One sampled response (tokens after the 6-token prompt) -> (RLE, polygons in pixels).

  mask_hw: the mask's size (the full image's); defaults to orig_hw.
  """
  points = tokens_to_points(np.asarray(tokens)[:2 * max_points], bins, coord_shift)
  return points_to_rle(points, canvas_hw, unpadded_hw, orig_hw, mask_hw, crop_offset)


def points_to_rle(points: np.ndarray, canvas_hw: Sequence[int], unpadded_hw: Sequence[int],
                  orig_hw: Sequence[int], mask_hw: Sequence[int] | None = None,
                  crop_offset: Sequence[int] | None = None,
                  ) -> tuple[dict, list[list[float]]]:
  """One sample's points [2P] (`tokens_to_points`) -> (RLE, polygons in pixels)."""
  pixels = rescale_points(points, canvas_hw, unpadded_hw, orig_hw, crop_offset)
  polygons = split_polygons(pixels)
  h, w = (orig_hw if mask_hw is None else mask_hw)
  return polygons_to_rle(polygons, int(h), int(w)), polygons


def ensemble_masks(masks: Sequence[np.ndarray], num_samples: int = ENSEMBLE_NUM_SAMPLES,
                   threshold: float = ENSEMBLE_THRESHOLD) -> list[np.ndarray]:
  """Masks [objects * num_samples] (an object's samples adjacent) -> bool mask per object:
  mean of its samples >= threshold."""
  if len(masks) % num_samples:
    raise ValueError(f'{len(masks)} masks is not a multiple of {num_samples} samples')
  out = []
  for start in range(0, len(masks), num_samples):
    group = masks[start:start + num_samples]
    total = np.sum([np.asarray(m, np.float64) for m in group], axis=0)
    out.append(total / float(num_samples) >= threshold)
  return out


def instance_masks(points: np.ndarray, canvas_hw: Sequence[int], unpadded_hw: Sequence[int],
                   orig_hw: Sequence[int], mask_hw: Sequence[int] | None = None,
                   crop_offset: Sequence[int] | None = None,
                   num_samples: int = ENSEMBLE_NUM_SAMPLES,
                   threshold: float = ENSEMBLE_THRESHOLD,
                   max_points: int = MAX_POINTS) -> list[np.ndarray]:
  """One image's sampled rows -> one bool mask [H, W] per object (the official ensemble).

  points [n * num_samples, >= 2 * max_points]: `SegmentationTask.outputs` of the image's
  n objects, an object's samples adjacent; each sample -> polygons -> RLE -> mask
  (`points_to_rle`, sizes as there, the mask `mask_hw`, default orig_hw), then
  `ensemble_masks`.
  """
  h, w = (orig_hw if mask_hw is None else mask_hw)
  masks = []
  for row in np.asarray(points, np.float32)[:, :2 * max_points]:
    rle, _ = points_to_rle(row, canvas_hw, unpadded_hw, orig_hw, mask_hw, crop_offset)
    masks.append(rle_to_mask(rle, int(h), int(w)))
  return ensemble_masks(masks, num_samples, threshold)


@dataclasses.dataclass(frozen=True)
class SegmentationTask(task_lib.InstanceTask):
  """Instance segmentation's decoding hooks (`task.Task`; the module docstring) for the
  official_multitask `vocab`, with the official multi-task config's sampling settings."""

  temperature: float = TEMPERATURE
  top_k: int = TOP_K
  top_p: float = TOP_P
  max_points: int = MAX_POINTS  # the response is 2 * max_points tokens
  num_samples: int = ENSEMBLE_NUM_SAMPLES  # rows per object (`prompts`)
  threshold: float = ENSEMBLE_THRESHOLD  # of the mean of an object's sampled masks
  name: ClassVar[str] = 'instance_segmentation'  # task token 11
  suppress_tokens: ClassVar[tuple[int, ...]] = ()

  @property
  def stop_tokens(self) -> tuple[int, ...]:
    """Padding ends a row in both modes: the parser reads nothing after it."""
    return (self.vocab.padding,)

  @property
  def length(self) -> int:
    """The response tokens: 2 * max_points (256)."""
    return 2 * self.max_points

  def prompts(self, boxes: jax.Array, classes: jax.Array) -> jax.Array:
    """boxes [..., n, 4] (normalised ymin, xmin, ymax, xmax), classes [..., n] (category
    ids; 0: padding object) -> [prod(...) * n * num_samples, 6]: each object's prompt
    repeated num_samples times (adjacent)."""
    rows = task_lib.instance_prompts(self.prompt, boxes, classes, self.vocab)
    return jnp.repeat(rows, self.num_samples, axis=0)

  def allowed(self, position: jax.Array, tokens: jax.Array, state: tuple) -> jax.Array | None:
    if self.mode == 'official':
      return None
    ids = jnp.arange(self.vocab.size)
    coord = self.vocab.is_coord(ids)  # [V]
    separator = ids == self.vocab.separator
    pair_start = coord | separator | (ids == self.vocab.eos)  # [V]
    previous = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(position - 1, 0), axis=1,
                                            keepdims=True)  # [B, 1]
    second = jnp.where(previous == self.vocab.separator, separator, coord)  # [B, V]
    return jnp.where(position % 2 == 0, pair_start[None], second)

  def outputs(self, tokens: jax.Array, token_probs: jax.Array, state: tuple) -> jax.Array:
    """[R, L] float32 points: (y, x) normalised to the canvas, -1 / -2 / -3 for padding,
    separator and invisible (`tokens_to_points`); `instance_masks` reads them."""
    return tokens_to_points(tokens, self.vocab.num_bins, self.vocab.coord_offset, xp=jnp)
