"""Detections for image files or arrays from a trained workdir, without TensorFlow.

  predictor = Predictor('workdirs/shapes')
  per_image = predictor(['a.jpg', 'b.png'])   # or uint8 arrays [H, W, 3]

Images of any size are resized (longest side) and padded onto one of a few canvases
(`canvas.canvas_shapes`), and batches have a fixed size, so a new image size never
triggers a recompilation.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from configs import default as default_config
from pix2seq_jax import canvas, checkpoint, config_checks, detections, evaluate, inference
from pix2seq_jax import optim, sharding
from pix2seq_jax import train_step as train_step_lib
from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.data import coco_json, image_check
from pix2seq_jax.models import backbones, variants


# What a bad file raises in PIL: missing, empty, truncated, not an image.
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_90}


def load_image(path: str, orientation: int | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
  """An image file as uint8 [H, W, 3], read as the training pipeline reads it.

  Greyscale, palette, alpha and CMYK images become RGB; 16-bit greyscale is scaled to
  8 bits (as TensorFlow's decoder does, not clipped). `orientation`: the EXIF orientation
  to apply (1: pixels as stored); None follows the file's own tag, so photos come out
  upright. `size` (h, w): resize to it where the file differs (image_check's fix).
  """
  with Image.open(path) as image:
    if orientation is None:
      image = ImageOps.exif_transpose(image)
    elif orientation in _EXIF_TRANSPOSE:
      image = image.transpose(_EXIF_TRANSPOSE[orientation])
    if size is not None and image.size != (size[1], size[0]):
      image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    if image.mode.startswith('I'):  # 16- or 32-bit greyscale
      grey = np.clip(np.round(np.asarray(image, np.float64) / 257), 0, 255).astype(np.uint8)
      return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert('RGB'))


def load_config(workdir: str, decode_overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, with `decode` fields optionally replaced.

  Fields added to configs/default.py after the workdir was written take their defaults.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: is {workdir!r} a training workdir?')
  with open(path) as f:
    saved = json.load(f)
  config = default_config.get_config()
  config.update(saved)
  for key, value in (decode_overrides or {}).items():
    if key not in config.decode:
      raise KeyError(f'decode.{key} is not a decode setting; have {sorted(config.decode)}.')
    config.decode[key] = value
  config_checks.validate(config, mode='predict')
  return config


class Predictor:
  """Config, label map and the latest (or a given) checkpoint of a workdir, ready to detect.

  Args:
    workdir: a training workdir (config.json, categories.json, checkpoints/).
    step: the checkpoint step; default the latest.
    batch_size: images per decode call (rounded up to a multiple of the device count).
    decode: overrides of the config's `decode` fields, e.g. {'top_p': 0.4}.
  """

  def __init__(self, workdir: str, step: int | None = None, batch_size: int = 8,
               decode: dict | None = None):
    self.config = load_config(workdir, decode)
    with open(os.path.join(workdir, 'categories.json')) as f:
      self.categories = coco_json.CategoryMap.from_categories(json.load(f))
    self.vocab = vocab_lib.Vocabulary(self.categories.num_classes, self.config.data.num_bins)
    self.mesh = sharding.make_mesh()
    devices = jax.device_count()
    self.batch_size = -(-batch_size // devices) * devices
    tx = optim.make_optimizer(self.config)
    template = train_step_lib.abstract_train_state(self.config, self.vocab, self.mesh, tx)
    state = checkpoint.restore(checkpoint.make_manager(workdir), template, step)
    if state is None:
      raise FileNotFoundError(f'No checkpoint under {checkpoint.checkpoint_dir(workdir)}.')
    self.step = int(state.step)
    self.params, self.batch_stats = state.params, state.batch_stats
    graphdef = train_step_lib.model_graphdef(self.config, self.vocab)
    self._decode = inference.make_decode_fn(self.config, graphdef, self.vocab, self.mesh)
    stride = backbones.STRIDES[variants.get_spec(self.config.model.variant).backbone]
    self.size = self.config.data.image_size
    self.canvas_shapes = canvas.canvas_shapes(self.size, stride,
                                              self.config.decode.canvas_buckets)

  @property
  def compilations(self) -> int:
    """How many image shapes the decoder has been compiled for so far."""
    return self._decode.compilations()

  def _detect_batch(self, images: list[np.ndarray], shape: tuple[int, int]) -> list[list[dict]]:
    canvases = np.full((self.batch_size, *shape, 3), canvas.PAD_VALUE, np.float32)
    scales = np.ones(self.batch_size, np.float32)
    for row, image in enumerate(images):
      canvases[row], scales[row] = canvas.to_canvas(image, self.size, shape)
    placed = sharding.put_batch({'image': canvases}, self.mesh)['image']
    tokens, scores = self._decode(self.params, self.batch_stats, placed, self.step)
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    out = []
    for row, image in enumerate(images):
      found = detections.parse_tokens(tokens[row], self.vocab, scores[row])
      boxes = detections.to_original_pixels(found.boxes, self.size, float(scales[row]),
                                            image.shape[:2])
      out.append([{'category_id': self.categories.category_ids[label],
                   'category_name': self.categories.names[label],
                   'bbox': [round(float(v), 2) for v in box], 'score': float(score)}
                  for box, label, score in zip(boxes, found.labels, found.scores)])
    return out

  def __call__(self, images: Sequence[str | np.ndarray]) -> list[list[dict]]:
    """Per image, a list of {category_id, category_name, bbox [x, y, w, h] px, score}."""
    arrays = [load_image(i) if isinstance(i, str) else np.asarray(i, np.uint8) for i in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(arrays):
      if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'Image {index}: expected uint8 [H, W, 3], got shape {image.shape}.')
      resized, _ = canvas.resized_shape(*image.shape[:2], self.size)
      groups.setdefault(canvas.choose_canvas(*resized, self.canvas_shapes), []).append(index)
    out: list[list[dict]] = [[] for _ in arrays]
    for shape, indices in groups.items():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        for index, found in zip(chunk, self._detect_batch([arrays[i] for i in chunk], shape)):
          out[index] = found
    return out


def predict_coco_split(predictor: Predictor, annotations_path: str, images_dir: str,
                       max_images: int = 0,
                       progress: bool = False) -> tuple[list[dict], list[int]]:
  """COCO results for the images of an annotation file, and the image ids evaluated.

  The annotation file's categories must be the checkpoint's (same ids).
  """
  coco_gt = evaluate.load_ground_truth(annotations_path)
  gt_ids = sorted(coco_gt.getCatIds())
  if gt_ids != sorted(predictor.categories.category_ids):
    raise ValueError(f'{annotations_path}: category ids {gt_ids[:10]}... differ from the '
                     f'checkpoint\'s {list(predictor.categories.category_ids)[:10]}...')
  infos = coco_gt.dataset['images'][:max_images or None]
  batches: Iterable = range(0, len(infos), predictor.batch_size)
  if progress:
    from tqdm.auto import tqdm
    batches = tqdm(batches, desc='predict', unit='batch')
  results, evaluated = [], []
  for start in batches:
    chunk, images = [], []
    for info in infos[start:start + predictor.batch_size]:
      path, size = os.path.join(images_dir, info['file_name']), (info['height'], info['width'])
      check = image_check.check_file(path, *size)
      if check.problem:  # left out of the evaluation, as in training's evaluation
        logging.warning('%s: skipped (%s %s)', path, check.problem, check.detail)
        continue
      chunk.append(info)
      images.append(load_image(path, check.orientation, size))
    for info, found in zip(chunk, predictor(images) if images else []):
      results += [{'image_id': info['id'], 'category_id': d['category_id'], 'bbox': d['bbox'],
                   'score': d['score']} for d in found]
    evaluated += [info['id'] for info in chunk]
  return results, evaluated


def draw(image: np.ndarray, found: list[dict], path: str | None = None,
         ground_truth: list[dict] | None = None) -> Image.Image:
  """`image` with each detection's box, name and score drawn (and ground truth in green).

  Detections are {bbox [x, y, w, h], category_name, score}; ground truth {bbox}.
  Saved to `path` when given.
  """
  picture = Image.fromarray(image)
  pen = ImageDraw.Draw(picture)
  for gt in ground_truth or []:
    x, y, w, h = gt['bbox']
    pen.rectangle([x, y, x + w, y + h], outline=(40, 220, 80), width=1)
  for det in found:
    x, y, w, h = det['bbox']
    pen.rectangle([x, y, x + w, y + h], outline=(255, 220, 0), width=2)
    pen.text((x + 2, y + 1), f"{det['category_name']} {det['score']:.2f}", fill=(255, 220, 0))
  if path:
    picture.save(path)
  return picture


def predict_files(workdir: str, pattern: str, output: str, draw_dir: str | None = None,
                  min_score: float = 0.0, decode: dict | None = None) -> list[dict]:
  """Runs the predictor on every file matching `pattern`; writes JSON (and drawings)."""
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f'No image matches --images={pattern!r}.')
  predictor = Predictor(workdir, decode=decode)
  entries, unreadable = [], []
  for start in range(0, len(paths), predictor.batch_size):
    chunk, images = [], []
    for path in paths[start:start + predictor.batch_size]:
      try:
        images.append(load_image(path))
        chunk.append(path)
      except UNREADABLE_IMAGE_ERRORS as e:
        logging.warning('%s: skipped, not a readable image (%s)', path, e)
        unreadable.append(path)
    for path, image, found in zip(chunk, images, predictor(images) if images else []):
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
  if unreadable:
    logging.warning('Skipped %d unreadable file(s) of %d: %s', len(unreadable), len(paths),
                    ', '.join(unreadable))
  return entries
