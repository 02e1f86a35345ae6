"""COCO box metrics with pycocotools, and a standalone scorer.

  python -m pix2seq_jax.evaluation.coco_metrics --annotations GT.json --detections DT.json \
      [--output M.json]

prints the 12 standard numbers and writes them under METRIC_KEYS. Every image of the
ground truth is evaluated (or of `image_ids`), also those without detections, and an
empty detection list scores 0 rather than failing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
               'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def _complete_annotations(annotations: list[dict]) -> list[dict]:
  """Fills what pycocotools needs and some COCO-format exporters leave out.

  A missing `id` gets the next free number, `area` the box's w * h, `iscrowd` 0;
  annotations whose box is not four finite numbers cannot be scored and are left out.
  Files that have all of these come back unchanged.
  """
  used = {a['id'] for a in annotations if 'id' in a}
  next_id = max(used, default=0) + 1
  completed = []
  for ann in annotations:
    box = ann.get('bbox')
    if not (isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and np.isfinite(v) for v in box)):
      continue
    if 'id' not in ann:
      ann = dict(ann, id=next_id)
      next_id += 1
    completed.append(dict({'area': float(box[2] * box[3]), 'iscrowd': 0}, **ann))
  return completed


def load_ground_truth(annotations_path: str) -> COCO:
  """The instances file as pycocotools' COCO, completed where fields are missing."""
  with open(annotations_path) as f:
    dataset = json.load(f)
  dataset['annotations'] = _complete_annotations(dataset['annotations'])
  coco = COCO()
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _results(coco_gt: COCO, detections: list[dict]) -> COCO:
  if detections:
    with contextlib.redirect_stdout(io.StringIO()):
      return coco_gt.loadRes(copy.deepcopy(detections))  # loadRes adds keys to its input
  empty = COCO()
  empty.dataset = {'images': coco_gt.dataset['images'],
                   'categories': coco_gt.dataset['categories'], 'annotations': []}
  with contextlib.redirect_stdout(io.StringIO()):
    empty.createIndex()
  return empty


def run_cocoeval(coco_gt: COCO, detections: list[dict],
                 image_ids: list[int] | None = None, verbose: bool = False) -> COCOeval:
  """pycocotools' box evaluation of `detections` (COCO results format), summarised.

  Args:
    image_ids: the images evaluated; default all images of the ground truth.
    verbose: print pycocotools' summary table.
  """
  coco_eval = COCOeval(coco_gt, _results(coco_gt, detections), iouType='bbox')
  if image_ids is not None:
    coco_eval.params.imgIds = sorted(image_ids)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  if verbose:
    print(out.getvalue(), end='')
  return coco_eval


def coco_metrics(coco_gt: COCO, detections: list[dict],
                 image_ids: list[int] | None = None, verbose: bool = False) -> dict:
  """The 12 COCO box metrics of `detections` against `coco_gt` (see `run_cocoeval`)."""
  coco_eval = run_cocoeval(coco_gt, detections, image_ids, verbose)
  # pycocotools reports -1 where no ground truth exists for a metric; keep its numbers.
  return {k: float(v) for k, v in zip(METRIC_KEYS, np.asarray(coco_eval.stats))}


def _precision(coco_eval: COCOeval) -> np.ndarray:
  """[IoU thresholds, recall thresholds, categories]: all areas, 100 detections."""
  if not coco_eval.eval:
    raise ValueError('Run evaluate() and accumulate() first (see run_cocoeval).')
  return np.asarray(coco_eval.eval['precision'])[:, :, :, 0, -1]


def per_category_ap(coco_eval: COCOeval) -> dict[int, float]:
  """{category id: AP over IoU 0.5:0.95}; nan for categories without ground truth."""
  precision = _precision(coco_eval)
  out = {}
  for k, category_id in enumerate(coco_eval.params.catIds):
    valid = precision[:, :, k][precision[:, :, k] > -1]
    out[int(category_id)] = float(valid.mean()) if valid.size else float('nan')
  return out


def precision_recall(coco_eval: COCOeval, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """(recall [101], precision [101]) at one IoU threshold, averaged over categories."""
  thresholds = np.asarray(coco_eval.params.iouThrs)
  index = int(np.argmin(np.abs(thresholds - iou)))
  if abs(thresholds[index] - iou) > 1e-6:
    raise ValueError(f'iou={iou} is not one of the thresholds {thresholds.tolist()}.')
  precision = _precision(coco_eval)[index]  # [recall thresholds, categories]
  with_gt = (precision > -1).any(axis=0)
  curve = np.where(precision[:, with_gt] > -1, precision[:, with_gt], 0.0).mean(axis=1)
  return np.asarray(coco_eval.params.recThrs), curve


def evaluate_files(annotations_path: str, detections_path: str) -> dict:
  with open(detections_path) as f:
    detections = json.load(f)
  if not isinstance(detections, list):
    raise ValueError(f'{detections_path}: expected a JSON list of detections in COCO '
                     'results format ({"image_id", "category_id", "bbox", "score"}).')
  return coco_metrics(load_ground_truth(annotations_path), detections)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--annotations', required=True, help='COCO instances JSON (ground truth)')
  parser.add_argument('--detections', required=True, help='COCO results JSON (detections)')
  parser.add_argument('--output', help='where to write the metrics as JSON')
  args = parser.parse_args(argv)
  metrics = evaluate_files(args.annotations, args.detections)
  for key in METRIC_KEYS:
    print(f'{key:>6} {metrics[key]:.6f}')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(metrics, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
