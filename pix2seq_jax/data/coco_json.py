"""Reads a COCO-format instances file into per-image records (pure Python and numpy).

Category ids (COCO's are 1..90 with gaps) map to contiguous labels 0..C-1 in the
order of their ids; `CategoryMap` maps them back for evaluation. Crowd boxes and
boxes with no area after clipping to the image are left out of the targets;
images without annotations are kept. Counts of what was left out (`dropped`) and
fixed (`fixed`: boxes clipped to the image) come with the split.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os

import numpy as np


class AnnotationFileError(ValueError):
  """An instances file that cannot be used; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class CategoryMap:
  """Contiguous labels <-> the annotation file's category ids and names."""

  category_ids: tuple[int, ...]  # indexed by label
  names: tuple[str, ...]  # indexed by label

  @property
  def num_classes(self) -> int:
    return len(self.category_ids)

  def label_of(self, category_id: int) -> int:
    return self.category_ids.index(category_id)

  def to_json(self) -> list[dict]:
    return [{'id': i, 'name': n} for i, n in zip(self.category_ids, self.names)]

  @classmethod
  def from_categories(cls, categories: list[dict]) -> 'CategoryMap':
    ordered = sorted(categories, key=lambda c: c['id'])
    return cls(tuple(int(c['id']) for c in ordered),
               tuple(str(c.get('name', c['id'])) for c in ordered))

  @classmethod
  def from_file(cls, path: str) -> 'CategoryMap':
    """A workdir's categories.json ([{id, name}, ...]) or an instances file's categories."""
    with open(path) as f:
      content = json.load(f)
    return cls.from_categories(content['categories'] if isinstance(content, dict) else content)


@dataclasses.dataclass
class ImageRecord:
  """One image and its target objects; boxes are (ymin, xmin, ymax, xmax) in [0, 1] of the image."""

  image_id: int
  path: str
  height: int
  width: int
  boxes: np.ndarray  # [N, 4] float32
  labels: np.ndarray  # [N] int32
  orientation: int = 1  # EXIF orientation the pipeline applies to the pixels (image_check.py)


@dataclasses.dataclass
class CocoSplit:
  """A split read from an instances file, with counts of what was left out."""

  annotations_path: str
  images_dir: str
  records: list[ImageRecord]
  categories: CategoryMap
  dropped: dict[str, int]  # left out: {reason: count}
  fixed: dict[str, int] = dataclasses.field(default_factory=dict)  # {fix: count}
  skipped_images: list[tuple[str, str, str]] = dataclasses.field(
      default_factory=list)  # unreadable files: (path, problem, detail)


INSTANCES_KEYS = ('images', 'annotations', 'categories')
CAPTIONS_KEYS = ('images', 'annotations')


def _read_json(path: str, keys: tuple[str, ...] = INSTANCES_KEYS) -> dict:
  """The JSON object of an annotation file, refused unless it holds the `keys` lists."""
  if not os.path.isfile(path):
    raise AnnotationFileError(
        f'{path}: annotation file not found. Point data.train_annotations / '
        'data.val_annotations (or data.coco_dir) at an existing COCO instances JSON.')
  try:
    with open(path) as f:
      content = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AnnotationFileError(
        f'{path}: not valid JSON ({e}). Re-export or re-download the file.') from e
  if not isinstance(content, dict):
    raise AnnotationFileError(f'{path}: expected a JSON object at the top level, got '
                              f'{type(content).__name__}.')
  missing = [k for k in keys if k not in content]
  if missing:
    kind = 'instances' if 'categories' in keys else 'captions'
    raise AnnotationFileError(
        f'{path}: missing top-level key(s) {missing}; a COCO {kind} file has '
        f'{" and ".join(repr(k) for k in keys)} lists.')
  for key in keys:
    if not isinstance(content[key], list):
      raise AnnotationFileError(f'{path}: "{key}" must be a list, got '
                                f'{type(content[key]).__name__}.')
  return content


def _read_images(content: dict, path: str, dropped: collections.Counter
                 ) -> dict[int, tuple[str, int, int]]:
  """{image id: (file name, height, width)} of a COCO file's "images"; a malformed image
  is refused naming it, a repeated id counted in `dropped`."""
  images = {}
  for index, image in enumerate(content['images']):
    try:
      image_id, file_name = int(image['id']), image['file_name']
      height, width = int(image['height']), int(image['width'])
    except (KeyError, TypeError, ValueError) as e:
      raise AnnotationFileError(
          f'{path}: images[{index}] lacks a valid id, file_name, height or '
          f'width ({e!r}).') from e
    if height <= 0 or width <= 0:
      raise AnnotationFileError(
          f'{path}: images[{index}] (id {image_id}, {file_name}) has height '
          f'{height} and width {width}; both must be positive. Fix the record or remove it.')
    if image_id in images:
      dropped['duplicate_image_id'] += 1
      continue
    images[image_id] = (file_name, height, width)
  return images


def load_images(annotations_path: str, images_dir: str,
                categories: CategoryMap | None = None) -> CocoSplit:
  """A split of the images a COCO captions file lists (records without objects); the
  captions themselves are read by `data/captions.py`. `categories` (default: none) label
  the split as `load_split`'s do."""
  content = _read_json(annotations_path, CAPTIONS_KEYS)
  dropped = collections.Counter()
  images = _read_images(content, annotations_path, dropped)
  records = [ImageRecord(image_id=image_id, path=os.path.join(images_dir, file_name),
                         height=height, width=width, boxes=np.zeros([0, 4], np.float32),
                         labels=np.zeros([0], np.int32))
             for image_id, (file_name, height, width) in images.items()]
  return CocoSplit(annotations_path, images_dir, records,
                   categories or CategoryMap.from_categories([]), dict(dropped))


def _category_map(path: str, categories: list) -> CategoryMap:
  if not categories:
    raise AnnotationFileError(f'{path}: "categories" is empty; at least one '
                              'category is needed to train a detector.')
  for index, category in enumerate(categories):
    if not isinstance(category, dict) or not isinstance(category.get('id'), int):
      raise AnnotationFileError(f'{path}: categories[{index}] needs an integer "id" '
                                f'(got {category!r}).')
  ids = [c['id'] for c in categories]
  if len(set(ids)) != len(ids):
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    raise AnnotationFileError(f'{path}: category id(s) {duplicated} appear more than once in '
                              '"categories"; each id must name one category.')
  return CategoryMap.from_categories(categories)


def load_split(annotations_path: str, images_dir: str,
               categories: CategoryMap | None = None) -> CocoSplit:
  """Reads an instances file; `categories` (e.g. the train split's) fixes the label map."""
  content = _read_json(annotations_path)
  if categories is None:
    categories = _category_map(annotations_path, content['categories'])
  label_of = {cid: label for label, cid in enumerate(categories.category_ids)}
  dropped, fixed = collections.Counter(), collections.Counter()

  images = _read_images(content, annotations_path, dropped)

  objects = collections.defaultdict(list)
  for index, ann in enumerate(content['annotations']):
    try:
      image_id, category_id = int(ann['image_id']), int(ann['category_id'])
      x, y, w, h = (float(v) for v in ann['bbox'])
    except (KeyError, TypeError, ValueError) as e:
      raise AnnotationFileError(
          f'{annotations_path}: annotations[{index}] lacks a valid image_id, category_id '
          f'or 4-number bbox ({e!r}).') from e
    if image_id not in images:
      dropped['unknown_image_id'] += 1
      continue
    if category_id not in label_of:
      dropped['unknown_category_id'] += 1
      continue
    if ann.get('iscrowd', 0):
      dropped['crowd'] += 1
      continue
    if not all(math.isfinite(v) for v in (x, y, w, h)):
      dropped['non_finite_box'] += 1
      continue
    _, height, width = images[image_id]
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
      dropped['degenerate_box'] += 1
      continue
    fixed['clipped_box'] += (x0, y0, x1, y1) != (x, y, x + w, y + h)
    objects[image_id].append(
        ([y0 / height, x0 / width, y1 / height, x1 / width], label_of[category_id]))

  records = []
  for image_id, (file_name, height, width) in images.items():
    objs = objects.get(image_id, [])
    records.append(ImageRecord(
        image_id=image_id,
        path=os.path.join(images_dir, file_name),
        height=height, width=width,
        boxes=np.array([o[0] for o in objs], np.float32).reshape(-1, 4),
        labels=np.array([o[1] for o in objs], np.int32)))
  return CocoSplit(annotations_path, images_dir, records, categories, dict(dropped),
                   {k: v for k, v in fixed.items() if v})
