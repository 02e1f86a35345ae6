"""Polygon and keypoint maps that move with the box transforms (pure TensorFlow, tf.data).

Representation (the in-graph form of Pix2Seq-v2's instance targets; `instance_annotations`
reads COCO files into it, row i belonging to box i of the record):

  polygons   float32 [N, 2 * P]: per object a flat list of points (y0, x0, y1, x1, ...),
             y and x normalised to the image (pixel y / height, x / width) and later to
             the crop window or the canvas, as the boxes are. An object's COCO polygons
             follow one another in COCO's order, each pair of polygons parted by one
             SEPARATOR point (-2, -2); the row is padded with PADDING points (-1, -1) to
             P points. A row of PADDING only is an object without a polygon.
  keypoints  float32 [N, 2 * K]: per object K = 17 (y, x) points in COCO's order
             (`COCO_KEYPOINT_NAMES`), normalised as above. A keypoint COCO marks as not
             labelled (v = 0) is an INVISIBLE point (-3, -3); v = 1 (labelled, occluded)
             and v = 2 keep their coordinates (the flag itself is not kept). A row of
             PADDING only is an object without a keypoint annotation.

Reserved values are negative and both coordinates of a reserved point hold the same value;
real coordinates lie in [0, 1]. Every map here moves real points only and leaves the
reserved ones where they are (the official pipeline moves them too and puts them back
afterwards from a copy, `preserve_reserved_tokens`; after a flip that swaps keypoints
that copy no longer lines up, which is why the official keypoint config leaves the flip
out; here the markers travel with their keypoints).

The maps are those of the box transforms (`transforms.py`) for the same draws:
  scale jitter     normalised points are unchanged (as boxes are);
  crop window      (p * resized shape - offset) / window, as `transforms.crop_boxes`;
                   polygon points are clipped to the window ([0, 1]); a keypoint with y
                   or x outside the open interval (0, 1) becomes INVISIBLE (the official
                   `data_utils.handle_out_of_frame_points`);
  horizontal flip  x -> 1 - x, as the boxes; keypoints also swap COCO's left/right pairs
                   (`COCO_KEYPOINT_FLIP`), so flipping twice is the identity;
  canvas           p * extent / size, as `transforms.canvas_boxes` (and `pad_to_canvas`).

`crop_objects`, `random_mirror_objects`, `shuffle_objects` and `canvas_objects` move a
dict of per-object fields (`boxes` [N, 4], `labels` [N], optional `polygons`,
`keypoints` and any other [N, ...] field) together: the boxes go through the box
transforms themselves, the objects those drop are dropped from every field.
"""

from __future__ import annotations

import tensorflow as tf

from pix2seq_jax.data import transforms
from pix2seq_jax.tasks import vocab as vocab_lib

PADDING = vocab_lib.POINT_PADDING  # fills a row after its last point
SEPARATOR = vocab_lib.POINT_SEPARATOR  # parts two polygons of one object
INVISIBLE = vocab_lib.POINT_INVISIBLE  # a keypoint not labelled, or moved out of the crop
RESERVED = (PADDING, SEPARATOR, INVISIBLE)

COCO_KEYPOINT_NAMES = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder',
    'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip',
    'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle')
NUM_KEYPOINTS = len(COCO_KEYPOINT_NAMES)


def _mirror_name(name: str) -> str:
  for a, b in (('left_', 'right_'), ('right_', 'left_')):
    if name.startswith(a):
      return b + name[len(a):]
  return name


# Keypoint i of a flipped person is keypoint COCO_KEYPOINT_FLIP[i] of the person before.
COCO_KEYPOINT_FLIP = tuple(COCO_KEYPOINT_NAMES.index(_mirror_name(n))
                           for n in COCO_KEYPOINT_NAMES)


def _pairs(points: tf.Tensor) -> tf.Tensor:
  """[N, 2K] -> [N, K, 2] (also for N = 0)."""
  shape = tf.shape(points)
  pairs = tf.reshape(points, tf.stack([shape[0], shape[1] // 2, 2]))
  width = points.shape[-1]
  pairs.set_shape([points.shape[0], None if width is None else width // 2, 2])
  return pairs


def _flat(pairs: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
  """[N, K, 2] -> [N, 2K] with the static shape of `like`."""
  flat = tf.reshape(pairs, tf.shape(like))
  flat.set_shape(like.shape)
  return flat


def is_real(points: tf.Tensor) -> tf.Tensor:
  """bool [N, K]: which points of flat `points` [N, 2K] are real (not reserved)."""
  return tf.reduce_all(_pairs(points) >= 0.0, axis=-1)


def _move_real(points: tf.Tensor, move) -> tf.Tensor:
  """Applies `move` ([N, K, 2] -> [N, K, 2]) to the real points of `points` [N, 2K]."""
  pairs = _pairs(points)
  real = tf.reduce_all(pairs >= 0.0, axis=-1, keepdims=True)  # [N, K, 1]
  return _flat(tf.where(real, move(pairs), pairs), points)


def _to_window(pairs: tf.Tensor, shape: tf.Tensor, offset: tf.Tensor,
               window: tf.Tensor) -> tf.Tensor:
  """Points normalised to `shape` -> to the window (the arithmetic of `crop_boxes`)."""
  shape_f, offset_f, window_f = (tf.cast(t, tf.float32) for t in (shape, offset, window))
  return (pairs * shape_f - offset_f) / window_f


def crop_polygons(polygons: tf.Tensor, shape: tf.Tensor, offset: tf.Tensor,
                  window: tf.Tensor) -> tf.Tensor:
  """Polygons [N, 2P] normalised to an image of `shape` (h, w) -> to the window at
  `offset` of size `window` (int32 [2] each), real points clipped to [0, 1]."""
  return _move_real(polygons, lambda p: tf.clip_by_value(
      _to_window(p, shape, offset, window), 0.0, 1.0))


def crop_keypoints(keypoints: tf.Tensor, shape: tf.Tensor, offset: tf.Tensor,
                   window: tf.Tensor) -> tf.Tensor:
  """Keypoints [N, 2K] as `crop_polygons` moves polygons; a keypoint with y or x outside
  (0, 1) in the window becomes INVISIBLE (as the official `handle_out_of_frame_points`)."""
  def move(pairs):
    moved = _to_window(pairs, shape, offset, window)
    outside = tf.reduce_any((moved <= 0.0) | (moved >= 1.0), axis=-1, keepdims=True)
    return tf.where(outside, tf.constant(INVISIBLE, tf.float32), moved)

  return _move_real(keypoints, move)


def mirror_polygons(polygons: tf.Tensor) -> tf.Tensor:
  """Polygons [N, 2P] flipped left-right: x -> 1 - x (official `flip_polygons_left_right`)."""
  return _move_real(polygons, lambda p: tf.stack([p[..., 0], 1.0 - p[..., 1]], axis=-1))


def mirror_keypoints(keypoints: tf.Tensor) -> tf.Tensor:
  """Keypoints [N, 2 * 17] flipped left-right: x -> 1 - x and each left keypoint swapped
  with its right one (official `flip_keypoints_left_right`); markers move with the swap."""
  flipped = _pairs(mirror_polygons(keypoints))
  return _flat(tf.gather(flipped, COCO_KEYPOINT_FLIP, axis=1), keypoints)


def canvas_points(points: tf.Tensor, extent: tf.Tensor, size: int) -> tf.Tensor:
  """Points [N, 2K] normalised to an image of `extent` (h, w) -> to the size x size
  canvas it is placed on, top-left (as `transforms.canvas_boxes`)."""
  ratio = tf.cast(extent, tf.float32) / size  # (h, w) / size
  return _move_real(points, lambda p: p * ratio)


_POINT_MAPS = {'polygons': (crop_polygons, mirror_polygons),
               'keypoints': (crop_keypoints, mirror_keypoints)}


def crop_objects(objects: dict[str, tf.Tensor], shape: tf.Tensor, offset: tf.Tensor,
                 window: tf.Tensor) -> dict[str, tf.Tensor]:
  """`transforms.crop_boxes` of objects['boxes'] [N, 4]: the objects it drops (no area
  left in the window) are dropped from every field; polygons and keypoints are cropped.

  `shape` is the resized image's (h, w), `offset` and `window` the crop's (int32 [2]),
  as `transforms.scale_jitter_and_crop_draws` returns them.
  """
  boxes = objects['boxes']
  moved, kept = transforms.crop_boxes(boxes, tf.range(tf.shape(boxes)[0]), shape, offset,
                                      window)  # kept: int32 [M], the kept objects' indices
  out = {}
  for name, value in objects.items():
    if name == 'boxes':
      out[name] = moved
      continue
    value = tf.gather(value, kept)
    if name in _POINT_MAPS:
      value = _POINT_MAPS[name][0](value, shape, offset, window)
    out[name] = value
  return out


def mirror_objects(objects: dict[str, tf.Tensor], flip: tf.Tensor) -> dict[str, tf.Tensor]:
  """Flips the boxes, polygons and keypoints of `objects` left-right where `flip` (bool
  []) holds; other fields are unchanged."""
  # random_mirror with probability 1 always flips (its draw is in [0, 1)): the box flip.
  mirrored = transforms.random_mirror(
      objects['boxes'], tf.constant(transforms.IDENTITY_RESAMPLE), 1,
      tf.zeros([2], tf.int64), probability=1.0)[0]
  out = _mirror_points(objects, flip)
  out['boxes'] = tf.where(flip, mirrored, objects['boxes'])
  return out


def _mirror_points(objects: dict[str, tf.Tensor], flip: tf.Tensor) -> dict[str, tf.Tensor]:
  """`objects` with its polygons and keypoints flipped left-right where `flip` holds."""
  out = dict(objects)
  for name, (_, mirror) in _POINT_MAPS.items():
    if name in objects:
      out[name] = tf.cond(flip, lambda v=objects[name], m=mirror: m(v),
                          lambda v=objects[name]: v)
  return out


def flip_draw(seed: tf.Tensor, probability: float = 0.5) -> tf.Tensor:
  """bool []: whether `transforms.random_mirror` / `random_horizontal_flip` flip for
  `seed` [2] (the same draw; tests/test_geometry.py checks they agree)."""
  return tf.random.stateless_uniform([], seed=seed) < probability


def random_mirror_objects(objects: dict[str, tf.Tensor], resample: tf.Tensor,
                          width: tf.Tensor, seed: tf.Tensor,
                          probability: float = 0.5) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
  """`transforms.random_mirror` (the same draw) of the objects: boxes, polygons and
  keypoints flipped together, and the columns' resample [2, 2] run backwards."""
  boxes, resample = transforms.random_mirror(objects['boxes'], resample, width, seed,
                                             probability)
  out = _mirror_points(objects, flip_draw(seed, probability))
  out['boxes'] = boxes
  return out, resample


def shuffle_objects(objects: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
  """Every field in the order `transforms.shuffle_objects` puts boxes and labels in."""
  boxes = objects['boxes']
  _, order = transforms.shuffle_objects(boxes, tf.range(tf.shape(boxes)[0]), seed)
  return {name: tf.gather(value, order) for name, value in objects.items()}


def canvas_objects(objects: dict[str, tf.Tensor], extent: tf.Tensor,
                   size: int) -> dict[str, tf.Tensor]:
  """Boxes, polygons and keypoints normalised to an image of `extent` (h, w) -> to the
  size x size canvas (`transforms.canvas_boxes`); other fields unchanged."""
  out = dict(objects)
  out['boxes'] = transforms.canvas_boxes(objects['boxes'], extent, size)
  for name in _POINT_MAPS:
    if name in objects:
      out[name] = canvas_points(objects[name], extent, size)
  return out
