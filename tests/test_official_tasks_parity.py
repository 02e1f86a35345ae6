"""Parity with the official Pix2Seq-v2 instance tasks (instance segmentation, keypoints).

The fixture tests/fixtures/official_tasks/ holds what the official code
(google-research/pix2seq) made from three real coco_mini images
(benchmarks/official_tasks_fixture.py; the command is in the fixture's README): its
in-graph tensors, sequences and token weights, and its post-processing of given token
sequences (polygons -> RLE masks, 8-sample ensembles, keypoints in original pixels).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as coco_mask

from pix2seq_jax.data import instance_sequences as iseq
from pix2seq_jax.tasks import keypoints as kp_task
from pix2seq_jax.tasks import segmentation as seg_task
from pix2seq_jax.tasks import vocab as vocab_lib
from tests.tiny import ROOT

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'official_tasks')
COCO_MINI = os.path.join(ROOT, '..', 'shared', 'data', 'coco_mini')


@pytest.fixture(scope='module')
def official():
  with open(os.path.join(FIXTURE, 'official.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def seg():
  return dict(np.load(os.path.join(FIXTURE, 'segmentation.npz')))


@pytest.fixture(scope='module')
def kp():
  return dict(np.load(os.path.join(FIXTURE, 'keypoints.npz')))


def test_constants_match_official(official):
  v, m = official['vocab'], official['model']
  assert (vocab_lib.PADDING, vocab_lib.OFFICIAL_SEPARATOR, vocab_lib.OFFICIAL_INVISIBLE,
          vocab_lib.OFFICIAL_CLASS_OFFSET) == (v['PADDING_TOKEN'], v['SEPARATOR_TOKEN'],
                                               v['INVISIBLE_TOKEN'], v['BASE_VOCAB_SHIFT'])
  assert (vocab_lib.POINT_PADDING, vocab_lib.POINT_SEPARATOR, vocab_lib.POINT_INVISIBLE) \
      == (v['PADDING_FLOAT'], v['SEPARATOR_FLOAT'], v['INVISIBLE_FLOAT'])
  assert (vocab_lib.OFFICIAL_COORD_OFFSET, vocab_lib.OFFICIAL_TEXT_OFFSET,
          vocab_lib.OFFICIAL_MULTITASK_SIZE) == (m['coord_vocab_shift'], m['text_vocab_shift'],
                                                 m['vocab_size'])
  ids = official['task_vocab_ids']
  assert vocab_lib.OFFICIAL_PROMPTS == {name: ids[name] for name in vocab_lib.OFFICIAL_PROMPTS}
  s, k = official['segmentation'], official['keypoints']
  assert (iseq.QUANTIZATION_BINS, iseq.SEGMENTATION_MAX_POINTS, iseq.SEGMENTATION_EOS_WEIGHT) \
      == (s['quantization_bins'], s['max_points_per_object'], s['eos_token_weight'])
  assert 5 + 2 * iseq.SEGMENTATION_MAX_POINTS == s['max_seq_len']
  assert (iseq.KEYPOINTS_MAX_POINTS, iseq.KEYPOINTS_EOS_WEIGHT,
          iseq.KEYPOINTS_INVISIBLE_WEIGHT) == (k['max_points_per_object'],
                                               k['eos_token_weight'],
                                               k['invisible_token_weight'])
  assert (seg_task.ENSEMBLE_NUM_SAMPLES, seg_task.ENSEMBLE_THRESHOLD) \
      == (s['ensemble_num_samples'], s['ensemble_threshold'])
  assert kp_task.POINTS_SCORE_WEIGHT == k['points_score_weight']


@pytest.mark.skipif(not os.path.isdir(COCO_MINI), reason='../shared/data/coco_mini absent')
def test_coco_json_representation_matches_official_extract(official, seg, kp):
  def load(name):
    with open(os.path.join(COCO_MINI, 'annotations', name)) as f:
      return json.load(f)
  ins, kps = load('instances_val2017.json'), load('person_keypoints_val2017.json')
  images = {i['id']: i for i in ins['images']}
  kp_by_id = {a['id']: a for a in kps['annotations']}
  polys, points = [], []
  for image_id in official['image_ids']:
    h, w = images[image_id]['height'], images[image_id]['width']
    anns = [a for a in ins['annotations'] if a['image_id'] == image_id and not a['iscrowd']]
    polys += [iseq.coco_polygon_points(a['segmentation'], h, w) for a in anns]
    # The official training extract keeps non-crowd persons with keypoints.
    people = [kp_by_id[a['id']] for a in anns if a['category_id'] == 1
              and a['id'] in kp_by_id and kp_by_id[a['id']]['num_keypoints'] > 0]
    points += [iseq.coco_keypoint_points(a['keypoints'], h, w) for a in people]
  np.testing.assert_array_equal(np.stack(polys), seg['extract_polygon'])
  np.testing.assert_array_equal(np.stack(points), kp['extract_keypoints'])


def _check(ours, official_arrays):
  for got, want in zip(ours, official_arrays):
    np.testing.assert_array_equal(np.asarray(got), want)


def test_segmentation_sequences_eager(seg):
  ours = iseq.build_segmentation_sequences(
      tf.constant(seg['bbox']), tf.constant(seg['label']), tf.constant(seg['polygon']))
  _check(ours, (seg['input_seq'], seg['target_seq'], seg['token_weights']))


def test_segmentation_sequences_in_dataset_map(seg):
  ds = tf.data.Dataset.from_tensor_slices((seg['bbox'], seg['label'], seg['polygon']))
  rows = list(ds.map(lambda b, lab, p: iseq.build_segmentation_sequences(b, lab, p)))
  _check([np.stack(part) for part in zip(*rows)],
         (seg['input_seq'], seg['target_seq'], seg['token_weights']))


def test_keypoint_sequences_eager_and_corrupted(kp):
  args = tf.constant(kp['bbox']), tf.constant(kp['label']), tf.constant(kp['keypoints'])
  _check(iseq.build_keypoint_sequences(*args),
         (kp['input_seq'], kp['target_seq'], kp['token_weights']))
  corrupted = iseq.build_keypoint_sequences(
      *args, ratio=tf.constant(kp['corruption_ratio']),
      noise=tf.constant(kp['corruption_noise']))
  _check(corrupted, (kp['input_seq_corrupted'], kp['target_seq'], kp['token_weights']))
  drawn, _, _ = iseq.build_keypoint_sequences(*args, corrupt=True)
  changed = np.asarray(drawn) != kp['input_seq']
  assert not changed[..., :iseq.PROMPT_LEN].any()
  assert (np.asarray(drawn)[changed] == vocab_lib.OFFICIAL_INVISIBLE).all()


def test_keypoint_sequences_in_dataset_map(kp):
  ds = tf.data.Dataset.from_tensor_slices(
      (kp['bbox'], kp['label'], kp['keypoints'], kp['corruption_noise']))
  ratio = float(kp['corruption_ratio'])
  rows = list(ds.map(lambda b, lab, p, n: iseq.build_keypoint_sequences(
      b, lab, p, ratio=ratio, noise=n)))
  _check([np.stack(part) for part in zip(*rows)],
         (kp['input_seq_corrupted'], kp['target_seq'], kp['token_weights']))


def test_planted_errors_are_caught(seg, monkeypatch):
  """The fixture tells a y/x swap and a wrong separator token apart."""
  swapped = seg['polygon'].reshape(3, 10, -1, 2)[..., ::-1].reshape(seg['polygon'].shape)
  _, target, _ = iseq.build_segmentation_sequences(
      tf.constant(seg['bbox']), tf.constant(seg['label']), tf.constant(swapped))
  assert not np.array_equal(np.asarray(target), seg['target_seq'])
  monkeypatch.setattr(iseq, '_FLOAT_TO_TOKEN', ((vocab_lib.POINT_PADDING, 0),
                                                 (vocab_lib.POINT_SEPARATOR, 39),
                                                 (vocab_lib.POINT_INVISIBLE, 41)))
  _, target, _ = iseq.build_segmentation_sequences(
      tf.constant(seg['bbox']), tf.constant(seg['label']), tf.constant(seg['polygon']))
  assert not np.array_equal(np.asarray(target), seg['target_seq'])


def _rle(d):
  return {'size': list(d['size']), 'counts': d['counts'].encode()}


def test_segmentation_masks_and_ensemble(official, seg):
  post = official['segmentation_post']
  pred = seg['pred_seq']  # [b, n, samples, 256]
  b, n, s, _ = pred.shape
  canvas = seg['image_size']
  masks, points = [], []
  for i in range(b):
    hw = seg['image_size_before_cropping'][i]
    for j in range(n):
      for k in range(s):
        rle, _ = seg_task.decode_instance_mask(
            pred[i, j, k], canvas, seg['unpadded_image_size'][i], seg['orig_image_size'][i],
            mask_hw=hw)
        want = post['sample_rles'][(i * n + j) * s + k]
        assert [int(v) for v in rle['size']] == want['size']
        assert rle['counts'].decode() == want['counts'], (i, j, k)
        masks.append(seg_task.rle_to_mask(rle, *hw))
        points.append(seg_task.rescale_points(
            seg_task.tokens_to_points(pred[i, j, k]), canvas, seg['unpadded_image_size'][i],
            seg['orig_image_size'][i]))
  np.testing.assert_array_equal(np.stack(points), seg['points_rescaled'])
  for got, want in zip(seg_task.ensemble_masks(masks, s), post['ensembled_rles']):
    np.testing.assert_array_equal(got.astype(np.uint8), coco_mask.decode(_rle(want)))
  first = [seg_task.split_polygons(p) for p in seg['points_rescaled'][::s]]
  assert first == post['polygons_first_sample']


def test_keypoint_decoding_and_scores(official, kp):
  post = official['keypoints_post']
  got = kp_task.decode_keypoints(
      kp['pred_seq'], kp['bbox'][:, 0], kp['image_size'], kp['unpadded_image_size'],
      kp['orig_image_size'], kp['crop_offset'])
  want = np.asarray(post['coco_keypoints'], np.float32).reshape(-1, 17, 3)
  np.testing.assert_array_equal(got, want)
  n, length = kp['pred_seq'].shape
  b = np.arange(n, dtype=np.float64)[:, None, None]
  t = np.arange(length, dtype=np.float64)[None, :, None]
  v = np.arange(official['model']['vocab_size'], dtype=np.float64)[None, None, :]
  logits = (3.0 * np.sin(0.37 * v + 1.3 * t + 2.1 * b)).astype(np.float32)
  scores = kp_task.keypoint_scores(kp['pred_seq'], logits, kp['box_scores'],
                                   kp['label'][:, 0])
  np.testing.assert_allclose(scores, kp['scores'], rtol=1e-5)
