"""An instance task's results for images and their objects, given a function that decodes
batches of canvases and prompts: shared by the `Predictor` (its jitted `InstanceDecodeFn`)
and an exported instance program (`deploy/serving.py`), so both read images, boxes and
outputs the same way.

  segmentation  each image on its S x S canvas once per `objects_per_call` objects, the
                objects' prompts beside it; the rows -> masks (`instances.segmentation_results`)
  keypoints     each person on its own canvas: the crop of the image around its box
                (`instance_inputs.crop_region`), one prompt; the rows -> keypoints of the
                full image (`instances.keypoint_results`, with the crop's offset)
Batches hold `batch_size` canvases (padded), each with `objects_per_call` prompts
(padded with 0 rows), so every call has one shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from pix2seq_jax.data import canvas, coco_json
from pix2seq_jax.inference import instance_inputs, instances
from pix2seq_jax.tasks import keypoints as keypoints_lib
from pix2seq_jax.tasks import task as task_lib

# (canvases float32 [B, S, S, 3], prompts int32 [B, n, 6]) -> outputs [B, rows, ...] (numpy)
DecodeBatch = Callable[[np.ndarray, np.ndarray], Any]


def objects_per_call(task: task_lib.InstanceTask, max_instances: int) -> int:
  """Objects decoded per canvas: `max_instances` (segmentation), 1 (keypoints: one person
  per crop)."""
  return 1 if isinstance(task, keypoints_lib.KeypointTask) else int(max_instances)


def _decode_jobs(jobs: list[tuple[np.ndarray, np.ndarray]], decode_batch: DecodeBatch,
                 size: int, batch_size: int, n: int, prompt_length: int) -> list:
  """(canvas [S, S, 3], prompts [m <= n, 6]) each -> (its outputs, its prompts [n, 6])."""
  out = []
  for start in range(0, len(jobs), batch_size):
    chunk = jobs[start:start + batch_size]
    canvases = np.full((batch_size, size, size, 3), canvas.PAD_VALUE, np.float32)
    prompts = np.zeros((batch_size, n, prompt_length), np.int32)
    for row, (image, rows) in enumerate(chunk):
      canvases[row], prompts[row, :len(rows)] = image, rows
    outputs = jax.tree.map(np.asarray, decode_batch(canvases, prompts))
    out += [(jax.tree.map(lambda x, r=row: x[r], outputs), prompts[row])
            for row in range(len(chunk))]
  return out


def predict(arrays: Sequence[np.ndarray], boxes: Sequence[Sequence[dict]],
            task: task_lib.InstanceTask, categories: coco_json.CategoryMap, size: int,
            decode_batch: DecodeBatch, batch_size: int, max_instances: int,
            return_masks: bool = False) -> list[list[dict]]:
  """Per image (uint8 [H, W, 3]), one result per object of `boxes` (see
  `Predictor.__call__`), in their order."""
  if len(boxes) != len(arrays):
    raise instance_inputs.BoxesError(f'boxes: one list of objects per image expected, got '
                                      f'{len(boxes)} for {len(arrays)} images.')
  objects = [instance_inputs.objects_of(found, categories, f'image {index}')
             for index, found in enumerate(boxes)]
  n = objects_per_call(task, max_instances)
  keypoints = isinstance(task, keypoints_lib.KeypointTask)
  jobs, where = [], []
  for index, (image, (xywh, ids, _)) in enumerate(zip(arrays, objects)):
    if keypoints:  # each person on its own crop
      for i, box in enumerate(xywh):
        y, x, height, width = instance_inputs.crop_region(box, image.shape[:2])
        on_canvas, _ = canvas.to_canvas(image[y:y + height, x:x + width], size)
        normalised = instance_inputs.canvas_boxes(box[None], image.shape[:2], size,
                                                  (y, x, height, width))
        jobs.append((on_canvas, _prompts(task, normalised, ids[i:i + 1])))
        where.append((index, i, (y, x), (height, width)))
    else:  # the image once per n objects
      on_canvas, _ = canvas.to_canvas(image, size)
      normalised = instance_inputs.canvas_boxes(xywh, image.shape[:2], size)
      for start in range(0, len(ids), n):
        jobs.append((on_canvas, _prompts(task, normalised[start:start + n],
                                         ids[start:start + n])))
        where.append((index, start, (0, 0), image.shape[:2]))
  out: list[list[dict]] = [[] for _ in arrays]
  decoded = _decode_jobs(jobs, decode_batch, size, batch_size, n, task.prompt_length)
  for (outputs, prompts), (index, start, offset, seen) in zip(decoded, where):
    scores = np.zeros(n, np.float32)
    given = objects[index][2][start:start + n]
    scores[:len(given)] = given
    geometry = dict(image_id=0, canvas_size=size, original_size=seen,
                    box_scores=scores)
    if keypoints:
      found = instances.keypoint_results(keypoints_lib.KeypointOutputs(*outputs), prompts,
                                         task, crop_offset=offset, **geometry)
    else:
      found = instances.segmentation_results(outputs, prompts, task,
                                             return_masks=return_masks, **geometry)
    out[index] += [_named(r, boxes[index][start + i], categories)
                   for i, r in enumerate(found)]
  return out


def _prompts(task: task_lib.InstanceTask, boxes_yxyx: np.ndarray,
             category_ids: np.ndarray) -> np.ndarray:
  """One prompt per object (the decoder repeats it for the samples): [m, 6]."""
  return np.asarray(task_lib.instance_prompts(task.prompt, boxes_yxyx, category_ids,
                                              task.vocab), np.int32)


def _named(result: dict, entry: dict, categories: coco_json.CategoryMap) -> dict:
  """An instances.py result as returned: the given box, the category's name, no image id."""
  result = {k: v for k, v in result.items() if k != 'image_id'}
  name = categories.names[categories.label_of(result['category_id'])]
  return dict(result, category_name=name, bbox=[float(v) for v in entry['bbox']])
