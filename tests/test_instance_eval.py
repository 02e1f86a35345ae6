"""Evaluating the instance tasks on real COCO data (coco_mini): decoded rows -> COCO results
in original pixels (`inference/instances.py`) -> COCOeval, and the `InstanceEvaluator`
that decodes every val object from its ground-truth prompt.

The geometry is proven with an oracle: the eval examples' own target sequences, read
as if the model had emitted them, must score as the annotations they were built from
(segm AP above 0.9, keypoint AP above 0.95: only quantisation and the point budget
separate them); a planted error in the pixel mapping (the padding, the crop offset)
fails it.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from pycocotools import mask as mask_utils

from pix2seq_jax.config import default, resolve
from pix2seq_jax.data import pipeline, sources
from pix2seq_jax.evaluation import coco_metrics, instance_evaluator
from pix2seq_jax.inference import instances
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import keypoints, segmentation
from pix2seq_jax.tasks import vocab as vocab_lib
from tests import tiny
from tests.tiny import shared_path

SEGM = 'instance_segmentation'
KEYPOINTS = 'keypoint_detection'


def _config(image_size: int, max_instances: int, max_points: int):
  config = default.get_config()
  config.task = SEGM
  data = config.data
  data.source, data.coco_dir = 'coco_files', shared_path('coco_mini')
  data.image_size, data.max_instances, data.max_points = image_size, max_instances, max_points
  data.noise_objects = data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'
  config.model.variant = 'vit_nano'
  config.train.batch_size = config.eval.batch_size = 2
  config.train.steps, config.train.warmup_steps = 1, 0
  return config


def _setup(config):
  splits = sources.load_splits(config.data, config.task)
  vocab = vocab_lib.for_categories('official_multitask', splits.categories.category_ids, 1000)
  return resolve.resolve(config, len(splits.train.records)), splits, vocab


def _oracle_results(config, splits, vocab, max_images: int):
  """COCO results of the val examples' target responses read as decoded rows (one
  sample per object), and the image ids."""
  task = segmentation.SegmentationTask(vocab, max_points=config.data.max_points,
                                       num_samples=1)
  results = []
  for batch in pipeline.eval_batches(splits.val, config.data, vocab, global_batch_size=4,
                                     max_images=max_images, task=config.task,
                                     targets=splits.instances['val']):
    response = batch['target_tokens'][..., task.prompt_length - 1:]  # [B, n, 2P]
    points = segmentation.tokens_to_points(response, vocab.num_bins, vocab.coord_offset)
    results += instances.coco_results(points, batch['input_tokens'][..., :6], batch, task,
                                      config.data.image_size)
  return results, [r.image_id for r in splits.val.records[:max_images]]


@pytest.fixture(scope='module')
def oracle():
  """Every object of 12 val images (45 at most an image), 128 points, 512-px canvas."""
  config, splits, vocab = _setup(_config(512, 45, 128))
  return config, splits, vocab


def test_target_sequences_score_as_the_annotations(oracle, monkeypatch):
  config, splits, vocab = oracle
  results, image_ids = _oracle_results(config, splits, vocab, max_images=12)
  coco_gt = coco_metrics.load_ground_truth(splits.val.annotations_path)
  kept = {a['id'] for a in coco_gt.dataset['annotations']
          if a['image_id'] in image_ids and not a['iscrowd']}
  assert len(results) == len(kept)  # one result per non-crowd object, no more
  metrics = coco_metrics.coco_metrics(coco_gt, results, image_ids, iou_type='segm')
  assert metrics['AP'] > 0.9 and metrics['AP50'] > 0.97, metrics
  for result in results:  # the prompt's box, back in pixels, is the object's box
    height, width = result['segmentation']['size']
    image = coco_gt.imgs[result['image_id']]
    assert (height, width) == (image['height'], image['width'])
  # A wrong pixel mapping (the padding taken for image: points read as fractions of the
  # canvas, not of the resized image on it) is caught.
  real = instances._geometry
  monkeypatch.setattr(instances, '_geometry', lambda size, original: dict(
      real(size, original), unpadded_hw=(size, size)))
  wrong, _ = _oracle_results(config, splits, vocab, max_images=12)
  assert coco_metrics.coco_metrics(coco_gt, wrong, image_ids,
                                   iou_type='segm')['AP'] < metrics['AP'] - 0.1


def test_ground_truth_boxes_come_back_in_pixels(oracle):
  config, splits, vocab = oracle
  results, image_ids = _oracle_results(config, splits, vocab, max_images=4)
  coco_gt = coco_metrics.load_ground_truth(splits.val.annotations_path)
  truth = sorted((a['image_id'], a['category_id'], *a['bbox'])
                 for a in coco_gt.dataset['annotations']
                 if a['image_id'] in image_ids and not a['iscrowd'])
  found = sorted((r['image_id'], r['category_id'], *r['bbox']) for r in results)
  assert [t[:2] for t in truth] == [f[:2] for f in found]
  # boxes quantised to 1000 bins of the canvas: within a bin of the image's longest side
  longest = {i: max(coco_gt.imgs[i]['height'], coco_gt.imgs[i]['width']) for i in image_ids}
  for t, f in zip(truth, found):
    np.testing.assert_allclose(f[2:], t[2:], atol=2 * longest[t[0]] / 999)


def test_evaluator_decodes_every_ground_truth_prompt(tmp_path):
  """A random vit_nano: the evaluator decodes, scores and writes its files; its results
  are the prompted objects (the first 2 of each image), with masks of the image's size."""
  config = _config(64, 2, 4)
  config.eval.max_images = 2
  config, splits, vocab = _setup(config)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  graphdef = build.model_graphdef(config, vocab)
  model = build.build_model(config, vocab, nnx.Rngs(0))
  tiny.likely_coordinates(model, vocab)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  evaluator = instance_evaluator.InstanceEvaluator(config, splits.val, splits.instances['val'],
                                                   vocab, graphdef, mesh)
  metrics = evaluator(params, batch_stats, 7, str(tmp_path))
  assert set(coco_metrics.metric_keys('segm')) <= set(metrics)
  assert 'val_loss' in metrics
  out = tmp_path / 'eval' / 'step_7'
  assert json.loads((out / 'metrics.json').read_text()) == pytest.approx(metrics)
  results = json.loads((out / 'segmentations.json').read_text())
  coco_gt = coco_metrics.load_ground_truth(splits.val.annotations_path)
  records = splits.val.records[:2]
  expected = sorted((r.image_id, int(splits.categories.category_ids[label]))
                    for r in records for label in r.labels[:2])
  assert sorted((r['image_id'], r['category_id']) for r in results) == expected
  areas = []
  for result in results:
    image = coco_gt.imgs[result['image_id']]
    assert result['segmentation']['size'] == [image['height'], image['width']]
    assert result['score'] == 1.0
    areas.append(float(mask_utils.area(dict(result['segmentation'], counts=result[
        'segmentation']['counts'].encode()))))
  assert max(areas) > 0  # sampled polygons of the likely points, not empty masks


def test_keypoint_target_sequences_score_as_the_annotations():
  """Keypoints: each person's eval example (its image cropped around the box) read back
  from its target sequence lands on the annotated points in the full image (OKS AP near
  1); the crop offset left out is caught."""
  config = _config(512, default.KEYPOINTS_MAX_INSTANCES, default.KEYPOINTS_MAX_POINTS)
  config.task = KEYPOINTS
  config.data.eos_weight = default.KEYPOINTS_EOS_WEIGHT
  config, splits, vocab = _setup(config)
  task = keypoints.KeypointTask(vocab)

  def results(batch_change=lambda batch: batch):
    found = []
    for batch in pipeline.eval_batches(splits.val, config.data, vocab, global_batch_size=8,
                                       max_images=20, task=config.task,
                                       targets=splits.instances['val']):
      response = batch['target_tokens'][..., task.prompt_length - 1:]  # [B, 1, 34]
      outputs = keypoints.KeypointOutputs(
          response, segmentation.tokens_to_points(response, vocab.num_bins,
                                                  vocab.coord_offset),
          np.ones(response.shape[:2], np.float32))
      found += instances.coco_results(outputs, batch['input_tokens'][..., :6],
                                      batch_change(batch), task, config.data.image_size)
    return found

  image_ids = [r.image_id for r in splits.val.records[:20]]
  coco_gt = coco_metrics.load_ground_truth(splits.val.annotations_path)
  persons = [a for a in coco_gt.dataset['annotations']
             if a['image_id'] in image_ids and not a['iscrowd']]
  found = results()
  assert len(found) == len(persons) > 10
  assert sum(a['num_keypoints'] > 0 for a in persons) >= 5
  metrics = coco_metrics.coco_metrics(coco_gt, found, image_ids, iou_type='keypoints')
  assert metrics['AP'] > 0.95, metrics
  shifted = results(lambda batch: dict(batch, crop_offset=np.zeros_like(batch['crop_offset'])))
  assert coco_metrics.coco_metrics(coco_gt, shifted, image_ids,
                                   iou_type='keypoints')['AP'] < metrics['AP'] - 0.3
