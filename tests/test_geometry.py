"""Polygons and keypoints move by the same maps as the boxes (eagerly and inside tf.data),
and the COCO reader gives the polygons and keypoints of the JSON, aligned with the boxes."""

import json

import numpy as np
import pytest
import tensorflow as tf

from pix2seq_jax.data import coco_json, geometry, instance_annotations, transforms
from tests import tiny
from tests.tiny import shared_path

SEED = tf.constant([7, 11], tf.int64)
SEP, PAD, INV = geometry.SEPARATOR, geometry.PADDING, geometry.INVISIBLE
LEFT_EYE, RIGHT_EYE = (geometry.COCO_KEYPOINT_NAMES.index(n) for n in ('left_eye', 'right_eye'))


def _boxes(n, seed):
  """float32 [n, 4] random (ymin, xmin, ymax, xmax) in [0, 1]."""
  corners = np.sort(np.random.default_rng(seed).uniform(size=(n, 2, 2)), axis=1)
  return corners.transpose(0, 2, 1).reshape(n, 4)[:, [0, 2, 1, 3]].astype(np.float32)


def _corner_objects(boxes, seed):
  """Objects whose polygons are their boxes' corners (the 4 corners, a SEPARATOR, the
  top-left and bottom-right corners again, PADDING) and whose keypoints put the top-left
  corner on the left eye, the bottom-right one on the right eye, random points inside
  the box elsewhere, and a few INVISIBLE."""
  rng = np.random.default_rng(seed)
  n = len(boxes)
  y0, x0, y1, x1 = boxes.T
  sep, pad = np.full(n, SEP), np.full(n, PAD)
  corners = np.stack([np.stack(c, axis=1) for c in
                      ((y0, x0), (y0, x1), (y1, x1), (y1, x0), (sep, sep), (y0, x0), (y1, x1),
                       (pad, pad))], axis=1)
  inside = rng.uniform(size=(n, geometry.NUM_KEYPOINTS, 2))
  keypoints = np.stack([y0, x0], 1)[:, None] + inside * np.stack([y1 - y0, x1 - x0], 1)[:, None]
  keypoints[:, LEFT_EYE], keypoints[:, RIGHT_EYE] = np.stack([y0, x0], 1), np.stack([y1, x1], 1)
  keypoints[rng.uniform(size=(n, geometry.NUM_KEYPOINTS)) < 0.2] = INV
  return {'boxes': tf.constant(boxes), 'labels': tf.range(n),
          'polygons': tf.constant(corners.reshape(n, -1), tf.float32),
          'keypoints': tf.constant(keypoints.reshape(n, -1), tf.float32)}


OBJECTS = _corner_objects(_boxes(5, 0), 0)
POLYGONS, KEYPOINTS = OBJECTS['polygons'], OBJECTS['keypoints']
SHAPE, OFFSET, WINDOW = tf.constant([45, 75]), tf.constant([5, 20]), tf.constant([30, 40])

CASES = {
    'crop_polygons': (lambda p: geometry.crop_polygons(p, SHAPE, OFFSET, WINDOW), (POLYGONS,)),
    'crop_keypoints': (lambda k: geometry.crop_keypoints(k, SHAPE, OFFSET, WINDOW),
                       (KEYPOINTS,)),
    'mirror_polygons': (geometry.mirror_polygons, (POLYGONS,)),
    'mirror_keypoints': (geometry.mirror_keypoints, (KEYPOINTS,)),
    'canvas_points': (lambda p: geometry.canvas_points(p, [30, 50], 64), (POLYGONS,)),
    'is_real': (geometry.is_real, (KEYPOINTS,)),
    'flip_draw': (lambda: geometry.flip_draw(SEED), ()),
    'crop_objects': (lambda o: geometry.crop_objects(o, SHAPE, OFFSET, WINDOW), (OBJECTS,)),
    'mirror_objects': (lambda o: geometry.mirror_objects(o, tf.constant(True)), (OBJECTS,)),
    'random_mirror_objects': (lambda o: geometry.random_mirror_objects(
        o, tf.constant(transforms.IDENTITY_RESAMPLE), 30, SEED), (OBJECTS,)),
    'shuffle_objects': (lambda o: geometry.shuffle_objects(o, SEED), (OBJECTS,)),
    'canvas_objects': (lambda o: geometry.canvas_objects(o, [30, 50], 64), (OBJECTS,)),
    'crop_no_objects': (lambda o: geometry.crop_objects(o, SHAPE, OFFSET, WINDOW),
                        ({k: v[:0] for k, v in OBJECTS.items()},)),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_eager_equals_in_dataset(name):
  eager, in_dataset = tiny.eager_and_in_dataset(*CASES[name])
  tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(a.numpy(), b.numpy()),
                        eager, in_dataset)


def _fold(seed, op):
  seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(3, tf.int64)])
  return tf.random.experimental.stateless_fold_in(seed, op)


def _train_chain(objects, shape, size, seed):
  """The training path's draws (as `pipeline.preprocess`): the boxes and labels by the
  box transforms alone, and all fields by the geometry maps, for the same draws."""
  new_shape, _, offset, extent = transforms.scale_jitter_and_crop_draws(
      shape, size, _fold(seed, 1), _fold(seed, 2), 0.3, 2.0)
  boxes, labels = transforms.crop_boxes(objects['boxes'], objects['labels'], new_shape,
                                        offset, extent)
  resample = tf.constant(transforms.IDENTITY_RESAMPLE)
  boxes, box_resample = transforms.random_mirror(boxes, resample, extent[1], _fold(seed, 3))
  boxes, labels = transforms.shuffle_objects(boxes, labels, _fold(seed, 4))
  boxes = transforms.canvas_boxes(boxes, extent, size)
  moved = geometry.crop_objects(objects, new_shape, offset, extent)
  moved, resample = geometry.random_mirror_objects(moved, resample, extent[1], _fold(seed, 3))
  moved = geometry.shuffle_objects(moved, _fold(seed, 4))
  moved = geometry.canvas_objects(moved, extent, size)
  flipped = box_resample[1, 1] < 0
  return boxes, labels, box_resample, moved, resample, flipped, extent


def test_points_on_box_corners_move_as_the_box_corners():
  """For random boxes and draws (scale jitter, crop window, flip, shuffle, canvas), every
  polygon point on a box corner lands on the moved box's corner, the keypoints on its
  corners too where they stay inside the window and become INVISIBLE exactly where the
  corner left it (or lies on its border); markers stay where they were; eager and in
  tf.data agree."""
  size, shape, seeds = 40, tf.constant([53, 71]), 10
  objects = _corner_objects(_boxes(12, 1), 1)
  fn = lambda seed: _train_chain(objects, shape, size, seed)
  in_dataset = list(tf.data.Dataset.range(seeds).map(fn))
  flips = left = 0
  for seed in range(seeds):
    eager = fn(seed)
    tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(a.numpy(), b.numpy()),
                          eager, in_dataset[seed])
    boxes, labels, box_resample, moved, resample, flipped, extent = eager
    np.testing.assert_array_equal(moved['boxes'].numpy(), boxes.numpy())
    np.testing.assert_array_equal(moved['labels'].numpy(), labels.numpy())
    np.testing.assert_array_equal(resample.numpy(), box_resample.numpy())
    flips += bool(flipped)
    b = boxes.numpy()
    ymin, xmin, ymax, xmax = b.T
    polygons = moved['polygons'].numpy().reshape(len(b), -1, 2)
    want = np.stack([np.stack(c, 1) for c in ((ymin, xmin), (ymin, xmax), (ymax, xmax),
                                              (ymax, xmin))], axis=1)
    if flipped:  # x -> 1 - x reverses the corners' left and right
      want = want[:, [1, 0, 3, 2]]
    np.testing.assert_allclose(polygons[:, :4], want, rtol=0, atol=1e-7)
    np.testing.assert_allclose(polygons[:, 5:7], want[:, [0, 2]], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(polygons[:, 4], SEP)
    np.testing.assert_array_equal(polygons[:, 7:], PAD)
    # Left eye: top-left corner (bottom-left after a flip, the right eye's mirrored).
    keypoints = moved['keypoints'].numpy().reshape(len(b), -1, 2)
    canvas = extent.numpy().astype(np.float32) / np.float32(size)
    for index, corner in ((LEFT_EYE, b[:, [0, 1]] if not flipped else b[:, [2, 1]]),
                          (RIGHT_EYE, b[:, [2, 3]] if not flipped else b[:, [0, 3]])):
      source = RIGHT_EYE if flipped == (index == LEFT_EYE) else LEFT_EYE
      was_visible = (objects['keypoints'].numpy().reshape(-1, 17, 2)[labels.numpy(), source]
                     >= 0).all(1)
      on_border = np.any((corner <= 0) | (corner >= canvas), axis=1)
      visible = (keypoints[:, index] >= 0).all(1)
      left += int(np.sum(was_visible & on_border))
      np.testing.assert_array_equal(visible, was_visible & ~on_border)
      np.testing.assert_allclose(keypoints[visible, index], corner[visible], rtol=0, atol=1e-7)
      np.testing.assert_array_equal(keypoints[~visible, index], INV)
  assert 0 < flips < seeds and left > 0


def test_eval_canvas_matches_pad_to_canvas():
  image = tf.zeros([30, 50, 3])
  _, boxes = transforms.pad_to_canvas(image, OBJECTS['boxes'], 64)
  moved = geometry.canvas_objects(OBJECTS, tf.shape(image)[:2], 64)
  np.testing.assert_array_equal(moved['boxes'].numpy(), boxes.numpy())
  corners = moved['polygons'].numpy().reshape(5, -1, 2)[:, 0]
  np.testing.assert_allclose(corners, boxes.numpy()[:, :2], rtol=0, atol=1e-7)


def test_flip_twice_is_the_identity_and_swaps_left_and_right():
  once = geometry.mirror_keypoints(KEYPOINTS).numpy().reshape(5, 17, 2)
  before = KEYPOINTS.numpy().reshape(5, 17, 2)
  for i, name in enumerate(geometry.COCO_KEYPOINT_NAMES):
    j = geometry.COCO_KEYPOINT_NAMES.index(
        name.replace('left', 'RIGHT').replace('right', 'left').replace('RIGHT', 'right'))
    real = (before[:, j] >= 0).all(1)
    np.testing.assert_allclose(once[real, i], np.stack([before[real, j, 0],
                                                        1 - before[real, j, 1]], 1), atol=1e-7)
    np.testing.assert_array_equal(once[~real, i], before[~real, j])
  assert geometry.COCO_KEYPOINT_FLIP[0] == 0  # the nose stays
  for mirror, points in ((geometry.mirror_keypoints, KEYPOINTS),
                         (geometry.mirror_polygons, POLYGONS)):
    twice = mirror(mirror(points)).numpy()
    np.testing.assert_allclose(twice, points.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(twice < 0, points.numpy() < 0)


def test_flip_draw_is_the_box_transforms_draw():
  identity = tf.constant(transforms.IDENTITY_RESAMPLE)
  image = tf.constant([[[0.0], [1.0]]])
  for s in range(24):
    seed = tf.constant([s, 1], tf.int64)
    _, resample = transforms.random_mirror(OBJECTS['boxes'], identity, 2, seed)
    flipped_image, _ = transforms.random_horizontal_flip(image, OBJECTS['boxes'], seed)
    want = bool(geometry.flip_draw(seed))
    assert bool(resample[1, 1] < 0) == want == bool(flipped_image[0, 0, 0] == 1.0)


def test_keypoints_leaving_the_window_become_invisible_and_polygons_clip():
  """Window rows 10..29, columns 0..39 of a 40 x 40 image: inside stays (moved), outside
  or on the border becomes INVISIBLE (the official rule), markers are kept."""
  points = tf.constant([[0.5, 0.5, 0.1, 0.5, 0.25, 0.0, 0.9, 0.9, INV, INV, PAD, PAD]])
  shape, offset, window = [40, 40], [10, 0], [20, 40]
  keypoints = geometry.crop_keypoints(points, shape, offset, window).numpy()
  np.testing.assert_allclose(keypoints, [[0.5, 0.5, INV, INV, INV, INV, INV, INV, INV, INV,
                                          PAD, PAD]])
  polygons = geometry.crop_polygons(points, shape, offset, window).numpy()
  np.testing.assert_allclose(polygons, [[0.5, 0.5, 0.0, 0.5, 0.0, 0.0, 1.0, 0.9, INV, INV,
                                         PAD, PAD]])


def _coco_mini(name):
  return shared_path('coco_mini', 'annotations', name)


@pytest.mark.parametrize('name', ['instances_val2017.json', 'person_keypoints_train2017.json'])
def test_reader_gives_every_polygon_point_of_the_json(name):
  path = _coco_mini(name)
  split = coco_json.load_split(path, 'images')
  targets = instance_annotations.load_instance_targets(split, max_points=512)
  with open(path) as f:
    annotations = json.load(f)['annotations']
  plain = [a for a in annotations if not a['iscrowd']]
  assert targets.dropped.get('crowd', 0) == len(annotations) - len(plain) == split.dropped.get(
      'crowd', 0)
  assert 'truncated_polygon' not in targets.fixed and 'malformed_polygon' not in targets.dropped
  rows = np.concatenate(targets.polygons).reshape(-1, 512, 2)
  assert len(rows) == sum(len(r.boxes) for r in split.records) == len(plain)
  assert int((rows >= 0).all(-1).sum()) == sum(len(p) // 2 for a in plain
                                               for p in a['segmentation'])
  assert int((rows == SEP).all(-1).sum()) == sum(len(a['segmentation']) - 1 for a in plain)
  assert (rows <= 1).all()
  keypoints = np.concatenate(targets.keypoints).reshape(-1, 17, 2)
  labelled = sum(sum(v > 0 for v in a['keypoints'][2::3]) for a in plain if 'keypoints' in a)
  assert int((keypoints >= 0).all(-1).sum()) == labelled
  assert int(np.concatenate(targets.num_keypoints).sum()) == labelled


def test_real_targets_move_inside_tf_data():
  """coco_mini's polygons and keypoints, as ragged record tables, through the training
  maps inside tf.data: markers stay, real points stay in the canvas, keypoints only turn
  INVISIBLE, and the same objects as the boxes are kept."""
  split = coco_json.load_split(_coco_mini('person_keypoints_val2017.json'), 'images')
  targets = instance_annotations.load_instance_targets(split)
  counts = [len(r.boxes) for r in split.records]
  ragged = lambda rows, width: tf.RaggedTensor.from_row_lengths(
      np.concatenate(rows).reshape(-1, width), counts)
  tables = {'boxes': ragged([r.boxes for r in split.records], 4),
            'labels': ragged([np.arange(len(r.boxes)) for r in split.records], 1),
            'polygons': ragged(targets.polygons, 2 * instance_annotations.DEFAULT_MAX_POINTS),
            'keypoints': ragged(targets.keypoints, 34)}
  shapes = tf.constant([(r.height, r.width) for r in split.records])

  def example(index):
    objects = {name: table[index] for name, table in tables.items()}
    objects['labels'] = objects['labels'][:, 0]
    return objects, _train_chain(objects, shapes[index], 64, index)

  objects_seen = 0
  for before, chain in tf.data.Dataset.range(8).map(example):
    boxes, labels, _, moved, _, flipped, extent = chain
    kept = labels.numpy()
    objects_seen += len(kept)
    np.testing.assert_array_equal(moved['boxes'].numpy(), boxes.numpy())
    for name in ('polygons', 'keypoints'):
      old = before[name].numpy()[kept].reshape(len(kept), before[name].shape[-1] // 2, 2)
      new = moved[name].numpy().reshape(old.shape)
      if name == 'keypoints' and flipped:  # keypoint i holds its mirror's point or marker
        old = old[:, list(geometry.COCO_KEYPOINT_FLIP)]
      real, marker = (new >= 0).all(-1), (old < 0).all(-1)
      assert (new[real] <= extent.numpy() / 64 + 1e-6).all()
      np.testing.assert_array_equal(new[marker], old[marker])
      if name == 'polygons':
        np.testing.assert_array_equal(real, ~marker)
      else:
        assert (new[~marker & ~real] == INV).all()
  assert objects_seen > 0


def test_known_person_keypoints_round_trip():
  path = _coco_mini('person_keypoints_val2017.json')
  split = coco_json.load_split(path, 'images')
  targets = instance_annotations.load_instance_targets(split)
  with open(path) as f:
    content = json.load(f)
  ann = next(a for a in content['annotations'] if a['id'] == 200887)
  image = next(i for i in content['images'] if i['id'] == ann['image_id'])
  index = next(i for i, r in enumerate(split.records) if r.image_id == ann['image_id'])
  x, y, w, h = ann['bbox']
  box = np.array([y / image['height'], x / image['width'], (y + h) / image['height'],
                  (x + w) / image['width']], np.float32)
  row = int(np.flatnonzero((split.records[index].boxes == box).all(1))[0])
  got = targets.keypoints[index][row].reshape(17, 2)
  xyv = np.array(ann['keypoints']).reshape(17, 3)
  labelled = xyv[:, 2] > 0
  np.testing.assert_array_equal(got[~labelled], INV)
  pixels = got[labelled] * [image['height'], image['width']]
  np.testing.assert_allclose(pixels[:, ::-1], xyv[labelled, :2], rtol=0, atol=1e-4)
  assert targets.num_keypoints[index][row] == ann['num_keypoints'] == labelled.sum() == 13


def test_malformed_targets_are_dropped_and_counted(tmp_path):
  good = [10, 10, 30, 10, 30, 30]
  anns = [
      {'segmentation': [good, [1, 2, 3]], 'keypoints': [5, 5, 2] * 17},
      {'segmentation': [[1, 2, 'x', 4, 5, 6]], 'keypoints': [5, 5, 7] * 17},
      {'segmentation': {'counts': 'abc', 'size': [40, 40]}, 'keypoints': [5, 5] * 17},
      {'segmentation': [good, good], 'num_keypoints': 0, 'keypoints': [0, 0, 0] * 17},
      {'segmentation': [[-5, 10, 30, 10, 35, 30]]},
      {'segmentation': [good], 'iscrowd': 1},
  ]
  content = {'images': [{'id': 1, 'file_name': 'a.jpg', 'height': 40, 'width': 40}],
             'categories': [{'id': 1, 'name': 'person'}],
             'annotations': [dict(a, id=i, image_id=1, category_id=1, bbox=[5, 5, 20, 20],
                                  iscrowd=a.get('iscrowd', 0)) for i, a in enumerate(anns)]}
  path = tmp_path / 'instances.json'
  path.write_text(json.dumps(content))
  split = coco_json.load_split(str(path), str(tmp_path))
  targets = instance_annotations.load_instance_targets(split, max_points=6)
  assert targets.dropped == {'crowd': 1, 'malformed_polygon': 2, 'object_without_polygon': 1,
                             'rle_without_crowd': 1, 'malformed_keypoints': 2}
  assert targets.fixed == {'clipped_polygon_point': 1, 'truncated_polygon': 1}
  polygons = targets.polygons[0].reshape(5, 6, 2)
  np.testing.assert_allclose(polygons[0, :3], [[0.25, 0.25], [0.25, 0.75], [0.75, 0.75]])
  np.testing.assert_array_equal(polygons[0, 3:], PAD)
  np.testing.assert_array_equal(polygons[1:3], PAD)
  np.testing.assert_array_equal(polygons[3, 3], SEP)  # cut after the second's first 2 points
  np.testing.assert_allclose(polygons[4, 0], [0.25, 0.0])
  np.testing.assert_array_equal(targets.has_polygon(0), [True, False, False, True, True])
  np.testing.assert_array_equal(targets.num_keypoints[0], [17, 0, 0, 0, 0])
  np.testing.assert_array_equal(targets.keypoints[0][3], INV)
  np.testing.assert_array_equal(targets.keypoints[0][[1, 2, 4]], PAD)
  kept_split, kept = instance_annotations.keep_objects(
      split, targets, [targets.has_polygon(0)])
  assert len(kept_split.records[0].boxes) == len(kept.polygons[0]) == 3
  assert kept.dropped['objects_without_targets'] == 2
