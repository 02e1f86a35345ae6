"""Keypoint detection (Pix2Seq-v2, prompt 12): response tokens -> COCO keypoints.

The official post-processing (google-research/pix2seq `tasks/keypoint_detection.py`
`postprocess_tpu`, `metrics/coco_metrics.py` `insert_visibility`), in numpy:
  1. the 34 response tokens -> floats as for segmentation ((t - 1000) / (bins - 1);
     0, 40, 41 -> -1, -2, -3);
  2. every coordinate equal to -3 (the invisible token 41) becomes the same coordinate of
     the box centre (per coordinate: a lone 41 replaces only its y or its x);
  3. (y, x) -> original pixels: times canvas_hw / unpadded_hw * orig_hw (float32), then +
     the crop offset (y, x) of the person crop; -1 and -2 are kept as they are;
  4. COCO layout [17, 3] (x, y, v): v = 0 where x or y is -3, else 1 (after step 2 every
     point is visible: the official reports all 17).
The score is the box score mixed with the mean probability of the sampled non-padding
tokens (`points_score_weight` 1.0: the points alone); non-person objects score 0.
The official eval also re-samples any sampled 41 with 41 masked out
(`eval_suppress_invisible_token`); that is a decoding step, not part of this parser.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pix2seq_jax.tasks import segmentation
from pix2seq_jax.tasks import vocab as vocab_lib

# The official multi-task config's settings of the task (configs/config_multi_task.py:
# max_points_per_object, points_score_weight).
NUM_KEYPOINTS = 17
POINTS_SCORE_WEIGHT = 1.0
PERSON_CLASS = 1


def decode_keypoints(tokens: np.ndarray, box_yxyx: np.ndarray, canvas_hw: Sequence[int],
                     unpadded_hw: Sequence[int], orig_hw: Sequence[int],
                     crop_offset: Sequence[int] | None = None,
                     bins: int = segmentation.QUANTIZATION_BINS,
                     coord_shift: int = vocab_lib.OFFICIAL_COORD_OFFSET) -> np.ndarray:
  """Response tokens [..., >= 34] and boxes [..., 4] (ymin, xmin, ymax, xmax, normalised
  to the canvas) -> float32 [..., 17, 3] (x, y, v) in original pixels."""
  tokens = np.asarray(tokens)[..., :2 * NUM_KEYPOINTS]
  points = segmentation.tokens_to_points(tokens, bins, coord_shift)  # [..., 34] (y, x)
  box = np.asarray(box_yxyx, np.float32)
  centre = np.stack([(box[..., 2] + box[..., 0]) / np.float32(2),
                     (box[..., 3] + box[..., 1]) / np.float32(2)], -1)  # [..., 2]
  centre = np.tile(centre, NUM_KEYPOINTS)  # [..., 34]
  points = np.where(points == vocab_lib.POINT_INVISIBLE, centre, points).astype(np.float32)
  pixels = segmentation.rescale_points(points, canvas_hw, unpadded_hw, orig_hw, crop_offset)
  yx = pixels.reshape(pixels.shape[:-1] + (NUM_KEYPOINTS, 2))
  hidden = np.any(yx == vocab_lib.POINT_INVISIBLE, axis=-1, keepdims=True)
  v = np.where(hidden, np.float32(0), np.float32(1))
  return np.concatenate([yx[..., 1:2], yx[..., 0:1], v], -1).astype(np.float32)


def keypoint_scores(tokens: np.ndarray, logits: np.ndarray, box_scores: np.ndarray,
                    classes: np.ndarray | None = None,
                    points_score_weight: float = POINTS_SCORE_WEIGHT) -> np.ndarray:
  """Per-object score: w * mean p(sampled token) over non-padding tokens + (1 - w) * box.

  tokens [n, T] sampled ids, logits [n, T, V], box_scores [n]; objects whose class is not
  a person (when `classes` is given) score 0.
  """
  logits = np.asarray(logits, np.float32)
  tokens = np.asarray(tokens).astype(np.int64)
  shifted = logits - logits.max(-1, keepdims=True)
  probs = np.exp(shifted)
  probs /= probs.sum(-1, keepdims=True)  # [n, T, V]
  chosen = np.take_along_axis(probs, tokens[..., None], -1)[..., 0]  # [n, T]
  weight = (tokens != vocab_lib.PADDING).astype(np.float32)
  points_score = (chosen * weight).sum(-1) / weight.sum(-1)
  scores = (points_score_weight * points_score
            + (1 - points_score_weight) * np.asarray(box_scores, np.float32))
  if classes is not None:
    scores = np.where(np.asarray(classes) == PERSON_CLASS, scores, 0.0)
  return scores.astype(np.float32)
