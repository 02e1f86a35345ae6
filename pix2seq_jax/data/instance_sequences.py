"""Instance tasks (Pix2Seq-v2) -> decoder input, target and loss weights (TensorFlow).

Instance segmentation (prompt 11) and keypoint detection (prompt 12) on the official
multi-task code's terms (google-research/pix2seq, `tasks/instance_segmentation.py`,
`tasks/keypoint_detection.py`, `tasks/task_utils.py`, `configs/config_multi_task.py`).
Each object gets its own sequence, conditioned on its box and class:

  label  = [prompt, q(ymin) q(xmin) q(ymax) q(xmax), 100 + class, response...]
  input  = label[:-1], target = label[1:]    (length max_seq_len = 5 + 2 * max_points)
  q(v)   = 1000 + clip(round(v * (bins - 1)), 0, bins - 1)

The response is the object's points, one token per coordinate, y before x:
  segmentation  polygon vertices, polygons of one object separated by 40 40; padding 0
                (which is also the end of the sequence); truncated at 128 points.
  keypoints     the 17 COCO keypoints in COCO order, an unlabelled one (v = 0) as 41 41;
                no end token (the response is exactly 34 tokens).

In-graph representation (the official one; what augmentations must keep):
  bbox        float32 [..., n, 4]  (ymin, xmin, ymax, xmax) normalised to the image (the
              padded canvas after padding), n objects padded with zero rows;
  label       int [..., n]         the COCO category id (1 = person); 0 = padding object;
  polygon     float32 [..., n, 2 * 128]  flat (y, x) pairs normalised like bbox, the
              object's COCO polygons one after another, a pair (-2, -2) between two
              polygons, then (-1, -1) padding up to 128 pairs (tasks/vocab.py's
              POINT_SEPARATOR and POINT_PADDING); longer objects are cut at 256
              floats (no subsampling, possibly mid-polygon). Padding objects (rows
              added to reach n) are all 0.0, the official
              `truncate_or_pad_to_max_instances` / `padded_batch` value.
  keypoints   float32 [..., n, 2 * 17]   flat (y, x) pairs normalised like bbox; a point
              labelled v = 0 in COCO is (-3, -3) (POINT_INVISIBLE); v = 1 and v = 2 both
              keep their coordinates. A person without keypoint annotation is all -1.
`official_objects` turns the per-object fields of `geometry.py` (any number of objects,
contiguous labels 0..C-1, only real objects) into this representation, in one place.
Reserved values (-1, -2, -3) are never scaled or shifted: a geometric transform must
restore them from the untransformed tensor (the official `preserve_reserved_tokens`).
A keypoint that a crop moves out of the frame (y or x <= 0 or >= 1) becomes (-3, -3) as
in the official `handle_out_of_frame_points`; polygon vertices are clipped to [0, 1].

Token weights (official `preprocess_batched`, training): 0 on the 5 box/class targets,
1 on response targets, `invisible_weight` (0.1) on targets 41 (keypoints), 0 for padding
objects, then `eos_weight` on every target that is 0 (padding), padding objects included:
1.0 for segmentation, 0.0 for keypoints. The keypoint decoder input is corrupted in
training: a ratio r ~ U(0, 1) per batch, then each response input token becomes 41 where
its own U(0, 1) draw is below r (the prompt's 6 tokens are never touched).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from pix2seq_jax.tasks import vocab as vocab_lib

# The official multi-task config's settings of the two tasks
# (configs/config_multi_task.py).
QUANTIZATION_BINS = 1000
SEGMENTATION_MAX_POINTS = 128  # configs/config_multi_task.py:83
KEYPOINTS_MAX_POINTS = 17  # configs/config_multi_task.py:120
SEGMENTATION_EOS_WEIGHT = 1.0  # configs/config_multi_task.py:93
KEYPOINTS_EOS_WEIGHT = 0.0  # configs/config_multi_task.py:131
KEYPOINTS_INVISIBLE_WEIGHT = 0.1  # configs/config_multi_task.py:130
PROMPT_LEN = 6  # prompt, 4 box tokens, class

# Point markers -> the tokens they become (tasks/vocab.py).
_FLOAT_TO_TOKEN = ((vocab_lib.POINT_PADDING, vocab_lib.PADDING),
                   (vocab_lib.POINT_SEPARATOR, vocab_lib.OFFICIAL_SEPARATOR),
                   (vocab_lib.POINT_INVISIBLE, vocab_lib.OFFICIAL_INVISIBLE))


def coco_polygon_points(segmentation: Sequence[Sequence[float]], height: int, width: int,
                        max_points: int = SEGMENTATION_MAX_POINTS) -> np.ndarray:
  """A COCO polygon list ([[x y x y ...], ...], pixels) -> float32 [2 * max_points].

  Flat (y, x) normalised by (height, width), (-2, -2) between polygons, (-1, -1) padding,
  cut at 2 * max_points floats: the official TFRecord + `extract` representation.
  """
  flat: list[float] = []
  for i, poly in enumerate(segmentation):
    if i:
      flat += [vocab_lib.POINT_SEPARATOR, vocab_lib.POINT_SEPARATOR]
    flat += list(poly)
  xy = np.full([2 * max_points], vocab_lib.POINT_PADDING, np.float32)
  flat_np = np.asarray(flat[:2 * max_points], np.float32)
  xy[:flat_np.shape[0]] = flat_np
  yx = xy.reshape(max_points, 2)[:, ::-1]  # [max_points, 2] (y, x)
  scaled = yx * (np.float32(1.0) / np.array([height, width], np.float32))
  reserved = (yx == vocab_lib.POINT_PADDING) | (yx == vocab_lib.POINT_SEPARATOR)
  return np.where(reserved, yx, scaled).reshape(-1).astype(np.float32)


def coco_keypoint_points(keypoints: Sequence[float] | None, height: int,
                         width: int) -> np.ndarray:
  """COCO [x y v] * 17 (pixels) -> float32 [34] flat (y, x) normalised; v = 0 -> (-3, -3).

  `None` (a person without keypoint annotation) -> all -1, as the official TFRecord.
  """
  if keypoints is None:
    return np.full([2 * KEYPOINTS_MAX_POINTS], vocab_lib.POINT_PADDING, np.float32)
  kp = np.asarray(keypoints, np.float32).reshape(-1, 3)  # [17, 3] (x, y, v)
  yx = kp[:, [1, 0]] * (np.float32(1.0) / np.array([height, width], np.float32))
  yx = np.where(kp[:, 2:3] == 0, np.float32(vocab_lib.POINT_INVISIBLE), yx)
  return yx.reshape(-1).astype(np.float32)


def official_objects(objects: dict[str, tf.Tensor], category_ids: Sequence[int],
                     max_instances: int, points: str = 'polygons'
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """geometry.py's objects -> (bbox, label, points) of the official representation.

  `objects`: boxes float32 [N, 4], labels int32 [N] (contiguous labels, index into
  `category_ids`), objects[points] float32 [N, K] (geometry's rows: PADDING-padded flat
  (y, x) points; every object real). Returns bbox float32 [n, 4], label int64 [n] (the
  category id, 0 on padding objects) and points float32 [n, K] for n = max_instances: the
  first n objects, then padding objects whose rows are all 0.0 (the official
  `truncate_or_pad_to_max_instances` value; their tokens are 0 whatever the row holds).
  A category id 0 would read as padding: the official vocabulary's ids start at 1.
  """
  boxes = objects['boxes'][:max_instances]  # [m, 4], m <= n
  ids = tf.constant(np.asarray(category_ids, np.int64).reshape(-1))
  label = tf.gather(ids, objects['labels'][:max_instances])  # [m]
  rows = objects[points][:max_instances]  # [m, K]
  pad = max_instances - tf.shape(boxes)[0]
  bbox = tf.pad(boxes, [[0, pad], [0, 0]])
  label = tf.pad(label, [[0, pad]])
  rows = tf.pad(rows, [[0, pad], [0, 0]])
  bbox.set_shape([max_instances, 4])
  label.set_shape([max_instances])
  rows.set_shape([max_instances, objects[points].shape[-1]])
  return bbox, label, rows


def quantize(coords: tf.Tensor, bins: int = QUANTIZATION_BINS) -> tf.Tensor:
  """Normalised coordinates -> int64 bins round(v * (bins - 1)) clipped to [0, bins - 1]."""
  q = tf.cast(tf.round(coords * (bins - 1)), tf.int64)
  return tf.clip_by_value(q, 0, bins - 1)


def build_instance_prompt(prompt: int, bbox: tf.Tensor, label: tf.Tensor,
                          bins: int = QUANTIZATION_BINS,
                          coord_shift: int = vocab_lib.OFFICIAL_COORD_OFFSET) -> tf.Tensor:
  """[..., n, 4] boxes, [..., n] labels -> int64 [..., n, 6] (prompt, box, class); 0 if pad."""
  label = tf.cast(label, tf.int64)
  box = quantize(bbox, bins) + coord_shift  # [..., n, 4]
  cls = (label + vocab_lib.OFFICIAL_CLASS_OFFSET)[..., tf.newaxis]  # [..., n, 1]
  head = tf.zeros_like(cls) + prompt
  seq = tf.concat([head, box, cls], -1)  # [..., n, 6]
  return tf.where((label == 0)[..., tf.newaxis], tf.zeros_like(seq), seq)


def build_points_response(points: tf.Tensor, label: tf.Tensor,
                          bins: int = QUANTIZATION_BINS,
                          coord_shift: int = vocab_lib.OFFICIAL_COORD_OFFSET) -> tf.Tensor:
  """[..., n, K] flat (y, x) points -> int64 [..., n, K] tokens; reserved floats -> 0/40/41."""
  tokens = quantize(points, bins) + coord_shift
  for value, token in _FLOAT_TO_TOKEN:
    tokens = tf.where(tf.equal(points, value), tf.constant(token, tf.int64), tokens)
  pad_object = (tf.cast(label, tf.int64) == 0)[..., tf.newaxis]
  return tf.where(pad_object, tf.zeros_like(tokens), tokens)


def _pad_last(x: tf.Tensor, length: int, value=0) -> tf.Tensor:
  """Pads (never cuts) the last axis to `length`."""
  extra = length - x.shape[-1]
  if extra < 0:
    raise ValueError(f'sequence of {x.shape[-1]} tokens exceeds {length}')
  paddings = [[0, 0]] * (x.shape.rank - 1) + [[0, extra]]
  return tf.pad(x, paddings, constant_values=tf.cast(value, x.dtype))


def _build(prompt: int, bbox, label, points, bins, coord_shift, max_points, eos_weight,
           invisible_weight):
  """Shared official layout; returns (prompt, response, input, target, weights)."""
  max_seq_len = 5 + 2 * max_points
  prompt_seq = build_instance_prompt(prompt, bbox, label, bins, coord_shift)  # [..., n, 6]
  response = build_points_response(points, label, bins, coord_shift)  # [..., n, K]
  seq = _pad_last(tf.concat([prompt_seq, response], -1), max_seq_len + 1)  # [..., n, L+1]
  input_seq, target_seq = seq[..., :-1], seq[..., 1:]  # [..., n, L]
  weights = tf.concat([tf.zeros_like(prompt_seq[..., 1:], tf.float32),
                       tf.ones_like(response, tf.float32)], -1)  # [..., n, 5 + K]
  if invisible_weight is not None:
    weights = tf.where(target_seq[..., :weights.shape[-1]] == vocab_lib.OFFICIAL_INVISIBLE,
                       tf.cast(invisible_weight, tf.float32), weights)
  real = (tf.cast(label, tf.int64) > 0)[..., tf.newaxis]
  weights = tf.where(real, weights, tf.zeros_like(weights))
  weights = _pad_last(weights, max_seq_len)
  weights = tf.where(target_seq == vocab_lib.PADDING, tf.cast(eos_weight, tf.float32), weights)
  return prompt_seq, response, input_seq, target_seq, weights


def build_segmentation_sequences(
    bbox: tf.Tensor, label: tf.Tensor, polygon: tf.Tensor, *,
    bins: int = QUANTIZATION_BINS, coord_shift: int = vocab_lib.OFFICIAL_COORD_OFFSET,
    max_points: int = SEGMENTATION_MAX_POINTS, eos_weight: float = SEGMENTATION_EOS_WEIGHT,
    prompt: int = vocab_lib.OFFICIAL_PROMPTS['instance_segmentation'],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """bbox [..., n, 4], label [..., n], polygon [..., n, 2 * max_points] -> (input int64,
  target int64, weights float32), each [..., n, 5 + 2 * max_points]."""
  _, _, input_seq, target_seq, weights = _build(
      prompt, bbox, label, polygon, bins, coord_shift, max_points, eos_weight, None)
  return input_seq, target_seq, weights


def corrupt_keypoint_input(input_seq: tf.Tensor, ratio: tf.Tensor,
                           noise: tf.Tensor) -> tf.Tensor:
  """Official input corruption: response input tokens -> 41 where noise < ratio.

  input_seq [..., n, L] int; ratio a scalar; noise float [..., n, L - 6] in [0, 1).
  """
  keep = tf.zeros_like(input_seq[..., :PROMPT_LEN], tf.bool)
  mask = tf.concat([keep, noise < tf.cast(ratio, noise.dtype)], -1)  # [..., n, L]
  return tf.where(mask, tf.constant(vocab_lib.OFFICIAL_INVISIBLE, input_seq.dtype), input_seq)


def build_keypoint_sequences(
    bbox: tf.Tensor, label: tf.Tensor, keypoints: tf.Tensor, *,
    bins: int = QUANTIZATION_BINS, coord_shift: int = vocab_lib.OFFICIAL_COORD_OFFSET,
    max_points: int = KEYPOINTS_MAX_POINTS, eos_weight: float = KEYPOINTS_EOS_WEIGHT,
    invisible_weight: float = KEYPOINTS_INVISIBLE_WEIGHT, corrupt: bool = False,
    ratio: tf.Tensor | None = None, noise: tf.Tensor | None = None,
    prompt: int = vocab_lib.OFFICIAL_PROMPTS['keypoint_detection'],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """bbox [..., n, 4], label [..., n], keypoints [..., n, 2 * max_points] -> (input,
  target, weights), each [..., n, 5 + 2 * max_points].

  The input is corrupted when `ratio` and `noise` are given (noise [..., n, L - 6]), or
  when `corrupt` is set (then both are drawn: ratio ~ U(0, 1), noise ~ U(0, 1), the
  official training behaviour).
  """
  _, _, input_seq, target_seq, weights = _build(
      prompt, bbox, label, keypoints, bins, coord_shift, max_points, eos_weight,
      invisible_weight)
  if corrupt and ratio is None:
    ratio = tf.random.uniform([], 0, 1)
    shape = tf.concat([tf.shape(input_seq)[:-1], [input_seq.shape[-1] - PROMPT_LEN]], 0)
    noise = tf.random.uniform(shape)
  if ratio is not None:
    input_seq = corrupt_keypoint_input(input_seq, ratio, noise)
  return input_seq, target_seq, weights
