"""What an instance task's Predictor is given: the objects of each image as COCO-style
boxes, checked and placed on the canvas, the person crops of keypoint detection, and the
`--boxes` files of `--mode=predict` (numpy only, no TensorFlow, no JAX).

An object is {'bbox': [x, y, w, h] pixels, 'category_id', optional 'score' (default 1)}:
what a detection Predictor returns, or an entry of a COCO results or annotations file.
Segmentation prompts each object on the whole image; keypoint detection prompts each
person on a crop of the image around its box (`crop_region`, the official eval's
`maybe_unbatch_instances_and_crop_image_to_bbox` with `crop_to_bbox_pad_scale` 0.5).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from pix2seq_jax.data import canvas, coco_json

CROP_PAD_SCALE = 0.5  # the official keypoint config's crop_to_bbox_pad_scale


class BoxesError(ValueError):
  """Boxes that cannot be read, missing or misplaced; the message names the file, the
  record and the fix."""


def needs_boxes(task: str) -> str:
  """The message of an instance Predictor called without boxes."""
  return (f'This workdir\'s model was trained for {task}: it needs the boxes of the objects '
          'to read, per image a list of {"bbox": [x, y, w, h] px, "category_id", "score"} '
          "(e.g. a detection workdir's Predictor(images), or main.py --boxes=DETECTIONS.json "
          'with a predict JSON of a detection workdir or a COCO results/annotations file).')


def objects_of(entries: Sequence[dict], categories: coco_json.CategoryMap,
               where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One image's objects -> (boxes [m, 4] float64 [x, y, w, h] px, category ids [m] int,
  scores [m] float32); a bad entry raises BoxesError naming `where` and its index."""
  boxes, ids, scores = [], [], []
  for index, entry in enumerate(entries):
    at = f'{where}, object {index}'
    if not isinstance(entry, dict) or 'bbox' not in entry or 'category_id' not in entry:
      raise BoxesError(f'{at}: expected {{"bbox": [x, y, w, h], "category_id": id}}, got '
                       f'{str(entry)[:120]}.')
    box = np.asarray(entry['bbox'], np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] < 0 or box[3] < 0:
      raise BoxesError(f'{at}: bbox {entry["bbox"]} is not [x, y, w, h] with w, h >= 0.')
    category_id = int(entry['category_id'])
    if category_id not in categories.category_ids:
      raise BoxesError(f'{at}: category_id {category_id} is not one of the workdir\'s '
                       f'categories {list(categories.category_ids)}.')
    boxes.append(box)
    ids.append(category_id)
    scores.append(float(entry.get('score', 1.0)))
  return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(ids, np.int64),
          np.asarray(scores, np.float32))


def canvas_boxes(boxes_xywh: np.ndarray, image_hw: Sequence[int], canvas_size: int,
                 crop: Sequence[int] | None = None) -> np.ndarray:
  """[m, 4] [x, y, w, h] px of an image of (height, width) -> [m, 4] float32 (ymin, xmin,
  ymax, xmax) normalised to the S x S canvas of the image, or of its `crop` (y, x, height,
  width), as the input pipeline computes them: clipped to the image and normalised to it
  as the COCO reader does (`coco_json`), moved into the crop and clipped to it
  (`transforms.crop_boxes`), then scaled to the resized extent on the canvas
  (`transforms.canvas_boxes`), in float32; so the prompts equal the eval examples'."""
  height, width = (int(v) for v in image_hw)
  x, y, w, h = np.asarray(boxes_xywh, np.float64).reshape(-1, 4).T
  x0, y0 = np.clip(x, 0, width), np.clip(y, 0, height)
  x1, y1 = np.clip(x + w, 0, width), np.clip(y + h, 0, height)
  boxes = np.stack([y0 / height, x0 / width, y1 / height, x1 / width], 1).astype(np.float32)
  shape = (height, width)
  if crop is not None:
    top, left, crop_h, crop_w = (int(v) for v in crop)
    boxes = np.clip((boxes * np.float32([height, width, height, width])
                     - np.float32([top, left, top, left]))
                    / np.float32([crop_h, crop_w, crop_h, crop_w]), 0.0, 1.0)
    shape = (crop_h, crop_w)
  (extent_h, extent_w), _ = canvas.resized_shape(*shape, canvas_size)
  ratio = np.float32([extent_h, extent_w, extent_h, extent_w]) / np.float32(canvas_size)
  return (boxes * ratio).astype(np.float32)


def crop_region(box_xywh: Sequence[float], image_hw: Sequence[int],
                pad_scale: float = CROP_PAD_SCALE) -> tuple[int, int, int, int]:
  """The crop (y, x, height, width) around a person box [x, y, w, h] px in an image of
  (height, width): the official eval's crop (`data_utils.py`
  `maybe_unbatch_instances_and_crop_image_to_bbox`), in its float32 arithmetic: the box
  normalised to the image, floor(ymin * (h - 1)), ceil(ymax * (h - 1)) (x alike), padded
  by int(box side * pad_scale) on each side and clipped to the image."""
  height, width = (int(v) for v in image_hw)
  x, y, w, h = (float(v) for v in box_xywh)
  # normalised as the COCO reader normalises boxes (float64, stored as float32), then
  # the official's float32 arithmetic
  ymin, xmin, ymax, xmax = np.asarray([y / height, x / width, (y + h) / height,
                                       (x + w) / width], np.float32)
  last_y, last_x = np.float32(height - 1), np.float32(width - 1)
  ymin, xmin = int(np.floor(ymin * last_y)), int(np.floor(xmin * last_x))
  ymax, xmax = int(np.ceil(ymax * last_y)), int(np.ceil(xmax * last_x))
  ypad = int(np.float32(ymax - ymin + 1) * np.float32(pad_scale))
  xpad = int(np.float32(xmax - xmin + 1) * np.float32(pad_scale))
  ymin, ymax = max(0, ymin - ypad), min(height - 1, ymax + ypad)
  xmin, xmax = max(0, xmin - xpad), min(width - 1, xmax + xpad)
  return ymin, xmin, ymax - ymin + 1, xmax - xmin + 1


def read_boxes(path: str, image_paths: Sequence[str]) -> list[list[dict]]:
  """The objects of each image of `image_paths` from a `--boxes` file:

    - a predict JSON of a detection workdir ([{file_name, detections: [...]}, ...]);
    - COCO annotations ({images, annotations}): matched by file name; crowd boxes skipped;
    - COCO results ([{image_id, bbox, category_id, score}, ...]): the image id is the
      file name's number (000000000139.jpg -> 139), as in COCO's own files.
  An image the file does not name gets no objects. Raises BoxesError naming the file and
  the record (BoxesError) for anything it cannot read.
  """
  try:
    with open(path) as f:
      content = json.load(f)
  except FileNotFoundError:
    raise BoxesError(f'--boxes={path}: no such file.') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BoxesError(f'--boxes={path} is not a JSON file ({e}).') from None
  names = [os.path.basename(p) for p in image_paths]
  by_name: dict[str, list[dict]] = {}
  if isinstance(content, dict) and 'annotations' in content and 'images' in content:
    file_of = {}
    for index, image in enumerate(content['images']):
      if not isinstance(image, dict) or 'id' not in image or 'file_name' not in image:
        raise BoxesError(f'--boxes={path}: images[{index}] has no id or file_name.')
      file_of[image['id']] = os.path.basename(image['file_name'])
    for index, entry in enumerate(content['annotations']):
      if not isinstance(entry, dict) or entry.get('image_id') not in file_of:
        raise BoxesError(f'--boxes={path}: annotations[{index}] names no image of its '
                         f'"images" (image_id {str(entry)[:80]}).')
      if not entry.get('iscrowd', 0):
        by_name.setdefault(file_of[entry['image_id']], []).append(entry)
  elif isinstance(content, list) and all(isinstance(e, dict) and 'detections' in e
                                         for e in content):
    for index, entry in enumerate(content):
      if 'file_name' not in entry and 'path' not in entry:
        raise BoxesError(f'--boxes={path}: record {index} has detections but no file_name.')
      by_name[os.path.basename(entry.get('file_name') or entry['path'])] = entry['detections']
  elif isinstance(content, list):
    number_of = {}
    for name in names:
      stem = os.path.splitext(name)[0]
      if stem.isdigit():
        number_of[int(stem)] = name
    for index, entry in enumerate(content):
      if not isinstance(entry, dict) or 'image_id' not in entry:
        raise BoxesError(f'--boxes={path}: record {index} is neither a predict record '
                         '(file_name, detections) nor a COCO result (image_id, bbox, '
                         'category_id).')
      if int(entry['image_id']) in number_of:
        by_name.setdefault(number_of[int(entry['image_id'])], []).append(entry)
  else:
    raise BoxesError(f'--boxes={path}: expected a predict JSON (a list of {{file_name, '
                     'detections}}), COCO results (a list) or COCO annotations ({images, '
                     'annotations}).')
  return [by_name.get(name, []) for name in names]
