"""A Predictor's COCO results for every image of a COCO-format split, for scoring with
pycocotools (`coco_metrics.py`): the test of a workdir on any annotated images without the
tf.data pipeline. A detection workdir finds its boxes (`predict_coco_split`); an instance
task's workdir reads the split's ground-truth boxes, as training's evaluation does
(`predict_instances_split`). `training_evaluations` reads what training's evaluations
wrote."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterable

import ml_collections
import numpy as np
from absl import logging

from pix2seq_jax.data import coco_json, image_check, sources
from pix2seq_jax.evaluation import coco_metrics
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.inference.predictor import Predictor

# The COCOeval iou_type of each task's results; `coco_metrics.metric_keys` names its numbers.
IOU_TYPES = {'object_detection': 'bbox', 'instance_segmentation': 'segm',
             'keypoint_detection': 'keypoints'}
# The objects an instance task's evaluation reads: the split with their targets, as
# `sources.load_splits` makes the val split.
_WITH_TARGETS = {'instance_segmentation': sources.with_polygons,
                 'keypoint_detection': sources.with_keypoints}


def training_evaluations(workdir: str) -> dict[int, dict[str, float]]:
  """{step: metrics} of every `<workdir>/eval/step_<N>/metrics.json`, by step: the COCO
  metrics of the workdir's task and the teacher-forced val_loss; {} before the first."""
  out = {}
  for path in glob.glob(os.path.join(glob.escape(workdir), 'eval', 'step_*', 'metrics.json')):
    step = os.path.basename(os.path.dirname(path))[len('step_'):]
    if step.isdigit():
      with open(path) as f:
        out[int(step)] = json.load(f)
  return dict(sorted(out.items()))


def _batches(count: int, batch_size: int, progress: bool) -> Iterable[int]:
  batches: Iterable[int] = range(0, count, batch_size)
  if progress:
    from tqdm.auto import tqdm
    batches = tqdm(batches, desc='predict', unit='batch')
  return batches


def predict_coco_split(predictor: Predictor, annotations_path: str, images_dir: str,
                       max_images: int = 0,
                       progress: bool = False) -> tuple[list[dict], list[int]]:
  """COCO results for the images of an annotation file, and the image ids evaluated.

  The annotation file's categories must be the checkpoint's (same ids).
  """
  coco_gt = coco_metrics.load_ground_truth(annotations_path)
  gt_ids = sorted(coco_gt.getCatIds())
  if gt_ids != sorted(predictor.categories.category_ids):
    raise ValueError(f'{annotations_path}: category ids {gt_ids[:10]}... differ from the '
                     f'checkpoint\'s {list(predictor.categories.category_ids)[:10]}...')
  infos = coco_gt.dataset['images'][:max_images or None]
  results, evaluated = [], []
  for start in _batches(len(infos), predictor.batch_size, progress):
    chunk, images = [], []
    for info in infos[start:start + predictor.batch_size]:
      path, size = os.path.join(images_dir, info['file_name']), (info['height'], info['width'])
      check = image_check.check_file(path, *size)
      if check.problem:  # left out of the evaluation, as in training's evaluation
        logging.warning('%s: skipped (%s %s)', path, check.problem, check.detail)
        continue
      chunk.append(info)
      images.append(images_lib.load_image(path, check.orientation, size))
    for info, found in zip(chunk, predictor(images) if images else []):
      results += [{'image_id': info['id'], 'category_id': d['category_id'], 'bbox': d['bbox'],
                   'score': d['score']} for d in found]
    evaluated += [info['id'] for info in chunk]
  return results, evaluated


def ground_truth_objects(config: ml_collections.ConfigDict, categories: coco_json.CategoryMap,
                         annotations_path: str, images_dir: str, max_images: int = 0
                         ) -> list[tuple[coco_json.ImageRecord, list[dict]]]:
  """The images of an annotation file (its first `max_images`, 0: all, less the unreadable
  ones, in the file's order) and, per image, the objects an instance task's evaluation
  prompts, as the Predictor takes them ({'bbox': [x, y, w, h] px, 'category_id'}; score
  1): the objects training's evaluation reads (`sources.with_polygons` / `with_keypoints`
  of the val split), in the file's order. Segmentation: the non-crowd objects with a
  polygon, the first `data.max_instances` of each image (the others count as misses, as
  in the official evaluation); keypoints: every non-crowd person with keypoints (give the
  person_keypoints file). Boxes are clipped to the image, as the pipeline clips them.
  `config` and `categories` are the workdir's (a Predictor's).

  Raises ValueError when the file has objects of categories the checkpoint lacks.
  """
  if config.task not in _WITH_TARGETS:
    raise ValueError(f'The workdir was trained for {config.task}: it finds its boxes '
                     'itself (predict_coco_split).')
  split = coco_json.load_split(annotations_path, images_dir, categories=categories)
  if split.dropped.get('unknown_category_id'):
    raise ValueError(f'{annotations_path}: {split.dropped["unknown_category_id"]} objects '
                     'have categories the checkpoint does not know (its ids: '
                     f'{list(categories.category_ids)[:10]}...): give the annotations of '
                     'its dataset.')
  split = sources.check_images(
      dataclasses.replace(split, records=split.records[:max_images or None]),
      config.data.max_instances)
  for path, problem, detail in split.skipped_images:  # as training's evaluation does
    logging.warning('%s: skipped (%s %s)', path, problem, detail)
  split, _ = _WITH_TARGETS[config.task](split, config.data, training=False)
  per_image = config.data.max_instances if config.task == 'instance_segmentation' else None
  out = []
  for record in split.records:
    size = np.asarray([record.height, record.width] * 2, np.float64)
    ymin, xmin, ymax, xmax = (record.boxes.astype(np.float64) * size).T  # [N] px each
    out.append((record, [
        {'bbox': [x0, y0, x1 - x0, y1 - y0],
         'category_id': int(categories.category_ids[label])}
        for x0, y0, x1, y1, label in zip(xmin, ymin, xmax, ymax, record.labels)][:per_image]))
  return out


def predict_instances_split(predictor: Predictor, annotations_path: str, images_dir: str,
                            max_images: int = 0,
                            progress: bool = False) -> tuple[list[dict], list[int]]:
  """An instance task's COCO results (segmentation or keypoints) for the images of an
  annotation file, each of its objects read from its ground-truth box and class
  (`ground_truth_objects`), and the image ids evaluated: training's evaluation (the
  official `use_gt_box_at_test`) through the Predictor. Each result is scored 1
  (keypoints: mixed with its points' probability), as there.
  """
  objects = ground_truth_objects(predictor.config, predictor.categories, annotations_path,
                                 images_dir, max_images)
  results = []
  for start in _batches(len(objects), predictor.batch_size, progress):
    chunk = objects[start:start + predictor.batch_size]
    images = [images_lib.load_image(r.path, r.orientation, (r.height, r.width))
              for r, _ in chunk]
    found = predictor(images, boxes=[boxes for _, boxes in chunk])
    for (record, _), per_image in zip(chunk, found):
      results += [dict({k: v for k, v in r.items() if k != 'category_name'},
                       image_id=record.image_id) for r in per_image]
  return results, [record.image_id for record, _ in objects]
