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
(`eval_suppress_invisible_token`); that is a decoding step (`KeypointTask`), not part of
this parser.

Decoding (`KeypointTask`, the `task.Task` hooks): each row is one person, prompted
[12, box, class] (`task.instance_prompts`; boxes from the detection task of the same
model, or the ground truth as the official multi-task config's `use_gt_box_at_test`);
the response is exactly 34 tokens, 17 (y, x) points or 41 41, none ending a row early
(`stop_tokens` is empty; the official infer's `max_seq_len = 2 * 17 + 6` counts the
prompt), sampled at temperature 1, top_k 0, top_p 0.1 with the official nucleus rule.
By `mode`:
  'official'  no constraint, and the invisible token suppressed as the official eval
              does: a drawn 41 is still read by the model at the next position, but the
              output takes a second draw from the logits without 41, and every token's
              probability (the score) is taken under those logits (`suppress_tokens`);
  'grammar'   every token a coordinate (or 41 when `suppress_invisible` is off); a
              suppressed 41 is masked before the draw, so the model reads the output.
`KeypointTask.outputs` gives the tokens, their points and the points score (the mean
probability of the non-padding tokens); `combine_scores` mixes it with the box score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pix2seq_jax.tasks import segmentation
from pix2seq_jax.tasks import task as task_lib
from pix2seq_jax.tasks import vocab as vocab_lib

# The official multi-task config's settings of the task (configs/config_multi_task.py).
NUM_KEYPOINTS = 17  # :120 max_points_per_object
POINTS_SCORE_WEIGHT = 1.0  # :136
PERSON_CLASS = 1  # keypoint_detection.py: `is_person = tf.equal(pred_classes, 1)`
TEMPERATURE = 1.0  # :128
TOP_K = 0  # :126
TOP_P = 0.1  # :127
SUPPRESS_INVISIBLE = True  # :137 eval_suppress_invisible_token
MODES = task_lib.INSTANCE_MODES


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
  return combine_scores(points_score, box_scores, classes, points_score_weight)


def combine_scores(points_scores: np.ndarray, box_scores: np.ndarray,
                   classes: np.ndarray | None = None,
                   points_score_weight: float = POINTS_SCORE_WEIGHT) -> np.ndarray:
  """Per-object score: w * points score [n] + (1 - w) * box score [n]; objects whose class
  (category id, when given) is not a person score 0."""
  scores = (points_score_weight * np.asarray(points_scores, np.float32)
            + (1 - points_score_weight) * np.asarray(box_scores, np.float32))
  if classes is not None:
    scores = np.where(np.asarray(classes) == PERSON_CLASS, scores, 0.0)
  return scores.astype(np.float32)


class KeypointOutputs(NamedTuple):
  """`KeypointTask.outputs`: what `decode_keypoints` and `combine_scores` read."""

  tokens: jax.Array  # [R, 34] int32: the emitted tokens (suppressed ones redrawn)
  points: jax.Array  # [R, 34] float32: (y, x) normalised to the canvas, or -1/-2/-3
  points_score: jax.Array  # [R] float32: mean probability of the non-padding tokens


@dataclasses.dataclass(frozen=True)
class KeypointTask(task_lib.InstanceTask):
  """Keypoint detection's decoding hooks (`task.Task`; the module docstring) for the
  official_multitask `vocab`, with the official multi-task config's sampling settings
  ('official' mode also redraws the invisible token: `suppress_tokens`)."""

  temperature: float = TEMPERATURE
  top_k: int = TOP_K
  top_p: float = TOP_P
  suppress_invisible: bool = SUPPRESS_INVISIBLE  # no 41 in the output
  points_score_weight: float = POINTS_SCORE_WEIGHT  # for `combine_scores`
  name: ClassVar[str] = 'keypoint_detection'  # task token 12
  # No row ends early: the response is always 34 tokens.
  stop_tokens: ClassVar[tuple[int, ...]] = ()

  @property
  def length(self) -> int:
    """The response tokens: 2 * 17 = 34."""
    return 2 * NUM_KEYPOINTS

  @property
  def suppress_tokens(self) -> tuple[int, ...]:
    """Official mode: 41 when suppressed (redrawn for the output, `decoding.sample`)."""
    official = self.mode == 'official' and self.suppress_invisible
    return (self.vocab.invisible,) if official else ()

  def prompts(self, boxes: jax.Array, classes: jax.Array) -> jax.Array:
    """boxes [..., n, 4] (normalised ymin, xmin, ymax, xmax), classes [..., n] (category
    ids; 0: padding object) -> [prod(...) * n, 6] prompts."""
    return task_lib.instance_prompts(self.prompt, boxes, classes, self.vocab)

  def allowed(self, position: jax.Array, tokens: jax.Array, state: tuple) -> jax.Array | None:
    if self.mode == 'official':
      return None
    ids = jnp.arange(self.vocab.size)
    allowed = self.vocab.is_coord(ids)
    if not self.suppress_invisible:
      allowed = allowed | (ids == self.vocab.invisible)
    return jnp.broadcast_to(allowed, (tokens.shape[0], self.vocab.size))

  def outputs(self, tokens: jax.Array, token_probs: jax.Array, state: tuple) -> KeypointOutputs:
    """The tokens, their points and the points score (the official
    `compute_weighted_scores`' mean over non-padding tokens; 0 for a row of padding)."""
    weight = (tokens != self.vocab.padding).astype(jnp.float32)  # [R, L]
    score = jnp.sum(token_probs * weight, -1) / jnp.maximum(jnp.sum(weight, -1), 1.0)
    points = segmentation.tokens_to_points(tokens, self.vocab.num_bins,
                                           self.vocab.coord_offset, xp=jnp)
    return KeypointOutputs(tokens, points, score)
