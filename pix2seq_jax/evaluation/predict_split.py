"""A Predictor's COCO results for every image of a COCO-format split, for scoring with
pycocotools (`coco_metrics.py`): the test of a workdir's detections on any annotated
images without the tf.data pipeline."""

from __future__ import annotations

import os
from typing import Iterable

from absl import logging

from pix2seq_jax.data import image_check
from pix2seq_jax.evaluation import coco_metrics
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.inference.predictor import Predictor


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
  batches: Iterable = range(0, len(infos), predictor.batch_size)
  if progress:
    from tqdm.auto import tqdm
    batches = tqdm(batches, desc='predict', unit='batch')
  results, evaluated = [], []
  for start in batches:
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
