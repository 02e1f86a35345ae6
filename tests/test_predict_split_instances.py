"""An instance workdir scored on a split from its ground-truth boxes
(`predict_split.ground_truth_objects`, `predict_instances_split`): the objects prompted are
those training's evaluation reads, and masks that are the objects' own polygons score
segm AP near 1 through the Predictor."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from pix2seq_jax.config import default
from pix2seq_jax.data import coco_json
from pix2seq_jax.evaluation import coco_metrics, predict_split
from pix2seq_jax.inference import predictor as predictor_lib
from tests.test_predict_instances import Oracle, make_instance_workdir, polygon_rows
from tests.tiny import shared_path


def _expected(kind: str, count: int, per_image: int | None) -> list[tuple[dict, list[dict]]]:
  """The first `count` images of coco_mini's val `kind` file and their objects as the
  official evaluation reads them: non-crowd ones in the file's order, the first
  `per_image` (every one of coco_mini's val objects has a usable polygon or keypoints)."""
  with open(os.path.join(shared_path('coco_mini'), 'annotations', f'{kind}_val2017.json')) as f:
    content = json.load(f)
  images = content['images'][:count]
  return [(image, [a for a in content['annotations']
                   if a['image_id'] == image['id'] and not a['iscrowd']][:per_image])
          for image in images]


def _config(task: str, max_instances: int):
  config = default.get_config()
  config.task = task
  config.data.max_instances = max_instances
  return config


@pytest.mark.parametrize('task,kind,per_image', [
    ('instance_segmentation', 'instances', 2), ('keypoint_detection', 'person_keypoints', None)])
def test_the_objects_are_those_training_evaluates(task, kind, per_image):
  coco = shared_path('coco_mini')
  annotations = os.path.join(coco, 'annotations', f'{kind}_val2017.json')
  categories = coco_json.CategoryMap.from_file(  # a workdir's: COCO's 80
      os.path.join(coco, 'annotations', 'instances_val2017.json'))
  found = predict_split.ground_truth_objects(_config(task, per_image or 1), categories,
                                             annotations, os.path.join(coco, 'val2017'), 6)
  expected = _expected(kind, 6, per_image)
  assert [r.image_id for r, _ in found] == [image['id'] for image, _ in expected]
  for (record, boxes), (image, objects) in zip(found, expected):
    assert (record.height, record.width) == (image['height'], image['width'])
    assert [b['category_id'] for b in boxes] == [a['category_id'] for a in objects]
    for box, a in zip(boxes, objects):
      np.testing.assert_allclose(box['bbox'], a['bbox'], rtol=0, atol=1e-3)
  counts = [len(boxes) for _, boxes in found]
  if per_image:  # the first 2 of 19, 8, 24 (and a crowd), 2, 8, 2 objects
    assert counts == [2, 2, 2, 2, 2, 2]
  else:  # persons without a labelled keypoint too (349860), not the crowd (217285)
    assert counts == [2, 3, 13, 0, 0, 1]


def test_a_detection_workdir_or_unknown_categories_are_refused():
  coco = shared_path('coco_mini')
  annotations = os.path.join(coco, 'annotations', 'instances_val2017.json')
  categories = coco_json.CategoryMap.from_file(annotations)
  with pytest.raises(ValueError, match='trained for object_detection: it finds its boxes'):
    predict_split.ground_truth_objects(_config('object_detection', 2), categories,
                                       annotations, os.path.join(coco, 'val2017'))
  few = coco_json.CategoryMap(category_ids=categories.category_ids[:1],
                              names=categories.names[:1])
  with pytest.raises(ValueError, match='objects have categories the checkpoint does not'):
    predict_split.ground_truth_objects(_config('instance_segmentation', 2), few,
                                       annotations, os.path.join(coco, 'val2017'))


def test_oracle_masks_of_the_ground_truth_boxes_score_segm_ap_near_1(tmp_path, monkeypatch):
  """The Predictor's decoder answers each prompt with its object's annotated polygon:
  one result per object, on the images evaluated; where every object of an image was
  prompted (2 of 6 images: max_instances 2), segm AP is near 1."""
  coco = shared_path('coco_mini')
  predictor = predictor_lib.Predictor(make_instance_workdir(str(tmp_path / 'segm')),
                                      batch_size=2)
  points = 512
  monkeypatch.setattr(predictor, 'task', dataclasses.replace(predictor.task, max_points=points,
                                                             num_samples=1))
  expected, rows = _expected('instances', 6, 2), []
  for image, objects in expected:
    rows += polygon_rows(image, objects, predictor.size, points)
  oracle = Oracle(rows, np.full((1, 2 * points), -1.0, np.float32))
  monkeypatch.setattr(predictor, '_decode', oracle)
  annotations = os.path.join(coco, 'annotations', 'instances_val2017.json')
  results, image_ids = predict_split.predict_instances_split(
      predictor, annotations, os.path.join(coco, 'val2017'), max_images=6)
  assert not oracle.rows and oracle.calls == 3  # 6 images, 2 per call
  assert image_ids == [image['id'] for image, _ in expected]
  assert [(r['image_id'], r['category_id']) for r in results] == [
      (image['id'], a['category_id']) for image, objects in expected for a in objects]
  assert {k for r in results for k in r} == {'image_id', 'category_id', 'bbox', 'score',
                                              'segmentation'}
  assert {r['score'] for r in results} == {1.0}
  coco_gt = coco_metrics.load_ground_truth(annotations)
  complete = [i for i in image_ids if len(coco_gt.getAnnIds(imgIds=[i], iscrowd=False)) <= 2]
  assert len(complete) == 2
  metrics = coco_metrics.coco_metrics(coco_gt, results, complete, iou_type='segm')
  assert metrics['AP'] > 0.9, metrics
  everything = coco_metrics.coco_metrics(coco_gt, results, image_ids, iou_type='segm')
  assert everything['AR100'] < 0.5  # the objects past max_instances count as misses


def test_training_evaluations_by_step(tmp_path):
  assert predict_split.training_evaluations(str(tmp_path)) == {}
  for step, ap in ((10, 0.5), (2, 0.25)):
    os.makedirs(tmp_path / 'eval' / f'step_{step}')
    (tmp_path / 'eval' / f'step_{step}' / 'metrics.json').write_text(json.dumps({'AP': ap}))
  (tmp_path / 'eval' / 'step_x').mkdir()
  assert predict_split.training_evaluations(str(tmp_path)) == {2: {'AP': 0.25},
                                                                10: {'AP': 0.5}}
  assert list(predict_split.training_evaluations(str(tmp_path))) == [2, 10]
