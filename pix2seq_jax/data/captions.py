"""Reads a COCO captions file into the captions of each image (plain Python, no TensorFlow).

The file is COCO's captions format: {"images": [{"id", "file_name", ...}, ...],
"annotations": [{"id", "image_id", "caption"}, ...]}. Captions are kept stripped of
surrounding whitespace, in the file's order. A record that cannot be used is counted
under its reason in `Captions.skipped`, not raised; a file that is not JSON, or lacks
"images" or "annotations", raises ValueError naming the file.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

# Why a caption record is left out (the keys of `Captions.skipped`).
NOT_AN_OBJECT = 'not an object'
MISSING_IMAGE_ID = 'missing image id'
UNKNOWN_IMAGE_ID = 'image id not in images'
MISSING_CAPTION = 'missing caption'
NON_TEXT_CAPTION = 'non-text caption'
EMPTY_CAPTION = 'empty caption'


@dataclasses.dataclass(frozen=True)
class Captions:
  """The captions of a COCO captions file, per image."""

  path: str
  # Every image of the file's "images", in its order: its kept captions in file order
  # (an empty tuple when it has none).
  by_image: dict[int, tuple[str, ...]]
  skipped: dict[str, int]  # records left out: {reason: count}

  @property
  def num_captions(self) -> int:
    return sum(len(captions) for captions in self.by_image.values())

  def all_texts(self) -> list[str]:
    """Every kept caption, image by image (e.g. to train a tokenizer on)."""
    return [caption for captions in self.by_image.values() for caption in captions]

  def describe_skipped(self) -> str:
    """One line: the file, what was kept and what was left out, and why."""
    kept = (f'{os.path.basename(self.path)}: {self.num_captions} captions of '
            f'{sum(1 for c in self.by_image.values() if c)} images')
    if not self.skipped:
      return f'{kept}; no caption record skipped'
    reasons = ', '.join(f'{count} {reason}' for reason, count in sorted(self.skipped.items()))
    return f'{kept}; skipped {sum(self.skipped.values())} records ({reasons})'


def load_captions(path: str) -> Captions:
  """The captions of the COCO captions file at `path`, per image, and counts of the
  records left out."""
  content = _read_json(path)
  if not isinstance(content, dict) or not all(k in content for k in ('images', 'annotations')):
    what = (f'a {type(content).__name__}' if not isinstance(content, dict) else
            f'an object with keys {sorted(content)[:8]}')
    hint = (' (a list is a captions results file, not annotations)'
            if isinstance(content, list) else '')
    raise ValueError(f'{path}: expected a COCO captions file, an object with "images" and '
                     f'"annotations", got {what}{hint}.')
  images, annotations = content['images'], content['annotations']
  for key, value in (('images', images), ('annotations', annotations)):
    if not isinstance(value, list):
      raise ValueError(f'{path}: "{key}" is a {type(value).__name__}, expected a list.')
  by_image: dict[int, list[str]] = {}
  for index, image in enumerate(images):
    image_id = image.get('id') if isinstance(image, dict) else None
    if isinstance(image_id, bool) or not isinstance(image_id, int):
      raise ValueError(f'{path}: images[{index}] has no integer "id" ({image!r:.120}).')
    if image_id in by_image:
      raise ValueError(f'{path}: image id {image_id} appears twice in "images".')
    by_image[image_id] = []
  skipped: collections.Counter[str] = collections.Counter()
  for record in annotations:
    reason = _problem(record, by_image)
    if reason:
      skipped[reason] += 1
    else:
      by_image[record['image_id']].append(record['caption'].strip())
  return Captions(path=path,
                  by_image={image_id: tuple(c) for image_id, c in by_image.items()},
                  skipped=dict(skipped))


def _problem(record: object, by_image: dict[int, list[str]]) -> str | None:
  """Why a caption record cannot be used, or None."""
  if not isinstance(record, dict):
    return NOT_AN_OBJECT
  if 'image_id' not in record:
    return MISSING_IMAGE_ID
  image_id = record['image_id']
  if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in by_image:
    return UNKNOWN_IMAGE_ID
  if 'caption' not in record or record['caption'] is None:
    return MISSING_CAPTION
  if not isinstance(record['caption'], str):
    return NON_TEXT_CAPTION
  if not record['caption'].strip():
    return EMPTY_CAPTION
  return None


def _read_json(path: str) -> object:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise ValueError(f'{path}: no such captions file.') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is not valid JSON ({e}).') from None
  except OSError as e:
    raise ValueError(f'{path}: cannot read it ({e.strerror}).') from None
