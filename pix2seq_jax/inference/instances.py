"""The instance tasks' outputs in pixels: decoded rows -> COCO results with masks or
keypoints, on the host.

An instance task (segmentation, keypoints) decodes one row per object prompt
[task, ymin, xmin, ymax, xmax, 100 + category id] (`tasks/task.instance_prompts`; the
boxes normalised to the model's square canvas), `k` rows per object for segmentation
(`SegmentationTask.num_samples`, adjacent), one for keypoints. This module turns the rows
of one image into COCO results:
  segmentation  {image_id, category_id, segmentation (RLE, counts a str), bbox (the
                prompt's box, [x, y, w, h] px), score}: the k sampled polygons of each
                object -> masks -> their mean >= threshold (`segmentation.instance_masks`)
  keypoints     {image_id, category_id, keypoints [x, y, v] * 17 (px), bbox, score}
                (`keypoints.decode_keypoints`; score: the points' mean probability mixed
                with the box score, non-person objects 0: `keypoints.combine_scores`)
The geometry of an image is that of the input pipeline: `original_size` (h, w) of the
image the model saw before resizing (for a cropped image, the crop), resized to the
extent `canvas.resized_shape` gives (its longest side the canvas's, rounded to whole
pixels) and padded; a canvas-normalised point goes back to pixels as the official
post-processing takes it, times canvas / extent * original_size (the training pipeline
normalises to the same extent); plus `crop_offset` (y, x) of the crop in the full image,
whose size `mask_size` is the masks' (default: original_size + crop_offset).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np
from pycocotools import mask as coco_mask

from pix2seq_jax.config import default
from pix2seq_jax.data import canvas
from pix2seq_jax.tasks import keypoints as keypoints_lib
from pix2seq_jax.tasks import segmentation as segmentation_lib
from pix2seq_jax.tasks import task as task_lib
from pix2seq_jax.tasks import vocab as vocab_lib


def instance_task(config: ml_collections.ConfigDict,
                  vocab: vocab_lib.Vocabulary) -> task_lib.InstanceTask:
  """The decoding task of `config.task` (an instance task), with the official sampling of
  the multi-task config and this config's `data.max_points` for segmentation."""
  if config.task == 'instance_segmentation':
    return segmentation_lib.SegmentationTask(vocab, max_points=config.data.max_points)
  if config.task == 'keypoint_detection':
    return keypoints_lib.KeypointTask(vocab)
  raise ValueError(f'config.task={config.task!r} is not an instance task {default.INSTANCE_TASKS}.')


def prompt_objects(prompts: np.ndarray,
                   vocab: vocab_lib.Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Prompts [n, 6] -> (boxes [n, 4] normalised to the canvas, category ids [n], real [n]
  bool: False for a padding object's row of 0s)."""
  prompts = np.asarray(prompts).astype(np.int64)
  real = prompts[:, 0] != vocab_lib.PADDING
  boxes = (prompts[:, 1:5] - vocab.coord_offset).astype(np.float32) / np.float32(
      vocab.num_bins - 1)
  return boxes, prompts[:, 5] - vocab_lib.OFFICIAL_CLASS_OFFSET, real


def _geometry(canvas_size: int, original_size: Sequence[int]) -> dict:
  """The sizes `segmentation.rescale_points` reads: canvas, resized image, original."""
  height, width = (int(v) for v in original_size)
  extent, _ = canvas.resized_shape(height, width, canvas_size)
  return dict(canvas_hw=(canvas_size, canvas_size), unpadded_hw=extent,
              orig_hw=(height, width))


def _pixel_box(box: np.ndarray, canvas_size: int, original_size: Sequence[int],
               crop_offset: Sequence[int]) -> list[float]:
  """Canvas-normalised (ymin, xmin, ymax, xmax) -> COCO [x, y, w, h] in full-image pixels."""
  sizes = _geometry(canvas_size, original_size)
  per_unit = (np.float64(canvas_size) / np.asarray(sizes['unpadded_hw'], np.float64)
              * np.asarray(sizes['orig_hw'], np.float64))  # (y, x) pixels per unit
  ymin, xmin, ymax, xmax = (np.asarray(box, np.float64) * np.tile(per_unit, 2)).tolist()
  dy, dx = (float(v) for v in crop_offset)
  return [xmin + dx, ymin + dy, xmax - xmin, ymax - ymin]


def segmentation_results(points: np.ndarray, prompts: np.ndarray,
                         task: segmentation_lib.SegmentationTask, *, image_id: int,
                         canvas_size: int, original_size: Sequence[int],
                         crop_offset: Sequence[int] = (0, 0),
                         mask_size: Sequence[int] | None = None,
                         box_scores: np.ndarray | None = None,
                         return_masks: bool = False) -> list[dict]:
  """One image's segmentation rows -> COCO results, one per real prompt.

  points [n * k, >= 2P] (`SegmentationTask.outputs`, an object's k samples adjacent),
  prompts [n, 6]; box_scores [n]: the scores of the boxes prompted (default 1, as the
  official gives ground-truth boxes). With `return_masks`, each result also holds its
  bool mask [H, W] under 'mask' (not JSON).
  """
  boxes, category_ids, real = prompt_objects(prompts, task.vocab)
  if mask_size is None:
    mask_size = (int(original_size[0]) + int(crop_offset[0]),
                 int(original_size[1]) + int(crop_offset[1]))
  height, width = (int(v) for v in mask_size)
  k = task.num_samples
  points = np.asarray(points, np.float32)
  scores = np.ones(len(prompts), np.float32) if box_scores is None else box_scores
  results = []
  for index in np.flatnonzero(real):
    mask = segmentation_lib.instance_masks(
        points[index * k:(index + 1) * k], mask_hw=(height, width),
        crop_offset=None if not any(crop_offset) else crop_offset,
        num_samples=k, threshold=task.threshold, max_points=task.max_points,
        **_geometry(canvas_size, original_size))[0]
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    result = {'image_id': int(image_id), 'category_id': int(category_ids[index]),
              'segmentation': {'size': [int(v) for v in rle['size']],
                               'counts': rle['counts'].decode('ascii')},
              'bbox': _pixel_box(boxes[index], canvas_size, original_size, crop_offset),
              'score': float(scores[index])}
    if return_masks:
      result['mask'] = mask
    results.append(result)
  return results


def keypoint_results(outputs: keypoints_lib.KeypointOutputs, prompts: np.ndarray,
                     task: keypoints_lib.KeypointTask, *, image_id: int, canvas_size: int,
                     original_size: Sequence[int],
                     crop_offset: Sequence[int] = (0, 0),
                     box_scores: np.ndarray | None = None) -> list[dict]:
  """One image's keypoint rows (`KeypointTask.outputs`, [n, ...] each) and prompts [n, 6]
  -> COCO keypoint results, one per real prompt; box_scores [n] default 1 (ground truth)."""
  boxes, category_ids, real = prompt_objects(prompts, task.vocab)
  scores = keypoints_lib.combine_scores(
      np.asarray(outputs.points_score), np.ones(len(prompts), np.float32)
      if box_scores is None else box_scores, category_ids, task.points_score_weight)
  points = keypoints_lib.decode_keypoints(
      np.asarray(outputs.tokens), boxes, crop_offset=crop_offset,
      bins=task.vocab.num_bins, coord_shift=task.vocab.coord_offset,
      **_geometry(canvas_size, original_size))  # [n, 17, 3] (x, y, v)
  return [{'image_id': int(image_id), 'category_id': int(category_ids[index]),
           'keypoints': [float(v) for v in points[index].reshape(-1)],
           'bbox': _pixel_box(boxes[index], canvas_size, original_size, crop_offset),
           'score': float(scores[index])}
          for index in np.flatnonzero(real)]


def coco_results(outputs, prompts: np.ndarray, batch: dict[str, np.ndarray],
                 task: task_lib.InstanceTask, canvas_size: int) -> list[dict]:
  """Decoded rows of a pipeline batch -> COCO results of the instance task.

  outputs: `InstanceDecodeFn`'s, per image [B, rows, ...]; prompts [B, n, 6]; `batch`
  holds each image's `image_id`, `original_size`, `crop_offset` (optional) and
  `mask` (rows of padding examples give nothing).
  """
  results = []
  mask = batch.get('mask', np.ones(len(prompts), bool))
  for row in np.flatnonzero(mask):
    where = dict(image_id=int(batch['image_id'][row]), canvas_size=canvas_size,
                 original_size=tuple(int(v) for v in batch['original_size'][row]),
                 crop_offset=tuple(int(v) for v in batch['crop_offset'][row])
                 if 'crop_offset' in batch else (0, 0))
    if isinstance(task, segmentation_lib.SegmentationTask):
      results += segmentation_results(outputs[row], prompts[row], task, **where)
    else:
      results += keypoint_results(keypoints_lib.KeypointOutputs(
          *(np.asarray(x)[row] for x in outputs)), prompts[row], task, **where)
  return results
