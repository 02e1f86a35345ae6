"""Reads COCO polygons and person keypoints into per-image arrays aligned with the boxes
of `coco_json.load_split` (pure Python and numpy).

`load_instance_targets(split)` reads `split.annotations_path` (an instances or a
person_keypoints file) again and, for every record, gives one row per box of the record,
in the record's order, in the representation `geometry.py` documents:

  polygons       float32 [N, 2 * max_points]: (y, x) points normalised to the image,
                 polygons parted by SEPARATOR (-2, -2), padded with PADDING (-1, -1);
  keypoints      float32 [N, 2 * 17]: (y, x) per COCO keypoint, not labelled (v = 0)
                 ones INVISIBLE (-3, -3); all PADDING where the object has no keypoints;
  num_keypoints  int32 [N]: COCO's count of labelled keypoints (0 without keypoints).

Objects are those `load_split` keeps, so crowd annotations (whose segmentation is an RLE)
are never segmentation targets, as in the official `create_coco_tfrecord` and
`coco.py`. What cannot be used is left out and counted in `dropped` ({reason: count}):
a polygon with fewer than 3 points, an odd number of coordinates or a value that is not
a finite number (`malformed_polygon`); an object left with no polygon
(`object_without_polygon`), or whose segmentation is an RLE although it is not crowd
(`rle_without_crowd`); keypoints that are not 17 finite (x, y, v) triples with v in
{0, 1, 2} (`malformed_keypoints`). `fixed` counts what was repaired: points outside the
image moved onto its border (`clipped_polygon_point`, `clipped_keypoint`), polygons cut at
`max_points` (`truncated_polygon`, as the official cuts them) and `num_keypoints` that
disagree with the triples (`recounted_keypoints`). `keep_objects` drops objects from the
records and their targets together (e.g. those without a polygon, or without keypoints,
as the official keypoint training does).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

from pix2seq_jax.data import coco_json

PADDING, SEPARATOR, INVISIBLE = -1.0, -2.0, -3.0  # as geometry.RESERVED (TF-free here)
NUM_KEYPOINTS = 17
DEFAULT_MAX_POINTS = 128


@dataclasses.dataclass
class InstanceTargets:
  """Per-record polygon and keypoint rows, aligned with each record's boxes."""

  polygons: list[np.ndarray]  # per record float32 [N, 2 * max_points]
  keypoints: list[np.ndarray]  # per record float32 [N, 2 * NUM_KEYPOINTS]
  num_keypoints: list[np.ndarray]  # per record int32 [N]
  dropped: dict[str, int]  # left out: {reason: count}
  fixed: dict[str, int]  # repaired: {fix: count}

  def has_polygon(self, index: int) -> np.ndarray:
    """bool [N]: the objects of record `index` with at least one polygon."""
    return self.polygons[index][:, 0] >= 0

  def has_keypoints(self, index: int) -> np.ndarray:
    """bool [N]: the objects of record `index` with at least one labelled keypoint."""
    return self.num_keypoints[index] > 0


def _finite_numbers(values) -> bool:
  return isinstance(values, list) and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
      for v in values)


def _polygon_row(segmentation, height: int, width: int, max_points: int,
                 counts: collections.Counter) -> np.ndarray:
  """One object's COCO polygons -> float32 [2 * max_points] (all PADDING if none)."""
  row = np.full([max_points, 2], PADDING, np.float32)
  if isinstance(segmentation, dict):
    counts['dropped', 'rle_without_crowd'] += 1
    return row.reshape(-1)
  parts = []
  for polygon in segmentation if isinstance(segmentation, list) else [None]:
    if not _finite_numbers(polygon) or len(polygon) % 2 or len(polygon) < 6:
      counts['dropped', 'malformed_polygon'] += 1
      continue
    xy = np.array(polygon, np.float64).reshape(-1, 2)
    clipped = np.clip(xy, 0.0, [width, height])
    counts['fixed', 'clipped_polygon_point'] += int(np.sum(np.any(clipped != xy, axis=1)))
    parts.append(np.stack([clipped[:, 1] / height, clipped[:, 0] / width], axis=1))
  if not parts:
    counts['dropped', 'object_without_polygon'] += 1
    return row.reshape(-1)
  separator = np.full([1, 2], SEPARATOR)
  points = np.concatenate([p for part in parts for p in (separator, part)][1:])
  if len(points) > max_points:
    counts['fixed', 'truncated_polygon'] += 1
    points = points[:max_points]
    if points[-1, 0] == SEPARATOR:
      points = points[:-1]
  row[:len(points)] = points
  return row.reshape(-1)


def _keypoint_row(ann: dict, height: int, width: int,
                  counts: collections.Counter) -> tuple[np.ndarray, int]:
  """One object's COCO keypoints -> (float32 [2 * 17], number labelled)."""
  row = np.full([NUM_KEYPOINTS, 2], PADDING, np.float32)
  values = ann.get('keypoints')
  if values is None or (values == [] and not ann.get('num_keypoints')):
    return row.reshape(-1), 0
  if (not _finite_numbers(values) or len(values) != 3 * NUM_KEYPOINTS
      or any(v not in (0, 1, 2) for v in values[2::3])):
    counts['dropped', 'malformed_keypoints'] += 1
    return row.reshape(-1), 0
  xyv = np.array(values, np.float64).reshape(NUM_KEYPOINTS, 3)
  labelled = xyv[:, 2] > 0
  clipped = np.clip(xyv[:, :2], 0.0, [width, height])
  counts['fixed', 'clipped_keypoint'] += int(np.sum(np.any(clipped != xyv[:, :2], axis=1)
                                                    & labelled))
  points = np.stack([clipped[:, 1] / height, clipped[:, 0] / width], axis=1)
  row[:] = np.where(labelled[:, None], points, INVISIBLE)
  count = int(labelled.sum())
  counts['fixed', 'recounted_keypoints'] += ann.get('num_keypoints', count) != count
  return row.reshape(-1), count


def load_instance_targets(split: coco_json.CocoSplit,
                          max_points: int = DEFAULT_MAX_POINTS) -> InstanceTargets:
  """Polygons and keypoints of `split.annotations_path`, row i of record r belonging to
  box i of `split.records[r]` (the annotations `coco_json.load_split` keeps, in its
  order). Raises `coco_json.AnnotationFileError` if the file no longer gives those boxes.
  """
  content = coco_json._read_json(split.annotations_path)  # the checks load_split made
  label_of = {cid: label for label, cid in enumerate(split.categories.category_ids)}
  images = {}
  for image in content['images']:
    images.setdefault(int(image['id']), (int(image['height']), int(image['width'])))
  counts = collections.Counter()
  rows = collections.defaultdict(list)
  for ann in content['annotations']:
    # The filter and box arithmetic of coco_json.load_split, to align with its records.
    image_id, category_id = int(ann['image_id']), int(ann['category_id'])
    if image_id not in images or category_id not in label_of:
      continue
    if ann.get('iscrowd', 0):
      counts['dropped', 'crowd'] += 1
      continue
    x, y, w, h = (float(v) for v in ann['bbox'])
    if not all(math.isfinite(v) for v in (x, y, w, h)):
      continue
    height, width = images[image_id]
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
      continue
    box = [y0 / height, x0 / width, y1 / height, x1 / width]
    polygon = _polygon_row(ann.get('segmentation'), height, width, max_points, counts)
    keypoints, num = _keypoint_row(ann, height, width, counts)
    rows[image_id].append((box, polygon, keypoints, num))

  polygons, keypoints, num_keypoints = [], [], []
  for record in split.records:
    objs = rows.get(record.image_id, [])
    boxes = np.array([o[0] for o in objs], np.float32).reshape(-1, 4)
    if boxes.shape != record.boxes.shape or not np.array_equal(boxes, record.boxes):
      raise coco_json.AnnotationFileError(
          f'{split.annotations_path}: image {record.image_id} has {len(record.boxes)} '
          f'boxes in the split but {len(boxes)} here; read the split and its instance '
          'targets from the same file (coco_json.load_split, then load_instance_targets).')
    polygons.append(np.array([o[1] for o in objs], np.float32).reshape(-1, 2 * max_points))
    keypoints.append(np.array([o[2] for o in objs], np.float32).reshape(-1, 2 * NUM_KEYPOINTS))
    num_keypoints.append(np.array([o[3] for o in objs], np.int32))
  pick = lambda kind: {reason: n for (k, reason), n in sorted(counts.items())
                       if k == kind and n}
  return InstanceTargets(polygons, keypoints, num_keypoints, pick('dropped'), pick('fixed'))


def keep_objects(split: coco_json.CocoSplit, targets: InstanceTargets,
                 keep: list[np.ndarray]) -> tuple[coco_json.CocoSplit, InstanceTargets]:
  """The split and its targets with only the objects `keep` (bool [N] per record) marks;
  the objects left out are added to `dropped` as `objects_without_targets`."""
  records, polygons, keypoints, num_keypoints = [], [], [], []
  left_out = 0
  for index, (record, mask) in enumerate(zip(split.records, keep)):
    mask = np.asarray(mask, bool)
    left_out += int(np.sum(~mask))
    records.append(dataclasses.replace(record, boxes=record.boxes[mask],
                                       labels=record.labels[mask]))
    polygons.append(targets.polygons[index][mask])
    keypoints.append(targets.keypoints[index][mask])
    num_keypoints.append(targets.num_keypoints[index][mask])
  dropped = dict(targets.dropped)
  if left_out:
    dropped['objects_without_targets'] = dropped.get('objects_without_targets', 0) + left_out
  return (dataclasses.replace(split, records=records),
          InstanceTargets(polygons, keypoints, num_keypoints, dropped, dict(targets.fixed)))
