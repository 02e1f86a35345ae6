"""A synthetic detection dataset written to disk in COCO layout (JPEGs + instances JSON).

Classes are (shape kind, colour) pairs. Each image has 1-8 objects of varied sizes,
some overlapping, drawn over a textured background. Everything is a pure function
of the seed, and a folder is generated once and reused: `ensure_dataset` checks the
parameters recorded in the folder and regenerates nothing when they match.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

KINDS = ('circle', 'square', 'triangle')
COLOURS = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (40, 70, 220)}
CATEGORIES = [{'id': i + 1, 'name': f'{colour} {kind}'}
              for i, (kind, colour) in enumerate((k, c) for k in KINDS for c in COLOURS)]
SPLITS = {'train': 0, 'val': 1}
_MARKER = 'shapes_dataset.json'


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A muted texture: a colour gradient, stripes or checks, and pixel noise."""
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  base = rng.uniform(70, 180, size=3)
  tilt = rng.uniform(-0.4, 0.4, size=(2, 3))
  image = base + ys[..., None] * tilt[0] + xs[..., None] * tilt[1]
  pattern = rng.integers(3)
  period = rng.uniform(6, 24)
  if pattern == 0:  # stripes at a random angle
    angle = rng.uniform(0, np.pi)
    phase = (np.cos(angle) * xs + np.sin(angle) * ys) / period
    image += (np.sin(2 * np.pi * phase) * rng.uniform(8, 25))[..., None]
  elif pattern == 1:  # checks
    checks = ((xs // period + ys // period) % 2) * 2 - 1
    image += (checks * rng.uniform(8, 20))[..., None]
  image += rng.normal(0, rng.uniform(3, 12), size=image.shape)
  grey = image.mean(axis=-1, keepdims=True)
  image = grey + 0.3 * (image - grey)  # desaturate so object colours stand out
  return np.clip(image, 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  y0, x0 = max(a[0], b[0]), max(a[1], b[1])
  y1, x1 = min(a[2], b[2]), min(a[3], b[3])
  inter = max(0.0, y1 - y0) * max(0.0, x1 - x0)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def render_image(rng: np.random.Generator, min_size: int, max_size: int,
                 max_objects: int = 8) -> tuple[Image.Image, list[tuple[list[float], int]]]:
  """Draws one image. Returns it and its objects as ([x, y, w, h] pixels, category id)."""
  height, width = rng.integers(min_size, max_size + 1, size=2)
  image = Image.fromarray(_background(rng, height, width))
  draw = ImageDraw.Draw(image)
  boxes, objects = [], []
  target = rng.integers(1, max_objects + 1)
  for _ in range(20 * target):
    if len(objects) == target:
      break
    side = rng.uniform(0.12, 0.45) * min(height, width)
    aspect = rng.uniform(0.75, 1.33)
    h, w = side * aspect, side / aspect
    y0, x0 = rng.uniform(0, height - h), rng.uniform(0, width - w)
    box = np.array([y0, x0, y0 + h, x0 + w])
    if any(_iou(box, other) > 0.2 for other in boxes):
      continue
    label = int(rng.integers(len(CATEGORIES)))
    kind = KINDS[label // len(COLOURS)]
    colour = np.array(list(COLOURS.values())[label % len(COLOURS)])
    fill = tuple(int(c) for c in np.clip(colour + rng.integers(-25, 26, size=3), 0, 255))
    if kind == 'circle':
      draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
    elif kind == 'square':
      draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
    else:
      draw.polygon([(x0 + w / 2, y0), (x0, y0 + h), (x0 + w, y0 + h)], fill=fill)
    boxes.append(box)
    objects.append(([float(x0), float(y0), float(w), float(h)], CATEGORIES[label]['id']))
  return image, objects


def _write_split(root: str, split: str, num_images: int, seed: int,
                 min_size: int, max_size: int) -> None:
  image_dir = os.path.join(root, split)
  os.makedirs(image_dir, exist_ok=True)
  images, annotations = [], []
  for index in range(num_images):
    rng = np.random.default_rng([seed, SPLITS[split], index])
    image, objects = render_image(rng, min_size, max_size)
    image_id = index + 1
    file_name = f'{image_id:06d}.jpg'
    image.save(os.path.join(image_dir, file_name), quality=92)
    images.append({'id': image_id, 'file_name': file_name,
                   'height': image.height, 'width': image.width})
    for bbox, category_id in objects:
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                          'category_id': category_id, 'bbox': bbox,
                          'area': bbox[2] * bbox[3], 'iscrowd': 0})
  os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
  with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': CATEGORIES}, f)


def ensure_dataset(root: str, *, seed: int, num_train: int, num_val: int,
                   min_size: int = 96, max_size: int = 160) -> dict[str, tuple[str, str]]:
  """Generates the dataset under `root` unless it is already there with these parameters.

  Returns {split: (images_dir, annotations_path)}.
  """
  params = {'seed': seed, 'num_train': num_train, 'num_val': num_val,
            'min_size': min_size, 'max_size': max_size, 'version': 1}
  marker = os.path.join(root, _MARKER)
  if os.path.exists(marker):
    with open(marker) as f:
      existing = json.load(f)
    if existing != params:
      raise ValueError(
          f'{root} holds a shapes dataset made with {existing}, not {params}. '
          'Set data.shapes_dir to another folder, or delete this one to regenerate it.')
  else:
    for split, count in (('train', num_train), ('val', num_val)):
      _write_split(root, split, count, seed, min_size, max_size)
    with open(marker, 'w') as f:  # written last: a half-made folder is made again
      json.dump(params, f)
  return {split: (os.path.join(root, split),
                  os.path.join(root, 'annotations', f'instances_{split}.json'))
          for split in SPLITS}
