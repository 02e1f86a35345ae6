"""Training instance segmentation (Pix2Seq-v2) on real COCO polygons (coco_mini): the
config checks, the pipeline's [B, n, L] batches against `instance_sequences` built from
the annotation file, the model encoding each image once for its n sequences, the loss
going down, and exact resume of the data and of a run. (Segmentation batches on 1 and 4
devices: tests/test_multitask.py, whose step trains segmentation beside detection and
captioning.)

The config and the training steps live in tests/multi_device_run.py.
"""

from __future__ import annotations

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from pix2seq_jax.config import checks, default, resolve
from pix2seq_jax.data import instance_sequences, pipeline, sources, transforms
from pix2seq_jax.evaluation import coco_metrics
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import loop, optimizer
from pix2seq_jax.train import state as state_lib
from tests import multi_device_run
from tests.tiny import shared_path

TASK = multi_device_run.INSTANCE_TASK
STEPS = multi_device_run.INSTANCE_STEPS
_config = multi_device_run.instance_config  # (coco_dir) -> the test config
_losses = multi_device_run.instance_losses  # (config, vocab, batch, devices) -> losses


def _vocab(splits: sources.Splits) -> vocab_lib.Vocabulary:
  return vocab_lib.for_categories('official_multitask', splits.categories.category_ids, 1000)


@pytest.fixture(scope='module')
def coco_mini():
  """(config, splits, vocab) of the test config on coco_mini."""
  config = _config(shared_path('coco_mini'))
  splits = sources.load_splits(config.data, TASK)
  return config, splits, _vocab(splits)


def _train_batches(coco_mini, start_step=0):
  config, splits, vocab = coco_mini
  return pipeline.train_batches(splits.train, config.data, vocab, seed=0,
                                local_batch_size=2, start_step=start_step, task=TASK,
                                targets=splits.instances['train'])


@pytest.fixture(scope='module')
def train_batch(coco_mini):
  return next(_train_batches(coco_mini))


# --- config checks -----------------------------------------------------------------


@pytest.mark.parametrize('change, message', [
    (lambda c: setattr(c.model, 'vocabulary', 'official'),
     '--config.model.vocabulary=official_multitask'),
    (lambda c: setattr(c.data, 'noise_objects', True), '--config.data.noise_objects=False'),
    (lambda c: setattr(c.data, 'corrupt_classes', True),
     '--config.data.corrupt_classes=False'),
    (lambda c: setattr(c, 'task', 'panoptic_segmentation'),
     "config.task='panoptic_segmentation' is unknown"),
    (lambda c: setattr(c.data, 'max_points', 0), 'config.data.max_points=0 must be positive'),
    (lambda c: setattr(c.model, 'max_seq_len', 20),
     'shorter than the sequences of data.max_points=8 (21 tokens)'),
])
def test_config_checks_name_the_fix(coco_mini, change, message):
  config = _config(coco_mini[0].data.coco_dir)
  checks.validate(config, mode='train', devices=1)
  change(config)
  with pytest.raises(checks.ConfigError, match=re.escape(message)):
    checks.validate(config, mode='train', devices=1)


def test_config_checks_refuse_what_the_task_does_not_read(coco_mini):
  config = _config(coco_mini[0].data.coco_dir)
  checks.validate(config, mode='eval', devices=1)  # evaluated from ground-truth boxes
  for field in ('decode.top_p', 'decode.temperature', 'decode.mode'):  # detection's
    with pytest.raises(checks.ConfigError, match=re.escape(f'--config.{field}: the decode '
                                                           'settings are object detection')):
      checks.validate(config, mode='eval', overrides=[field], devices=1)
  with pytest.raises(checks.ConfigError, match='the decode settings are object detection'):
    checks.validate(config, mode='eval', overrides=['decode.canvas_buckets'], devices=1)
  detection = default.get_config()
  with pytest.raises(checks.ConfigError, match='data.max_points is read only with'):
    checks.validate(detection, mode='summary', overrides=['data.max_points'])
  assert default.sequence_length(config) == 21
  assert default.sequence_length(detection) == 501


# --- the data ------------------------------------------------------------------------


def test_splits_keep_objects_with_polygons_and_count_the_rest(coco_mini):
  _, splits, _ = coco_mini
  for name in ('train', 'val'):
    split, targets = getattr(splits, name), splits.instances[name]
    assert len(targets.polygons) == len(split.records)
    for record, polygons in zip(split.records, targets.polygons):
      assert polygons.shape == (len(record.labels), 16)
      assert (polygons[:, 0] >= 0).all()  # every object kept has a polygon
  assert all(len(r.labels) for r in splits.train.records)
  assert splits.train.fixed['segmentation_truncated_polygon'] > 0  # 8 points: cut, counted


def test_official_objects_pad_with_zero_objects_whose_tokens_are_padding():
  """geometry's objects (labels 0..C-1, PADDING-padded rows) -> the official layout."""
  polygons = np.full([1, 8], -1.0, np.float32)
  polygons[0, :6] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
  objects = {'boxes': tf.constant([[0.1, 0.2, 0.5, 0.6]]), 'labels': tf.constant([1]),
             'polygons': tf.constant(polygons)}
  bbox, label, points = instance_sequences.official_objects(objects, (1, 7), 3)
  np.testing.assert_array_equal(label.numpy(), [7, 0, 0])  # category ids, 0 = padding
  np.testing.assert_array_equal(bbox.numpy()[1:], 0.0)
  np.testing.assert_array_equal(points.numpy()[0], polygons[0])
  np.testing.assert_array_equal(points.numpy()[1:], 0.0)  # the official padding value
  inputs, targets, weights = instance_sequences.build_segmentation_sequences(
      bbox, label, points, max_points=4, eos_weight=1.0)
  np.testing.assert_array_equal(inputs.numpy()[0, :9],
                                [11, 1100, 1200, 1500, 1599, 107, 1100, 1200, 1300])
  np.testing.assert_array_equal(targets.numpy()[0, 8:], [1400, 1500, 1599, 0, 0])
  np.testing.assert_array_equal(weights.numpy()[0], [0] * 5 + [1] * 6 + [1.0] * 2)
  np.testing.assert_array_equal(inputs.numpy()[1:], 0)  # padding objects: all padding,
  np.testing.assert_array_equal(weights.numpy()[1:], 1.0)  # weighted as EOS (official)


def _expected_sequences(coco_mini, record, extent, size):
  """The official sequences of `record`, from its annotation file's polygons
  (`instance_sequences.coco_polygon_points`), as the eval pipeline should give them."""
  config, splits, vocab = coco_mini
  with open(splits.val.annotations_path) as f:
    content = json.load(f)
  anns = [a for a in content['annotations']
          if a['image_id'] == record.image_id and not a.get('iscrowd', 0)]
  n, max_points = config.data.max_instances, config.data.max_points
  ratio = np.tile(np.asarray(extent, np.float32) / size, max_points)
  bbox = np.zeros([n, 4], np.float32)
  label = np.zeros([n], np.int64)
  polygon = np.zeros([n, 2 * max_points], np.float32)
  for i, ann in enumerate(anns[:n]):
    points = instance_sequences.coco_polygon_points(ann['segmentation'], record.height,
                                                     record.width, max_points)
    polygon[i] = np.where(points >= 0, points * ratio, points)
    bbox[i] = record.boxes[i] * np.tile(np.asarray(extent, np.float32) / size, 2)
    label[i] = ann['category_id']
  return instance_sequences.build_segmentation_sequences(
      tf.constant(bbox), tf.constant(label), tf.constant(polygon), max_points=max_points,
      eos_weight=config.data.eos_weight)


def test_eval_batches_hold_the_official_sequences_of_the_annotation_file(coco_mini):
  config, splits, vocab = coco_mini
  size = config.data.image_size
  batch = next(pipeline.eval_batches(splits.val, config.data, vocab, global_batch_size=2,
                                     task=TASK, targets=splits.instances['val']))
  length = 5 + 2 * config.data.max_points
  assert batch['input_tokens'].shape == (2, 2, length)
  assert batch['loss_weights'].shape == (2, 2, length) and batch['image'].shape[0] == 2
  for row, record in enumerate(splits.val.records[:2]):
    assert batch['image_id'][row] == record.image_id
    extent, _ = transforms.longest_side_shape(tf.constant([record.height, record.width]),
                                              size)
    inputs, targets, weights = _expected_sequences(coco_mini, record, extent.numpy(), size)
    np.testing.assert_array_equal(batch['input_tokens'][row], inputs.numpy())
    np.testing.assert_array_equal(batch['target_tokens'][row], targets.numpy())
    np.testing.assert_array_equal(batch['loss_weights'][row], weights.numpy())


def test_train_batches_resume_exactly_by_step(coco_mini):
  first = [b for _, b in zip(range(3), _train_batches(coco_mini))]
  resumed = next(_train_batches(coco_mini, start_step=2))
  assert first[0]['input_tokens'].shape == (2, 2, 21)
  assert first[0]['input_tokens'][:, :, 0].max() == 11  # the segmentation prompt
  for key, value in first[2].items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)


# --- the model and the step ----------------------------------------------------------


def _frozen(coco_mini):
  return resolve.resolve(coco_mini[0])


def test_each_image_is_encoded_once_for_its_sequences(coco_mini, train_batch):
  """[B, n, L] tokens give the logits of each image repeated n times with [B*n, L]."""
  config, _, vocab = coco_mini
  config = _frozen(coco_mini)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  state = state_lib.create_train_state(config, vocab, mesh, optimizer.make_optimizer(config))
  graphdef = build.model_graphdef(config, vocab)
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 64, 64, 3)), jnp.float32)
  tokens = jnp.asarray(train_batch['input_tokens'])  # [2, 2, 21]

  @jax.jit
  def both(params, batch_stats):
    model = nnx.merge(graphdef, params, batch_stats)
    return (model(images, tokens, train=False),  # [2, 2, 21, V]
            model(jnp.repeat(images, 2, axis=0), tokens.reshape(4, 21), train=False))

  logits, repeated = both(state.params, state.batch_stats)
  assert logits.shape == (2, 2, 21, vocab.size)
  np.testing.assert_allclose(logits.reshape(4, 21, -1), repeated, atol=1e-5)


@pytest.fixture(scope='module')
def one_device_losses(coco_mini, train_batch):
  config, _, vocab = coco_mini
  return _losses(config, vocab, train_batch, 1)


def test_training_steps_lower_the_loss(one_device_losses):
  assert all(np.isfinite(one_device_losses))
  assert one_device_losses[-1] < one_device_losses[0] - 0.1, one_device_losses


def test_a_run_resumed_from_its_checkpoint_logs_the_same_losses(coco_mini, one_device_losses,
                                                                tmp_path):
  """train_and_evaluate: STEPS steps straight, then the same run resumed from step
  STEPS - 2 (its last two checkpoints removed); its evaluation writes the COCO segm
  metrics of the decoded masks and the teacher-forced val loss, the same in both, and its
  first step trains on the pipeline's first batch."""
  config = _config(coco_mini[0].data.coco_dir)
  config.eval.max_images = 1  # its 2 objects decoded 8 times each
  straight_dir, resumed_dir = tmp_path / 'straight', tmp_path / 'resumed'
  straight = loop.train_and_evaluate(config, str(straight_dir))
  shutil.copytree(straight_dir, resumed_dir)
  for step in (STEPS - 1, STEPS):
    shutil.rmtree(resumed_dir / 'checkpoints' / str(step))
  resumed = loop.train_and_evaluate(config, str(resumed_dir))
  assert set(straight) == {*coco_metrics.metric_keys('segm'), 'val_loss', 'val_perplexity',
                           'val_perplexity_coord'}
  assert resumed == straight

  def logged(workdir):  # {step: loss}, a step logged again keeping its later value
    with open(workdir / 'metrics.jsonl') as f:
      return {m['step']: m['loss'] for m in map(json.loads, f) if 'loss' in m}
  assert logged(resumed_dir) == logged(straight_dir)
  assert sorted(logged(straight_dir)) == list(range(1, STEPS + 1))
  assert logged(straight_dir)[1] == pytest.approx(one_device_losses[0], rel=1e-6)
  with open(straight_dir / 'data_report.json') as f:
    assert 'segmentation_truncated_polygon' in json.load(f)['train']['fixed']
