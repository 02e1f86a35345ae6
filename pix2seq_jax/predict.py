"""Detections for image files or arrays from a trained workdir, without TensorFlow.

  predictor = Predictor('workdirs/shapes')
  per_image = predictor(['a.jpg', 'b.png'])   # or uint8 arrays [H, W, 3]

Images of any size are resized (longest side) and padded onto the config's canvas,
and batches have a fixed size, so new image sizes never trigger a recompilation.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from pix2seq_jax import checkpoint, detections, inference, optim, sharding
from pix2seq_jax.canvas import PAD_VALUE
from pix2seq_jax import train_step as train_step_lib
from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.data import coco_json


def load_image(path: str) -> np.ndarray:
  """An image file as uint8 [H, W, 3] (greyscale, palette and alpha images become RGB)."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def to_canvas(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
  """uint8 [H, W, 3] -> (float32 [size, size, 3] in [0, 1], scale), as the input pipeline."""
  height, width = image.shape[:2]
  scale = size / max(height, width)
  new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
  resized = np.asarray(Image.fromarray(image).resize(new_size, Image.BILINEAR), np.float32)
  canvas = np.full((size, size, 3), PAD_VALUE, np.float32)
  canvas[:new_size[1], :new_size[0]] = resized / 255.0
  return canvas, scale


class Predictor:
  """Loads config, label map and the latest (or a given) checkpoint from a workdir."""

  def __init__(self, workdir: str, step: int | None = None, batch_size: int = 8):
    with open(os.path.join(workdir, 'config.json')) as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(workdir, 'categories.json')) as f:
      self.categories = coco_json.CategoryMap.from_categories(json.load(f))
    self.vocab = vocab_lib.Vocabulary(self.categories.num_classes, self.config.data.num_bins)
    self.mesh = sharding.make_mesh()
    devices = jax.device_count()
    self.batch_size = -(-batch_size // devices) * devices
    tx = optim.make_optimizer(self.config.train)
    template = train_step_lib.abstract_train_state(self.config, self.vocab, self.mesh, tx)
    state = checkpoint.restore(checkpoint.make_manager(workdir), template, step)
    if state is None:
      raise FileNotFoundError(f'No checkpoint under {checkpoint.checkpoint_dir(workdir)}.')
    self.step = int(state.step)
    self.params, self.batch_stats = state.params, state.batch_stats
    graphdef = train_step_lib.model_graphdef(self.config, self.vocab)
    self._decode = inference.make_decode_fn(self.config, graphdef, self.vocab, self.mesh)

  def __call__(self, images: Sequence[str | np.ndarray]) -> list[list[dict]]:
    """Per image, a list of {category_id, category_name, bbox [x, y, w, h] px, score}."""
    size = self.config.data.image_size
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = [load_image(i) if isinstance(i, str) else np.asarray(i)
               for i in images[start:start + self.batch_size]]
      canvases = np.full((self.batch_size, size, size, 3), PAD_VALUE, np.float32)
      scales = np.ones(self.batch_size, np.float32)
      for row, image in enumerate(chunk):
        canvases[row], scales[row] = to_canvas(image, size)
      placed = sharding.put_batch({'image': canvases}, self.mesh)['image']
      tokens, scores = self._decode(self.params, self.batch_stats, placed, self.step)
      tokens, scores = np.asarray(tokens), np.asarray(scores)
      for row, image in enumerate(chunk):
        found = detections.parse_tokens(tokens[row], self.vocab, scores[row])
        boxes = detections.to_original_pixels(found.boxes, size, float(scales[row]),
                                              image.shape[:2])
        out.append([{'category_id': self.categories.category_ids[label],
                     'category_name': self.categories.names[label],
                     'bbox': [round(float(v), 2) for v in box], 'score': float(score)}
                    for box, label, score in zip(boxes, found.labels, found.scores)])
    return out


def draw(image: np.ndarray, found: list[dict], path: str) -> None:
  """Saves `image` with each detection's box, name and score drawn on it."""
  canvas = Image.fromarray(image)
  pen = ImageDraw.Draw(canvas)
  for det in found:
    x, y, w, h = det['bbox']
    pen.rectangle([x, y, x + w, y + h], outline=(255, 220, 0), width=2)
    pen.text((x + 2, y + 1), f"{det['category_name']} {det['score']:.2f}", fill=(255, 220, 0))
  canvas.save(path)


def predict_files(workdir: str, pattern: str, output: str, draw_dir: str | None = None,
                  min_score: float = 0.0) -> list[dict]:
  """Runs the predictor on every file matching `pattern`; writes JSON (and drawings)."""
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f'No image matches --images={pattern!r}.')
  predictor = Predictor(workdir)
  entries = []
  for start in range(0, len(paths), predictor.batch_size):
    chunk = paths[start:start + predictor.batch_size]
    images = [load_image(p) for p in chunk]
    for path, image, found in zip(chunk, images, predictor(images)):
      found = [d for d in found if d['score'] >= min_score]
      entries.append({'file_name': os.path.basename(path), 'path': path,
                      'height': image.shape[0], 'width': image.shape[1], 'detections': found})
      if draw_dir:
        os.makedirs(draw_dir, exist_ok=True)
        draw(image, found, os.path.join(draw_dir, os.path.splitext(os.path.basename(path))[0]
                                        + '.png'))
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  with open(output, 'w') as f:
    json.dump(entries, f, indent=1)
  return entries
