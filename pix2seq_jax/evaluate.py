"""COCO box metrics with pycocotools, and a standalone scorer.

  python -m pix2seq_jax.evaluate --annotations GT.json --detections DT.json [--output M.json]

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


def load_ground_truth(annotations_path: str) -> COCO:
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(annotations_path)


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


def coco_metrics(coco_gt: COCO, detections: list[dict],
                 image_ids: list[int] | None = None, verbose: bool = False) -> dict:
  """The 12 COCO box metrics of `detections` (COCO results format) against `coco_gt`.

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
  # pycocotools reports -1 where no ground truth exists for a metric; keep its numbers.
  return {k: float(v) for k, v in zip(METRIC_KEYS, np.asarray(coco_eval.stats))}


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
