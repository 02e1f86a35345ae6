"""Training keypoint detection (Pix2Seq-v2) on real COCO person keypoints (coco_mini): one
example per person, its image cropped to the person's padded box; the eval examples
against sequences built by hand from the annotation file, the crop against the official
code's (tests/fixtures/official_tasks), training batches and their input corruption, the
config refusals, and a few steps of the training loop's setup.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from pix2seq_jax.config import checks, default
from pix2seq_jax.data import (
  coco_json,
  instance_annotations,
  instance_sequences,
  pipeline,
  sources,
  transforms,
)
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import loop
from tests.tiny import ROOT, shared_path

TASK = 'keypoint_detection'
L = 5 + 2 * 17  # 39 tokens
STEPS = 4
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'official_tasks')


def _config(coco_dir: str) -> ml_collections.ConfigDict:
  """vit_nano on 64-px crops of coco_mini's persons (person_keypoints files)."""
  config = default.get_config()
  config.task = TASK
  data = config.data
  data.source, data.coco_dir = 'coco_files', coco_dir
  data.image_size, data.max_instances = 64, default.KEYPOINTS_MAX_INSTANCES
  data.max_points, data.eos_weight = default.KEYPOINTS_MAX_POINTS, default.KEYPOINTS_EOS_WEIGHT
  data.scale_max, data.random_flip = default.KEYPOINTS_SCALE_MAX, True
  data.noise_objects = data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'
  config.model.variant = 'vit_nano'
  config.model.dropout = config.model.drop_path = 0.0
  config.train.batch_size = config.eval.batch_size = 4
  config.train.steps, config.train.warmup_steps, config.train.learning_rate = STEPS, 0, 1e-3
  config.train.log_every = config.train.checkpoint_every = 1
  config.eval.max_images = 2
  return config


@pytest.fixture(scope='module')
def coco_mini():
  """(config, splits, vocab) of the test config on coco_mini."""
  config = _config(shared_path('coco_mini'))
  splits = sources.load_splits(config.data, TASK)
  vocab = vocab_lib.for_categories('official_multitask', splits.categories.category_ids, 1000)
  return config, splits, vocab


def _annotations(split: coco_json.CocoSplit) -> dict[int, list[dict]]:
  """{image id: its non-crowd person annotations, in file order}."""
  with open(split.annotations_path) as f:
    content = json.load(f)
  people = {}
  for ann in content['annotations']:
    if not ann.get('iscrowd', 0):
      people.setdefault(ann['image_id'], []).append(ann)
  return people


# --- config checks -----------------------------------------------------------------


@pytest.mark.parametrize('change, message', [
    (lambda c: setattr(c.data, 'max_instances', 2), '--config.data.max_instances=1'),
    (lambda c: setattr(c.data, 'max_points', 128),
     "config.data.max_points=128: a keypoint_detection response is COCO's 17"),
    (lambda c: c.data.update(source='shapes', coco_dir=''),
     "config.data.source='shapes' has no person keypoints"),
    (lambda c: setattr(c.model, 'vocabulary', 'official'),
     '--config.model.vocabulary=official_multitask'),
    (lambda c: setattr(c.data, 'noise_objects', True), '--config.data.noise_objects=False'),
    (lambda c: setattr(c.data, 'crop_pad', -0.5), 'config.data.crop_pad=-0.5 must be >= 0'),
    (lambda c: setattr(c.data, 'invisible_weight', -1.0),
     'config.data.invisible_weight=-1.0 must be >= 0'),
])
def test_config_checks_name_the_fix(coco_mini, change, message):
  config = _config(coco_mini[0].data.coco_dir)
  checks.validate(config, mode='train', devices=1)
  change(config)
  with pytest.raises(checks.ConfigError, match=re.escape(message)):
    checks.validate(config, mode='train', devices=1)


def test_config_checks_refuse_keypoint_fields_for_other_tasks(coco_mini):
  config = _config(coco_mini[0].data.coco_dir)
  checks.validate(config, mode='eval', devices=1)  # evaluated from ground-truth boxes
  with pytest.raises(checks.ConfigError, match="config.task='keypoint_detection' samples"):
    checks.validate(config, mode='eval', overrides=['decode.top_p'], devices=1)
  for field in ('crop_pad', 'invisible_weight', 'corrupt_keypoints'):
    with pytest.raises(checks.ConfigError, match=f'config.data.{field} is read only with'):
      checks.validate(default.get_config(), mode='summary', overrides=[f'data.{field}'])
  assert default.sequence_length(config) == L


def test_an_instances_file_is_refused_naming_it(coco_mini):
  config, splits, _ = coco_mini
  path = os.path.join(config.data.coco_dir, 'annotations', 'instances_val2017.json')
  split = coco_json.load_split(path, splits.val.images_dir)
  with pytest.raises(coco_json.AnnotationFileError,
                     match=re.escape(path) + '.*person_keypoints'):
    sources.with_keypoints(split, config.data, training=True)


# --- the persons and their crops ------------------------------------------------------


def test_examples_are_the_persons_the_official_keeps(coco_mini):
  """Training: non-crowd persons with a labelled keypoint (official data/coco.py);
  evaluation: every non-crowd person; each one example, in record then file order."""
  _, splits, _ = coco_mini
  for name, training in (('train', True), ('val', False)):
    split = getattr(splits, name)
    people = _annotations(split)
    want = [r.image_id for r in split.records for a in people.get(r.image_id, [])
            if a['num_keypoints'] > 0 or not training]
    ids = (pipeline.example_image_ids(split.records, TASK) if training
           else pipeline.eval_example_ids(split, TASK))
    np.testing.assert_array_equal(ids, want)
  assert pipeline.num_train_examples(splits.train, TASK) == 86
  assert pipeline.num_eval_examples(splits.val, TASK) == 117
  first_two = sum(len(r.labels) for r in splits.val.records[:2])
  assert pipeline.num_eval_examples(splits.val, TASK, max_images=2) == first_two


def _official_crop(box_xywh, height: int, width: int, pad: float):
  """The official crop_to_bbox arithmetic by hand: (offset (y, x), size (h, w))."""
  x, y, w, h = box_xywh
  box = np.array([max(y, 0) / height, max(x, 0) / width, min(y + h, height) / height,
                  min(x + w, width) / width], np.float32)
  last = np.array([height - 1, width - 1], np.float32)
  low = np.floor(box[:2] * last).astype(np.int64)
  high = np.ceil(box[2:] * last).astype(np.int64)
  padding = ((high - low + 1).astype(np.float32) * np.float32(pad)).astype(np.int64)
  low = np.maximum(low - padding, 0)
  high = np.minimum(high + padding, [height - 1, width - 1])
  return low, high - low + 1, box


def test_box_crop_region_eagerly_and_inside_tf_data():
  boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.9, 0.05, 0.99, 0.1]],
                   np.float32)
  shapes = np.array([[480, 640], [100, 50], [333, 517]], np.int32)
  want = []
  for box, (h, w) in zip(boxes, shapes):
    xywh = (box[1] * w, box[0] * h, (box[3] - box[1]) * w, (box[2] - box[0]) * h)
    want.append(_official_crop(xywh, h, w, 0.5)[:2])
  eager = [transforms.box_crop_region(tf.constant(b), tf.constant(s), 0.5)
           for b, s in zip(boxes, shapes)]
  ds = tf.data.Dataset.from_tensor_slices((boxes, shapes)).map(
      lambda b, s: transforms.box_crop_region(b, s, 0.5))
  for (offset, size), got_eager, got_ds in zip(want, eager, ds.as_numpy_iterator()):
    for got in (got_eager, got_ds):
      np.testing.assert_array_equal(got[0], offset)
      np.testing.assert_array_equal(got[1], size)
  np.testing.assert_array_equal(want[1][0], [0, 0])  # the whole image: nothing to pad
  np.testing.assert_array_equal(want[1][1], [100, 50])


def _expected_example(ann: dict, height: int, width: int, size: int, vocab):
  """The eval sequences of one person by hand from its annotation: the official crop,
  the keypoints moved into it (outside -> invisible), longest side resized to `size`."""
  offset, crop, box = _official_crop(ann['bbox'], height, width, 0.5)
  hw, shift, window = (np.asarray(v, np.float32) for v in ([height, width], offset, crop))
  extent = np.maximum(np.round(window * (np.float32(size) / window.max())), 1)
  ratio = extent / np.float32(size)  # window -> canvas
  bbox = np.clip((box.reshape(2, 2) * hw - shift) / window, 0, 1) * ratio  # [2, 2]
  xyv = np.array(ann['keypoints'], np.float64).reshape(-1, 3)  # COCO [17, (x, y, v)]
  yx = np.where(xyv[:, 2:] > 0, xyv[:, [1, 0]] / [height, width], -3.0).astype(np.float32)
  moved = (yx * hw - shift) / window
  outside = np.any((moved <= 0) | (moved >= 1), axis=1, keepdims=True)
  moved = np.where(yx >= 0, np.where(outside, np.float32(-3.0), moved * ratio), yx)
  inputs, targets, weights = instance_sequences.build_keypoint_sequences(
      tf.constant(bbox.reshape(1, 4), tf.float32), tf.constant([ann['category_id']]),
      tf.constant(moved.reshape(1, -1), tf.float32), prompt=vocab.prompt(TASK))
  return offset, crop, inputs.numpy(), targets.numpy(), weights.numpy()


def test_eval_examples_are_the_persons_sequences_built_from_the_json(coco_mini):
  config, splits, vocab = coco_mini
  size = config.data.image_size
  people = _annotations(splits.val)
  expected = [(r, a) for r in splits.val.records[:3] for a in people.get(r.image_id, [])]
  batches = pipeline.eval_batches(splits.val, config.data, vocab, global_batch_size=4,
                                  max_images=3, task=TASK, targets=splits.instances['val'])
  rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(4)]
  assert len(rows) == -(-len(expected) // 4) * 4 and not rows[-1]['mask']
  assert rows[0]['input_tokens'].shape == (1, L) and rows[0]['image'].shape == (size, size, 3)
  near = 0
  for row, (record, ann) in zip(rows, expected):
    offset, crop, inputs, targets, weights = _expected_example(
        ann, record.height, record.width, size, vocab)
    assert row['mask'] and row['image_id'] == record.image_id
    np.testing.assert_array_equal(row['crop_offset'], offset)
    np.testing.assert_array_equal(row['original_size'], crop)  # the crop, pre-resize
    assert row['scale'] == pytest.approx(size / crop.max())
    np.testing.assert_array_equal(row['loss_weights'], weights)
    np.testing.assert_array_equal(row['input_tokens'][:, :6], inputs[:, :6])  # GT prompt
    for got, want in ((row['input_tokens'], inputs), (row['target_tokens'], targets)):
      np.testing.assert_array_equal(got >= 1000, want >= 1000)  # 41s where expected
      assert np.abs(got.astype(np.int64) - want).max() <= 1  # float rounding at a bin edge
      near += int((got != want).sum())
  assert near == 0, near
  for row in rows[len(expected):]:
    assert not row['mask']


def test_the_crop_matches_the_official_code(coco_mini):
  """The official pipeline's crop_offset and cropped size (tests/fixtures/official_tasks:
  crop_to_bbox, then record_original_image_size) and its keypoints on the 640 canvas."""
  config, splits, vocab = coco_mini
  official = dict(np.load(os.path.join(FIXTURE, 'keypoints.npz')))
  with open(os.path.join(FIXTURE, 'official.json')) as f:
    facts = json.load(f)['keypoints']
  assert (facts['crop_to_bbox_pad_scale'], facts['unbatch'], facts['crop_to_bbox'],
          facts['max_instances_per_image']) == (default.KEYPOINTS_CROP_PAD, True, True,
                                                default.KEYPOINTS_MAX_INSTANCES)
  wanted = set(official['image_id'].tolist())
  index = [i for i, r in enumerate(splits.val.records) if r.image_id in wanted]
  targets = splits.instances['val']
  labelled = [targets.num_keypoints[i] > 0 for i in index]  # the official training's
  split, kept = instance_annotations.keep_objects(
      dataclasses.replace(splits.val, records=[splits.val.records[i] for i in index]),
      dataclasses.replace(targets, polygons=[targets.polygons[i] for i in index],
                          keypoints=[targets.keypoints[i] for i in index],
                          num_keypoints=[targets.num_keypoints[i] for i in index]),
      labelled)
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.image_size = int(official['image_size'][0])  # 640
  batch = next(pipeline.eval_batches(split, data, vocab, global_batch_size=4, task=TASK,
                                     targets=kept))
  assert batch['mask'].all()
  for row in range(4):  # match the official persons by crop offset
    match = np.flatnonzero((official['crop_offset'] == batch['crop_offset'][row]).all(1))
    assert len(match) == 1, (batch['crop_offset'][row], official['crop_offset'])
    j = match[0]
    assert batch['image_id'][row] == official['image_id'][j]
    np.testing.assert_array_equal(batch['original_size'][row], official['orig_image_size'][j])
    got, want = batch['target_tokens'][row], official['target_seq'][j].astype(np.int64)
    np.testing.assert_array_equal(got == 41, want == 41)
    # The official resize truncates the short side (int(side * 640 / long side)), ours
    # rounds it: the canvases differ by at most a pixel, the tokens by at most 2 bins.
    extent = np.round(batch['original_size'][row] * batch['scale'][row])
    assert np.abs(extent - official['unpadded_image_size'][j]).max() <= 1
    assert np.abs(got - want).max() <= 2
    np.testing.assert_array_equal(batch['loss_weights'][row], official['token_weights'][j])


# --- training batches -----------------------------------------------------------------


def _train_batches(coco_mini, corrupt: bool, start_step: int = 0):
  config, splits, vocab = coco_mini
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.corrupt_keypoints = corrupt
  return pipeline.train_batches(splits.train, data, vocab, seed=0, local_batch_size=4,
                                start_step=start_step, task=TASK,
                                targets=splits.instances['train'])


@pytest.fixture(scope='module')
def two_batches(coco_mini):
  """The first two training batches (input corruption on, as the official)."""
  stream = _train_batches(coco_mini, True)
  return next(stream), next(stream)


def test_train_batches_and_their_input_corruption(coco_mini, two_batches):
  corrupted, clean = two_batches[0], next(_train_batches(coco_mini, False))
  assert corrupted['input_tokens'].shape == (4, 1, L)
  assert corrupted['loss_weights'].shape == (4, 1, L) and 'crop_offset' not in corrupted
  np.testing.assert_array_equal(corrupted['input_tokens'][..., 0], 12)  # the prompt
  np.testing.assert_array_equal(corrupted['input_tokens'][..., 5], 101)  # person
  for key in ('image', 'target_tokens', 'loss_weights', 'resample', 'image_id'):
    np.testing.assert_array_equal(corrupted[key], clean[key], err_msg=key)
  changed = corrupted['input_tokens'] != clean['input_tokens']
  assert changed.any() and not changed[..., :6].any()  # only response input tokens ...
  np.testing.assert_array_equal(corrupted['input_tokens'][changed], 41)  # ... and only to 41
  np.testing.assert_array_equal(clean['input_tokens'][..., 1:], clean['target_tokens'][..., :-1])
  weights, targets = clean['loss_weights'][..., 5:], clean['target_tokens'][..., 5:]
  np.testing.assert_array_equal(weights, np.where(targets == 41, np.float32(0.1), 1.0))


def test_train_batches_resume_exactly_by_step(coco_mini, two_batches):
  resumed = next(_train_batches(coco_mini, True, start_step=1))
  for key, value in two_batches[1].items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)
  assert not np.array_equal(two_batches[0]['image_id'], two_batches[1]['image_id'])


# --- the training loop ----------------------------------------------------------------


def test_a_few_steps_over_the_persons_lower_the_loss(coco_mini):
  """loop.make_setup: one epoch is one pass over the 86 labelled persons (22 steps of 4);
  its steps on its batches lower the loss from about log(35000) at a constant 1e-2."""
  config = _config(coco_mini[0].data.coco_dir)
  config.train.steps, config.train.epochs = 0, 1.0
  config.train.learning_rate, config.train.end_lr_factor = 1e-2, 1.0
  setup = loop.make_setup(config, mesh=mesh_lib.make_mesh(jax.devices()[:1]))
  assert setup.config.train.steps == math.ceil(86 / 4)
  state = setup.create_state()
  batches = mesh_lib.placed_batches(setup.train_batches(), setup.mesh)
  losses = []
  for step in range(STEPS):
    state, metrics = setup.train_step(state, next(batches), step)
    losses.append(float(metrics['loss']))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.2, losses
