"""The COCO evaluator: the COCO API's own fixture, empty predictions, and the CLI."""

import json
import subprocess
import sys

import pytest

from pix2seq_jax.evaluation import coco_metrics
from tests.tiny import ROOT, shared_path

# Published by the COCO API for its fake bbox results (pycocotools 2.0.11, full precision).
PUBLISHED = {
    'AP': 0.5045806987249628, 'AP50': 0.6969727247299577, 'AP75': 0.5729816669904824,
    'APs': 0.5856257209410443, 'APm': 0.5193996948036719, 'APl': 0.5013978986347466,
    'AR1': 0.38681277964578054, 'AR10': 0.5936795762842003, 'AR100': 0.595352982877607,
    'ARs': 0.6398109626113442, 'ARm': 0.5664205978994309, 'ARl': 0.5642905982905982,
}


def test_reproduces_the_cocoapi_fixture_exactly():
  metrics = coco_metrics.evaluate_files(
      shared_path('cocoapi_eval', 'instances_val2014_100.json'),
      shared_path('cocoapi_eval', 'instances_val2014_fakebbox100_results.json'))
  assert metrics == PUBLISHED


def test_cli_prints_and_writes_the_twelve_numbers(tmp_path):
  output = tmp_path / 'm.json'
  run = subprocess.run(
      [sys.executable, '-m', 'pix2seq_jax.evaluation.coco_metrics',
       '--annotations', shared_path('cocoapi_eval', 'instances_val2014_100.json'),
       '--detections', shared_path('cocoapi_eval', 'instances_val2014_fakebbox100_results.json'),
       '--output', str(output)], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert json.loads(output.read_text()) == PUBLISHED
  assert len(run.stdout.strip().splitlines()) == 12 and 'AP50 0.696973' in run.stdout


def test_empty_detections_score_zero_and_images_without_detections_count():
  coco_gt = coco_metrics.load_ground_truth(
      shared_path('cocoapi_eval', 'instances_val2014_100.json'))
  empty = coco_metrics.coco_metrics(coco_gt, [])
  assert set(empty) == set(coco_metrics.METRIC_KEYS) and empty['AP'] == 0 and empty['AR100'] == 0
  # A perfect detection on one image only: the other images' objects are misses.
  ann = coco_gt.dataset['annotations'][0]
  one = [{'image_id': ann['image_id'], 'category_id': ann['category_id'], 'bbox': ann['bbox'],
          'score': 1.0}]
  everywhere = coco_metrics.coco_metrics(coco_gt, one)
  assert set(one[0]) == {'image_id', 'category_id', 'bbox', 'score'}  # input left as it was
  only_there = coco_metrics.coco_metrics(coco_gt, one, image_ids=[ann['image_id']])
  assert 0 < everywhere['AR100'] < only_there['AR100']


def test_detections_file_must_be_a_list(tmp_path):
  path = tmp_path / 'd.json'
  path.write_text('{"image_id": 1}')
  with pytest.raises(ValueError, match='d.json'):
    coco_metrics.evaluate_files(shared_path('cocoapi_eval', 'instances_val2014_100.json'),
                                str(path))


def test_per_category_ap_and_precision_recall_agree_with_the_summary():
  coco_gt = coco_metrics.load_ground_truth(
      shared_path('cocoapi_eval', 'instances_val2014_100.json'))
  with open(shared_path('cocoapi_eval', 'instances_val2014_fakebbox100_results.json')) as f:
    detections = json.load(f)
  coco_eval = coco_metrics.run_cocoeval(coco_gt, detections)
  per_category = coco_metrics.per_category_ap(coco_eval)
  assert set(per_category) == set(coco_gt.getCatIds())
  with_gt = [v for v in per_category.values() if v == v]  # nan: no ground truth
  assert 0 < len(with_gt) < len(per_category)
  assert sum(with_gt) / len(with_gt) == pytest.approx(PUBLISHED['AP'], abs=1e-12)
  recall, precision = coco_metrics.precision_recall(coco_eval, iou=0.5)
  assert recall.shape == precision.shape == (101,) and recall[0] == 0 and recall[-1] == 1
  assert precision.mean() == pytest.approx(PUBLISHED['AP50'], abs=1e-12)
  assert (precision[:-1] >= precision[1:] - 1e-12).all()  # interpolated: non-increasing
  with pytest.raises(ValueError, match='0.52'):
    coco_metrics.precision_recall(coco_eval, iou=0.52)
