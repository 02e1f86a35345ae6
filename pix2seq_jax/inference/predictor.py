"""Detections for image files or arrays from a trained workdir, without TensorFlow.

  predictor = Predictor('workdirs/shapes')
  per_image = predictor(['a.jpg', 'b.png'])   # or uint8 arrays [H, W, 3]

Images of any size are resized (longest side) and padded onto one of a few canvases
(`data/canvas.py`), and batches have a fixed size, so a new image size never
triggers a recompilation. Only the parameters and batch statistics of the checkpoint
are read.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from pix2seq_jax.config import workdir_config
from pix2seq_jax.data import canvas, coco_json
from pix2seq_jax.inference import detections, drawing, sharded_decode
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.models import backbones, build, variants
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import compilation_cache, precision, xla_cpu_flags
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import checkpoints
from pix2seq_jax.workdir import files as workdir_lib

draw = drawing.draw  # detections drawn onto an image (drawing.py)


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
    compilation_cache.enable()  # before the first compilation (see compilation_cache.py)
    self.config = workdir_config.load(workdir, decode)
    self.categories = coco_json.CategoryMap.from_file(
        os.path.join(workdir, workdir_lib.CATEGORIES))
    self.vocab = vocab_lib.for_categories(self.config.model.vocabulary,
                                          self.categories.category_ids,
                                          self.config.data.num_bins)
    self.mesh = mesh_lib.make_mesh()
    devices = jax.device_count()
    self.batch_size = -(-batch_size // devices) * devices
    template = checkpoints.model_template(self.config, self.vocab, self.mesh)
    restored = checkpoints.restore_model(checkpoints.make_manager(workdir), template, step)
    if restored is None:
      raise FileNotFoundError(f'No checkpoint under {checkpoints.checkpoint_dir(workdir)}.')
    self.step = int(restored['step'])
    self.params, self.batch_stats = restored['params'], restored['batch_stats']
    self._decode = sharded_decode.DecodeFn(self.config, build.model_graphdef(
        self.config, self.vocab), self.vocab, self.mesh)
    stride = backbones.STRIDES[variants.get_spec(self.config.model.variant).backbone]
    self.size = self.config.data.image_size
    self.canvas_shapes = canvas.canvas_shapes(self.size, stride,
                                              self.config.decode.canvas_buckets)
    self._logits_fn = None

  def logits(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Teacher-forced next-token logits, in eval mode: the public contract for parity checks.

    Args:
      images: [B, S, S, 3] float32 in [0, 1], already on this workdir's S x S canvas.
      tokens: [B, T] ints in this workdir's vocabulary, starting with its start token
        (`self.vocab.start`: 10 in the official vocabulary); T <= the decoder's positions.

    Returns:
      [B, T, V] float32 logits; row t scores the token after tokens[:, :t + 1].
    """
    images, tokens = np.asarray(images, np.float32), np.asarray(tokens)
    if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3):
      raise ValueError(f'images: expected [B, {self.size}, {self.size}, 3] (this workdir\'s '
                       f'canvas), got {list(images.shape)}.')
    positions = build.abstract_model(self.config, self.vocab).decoder.max_seq_len
    if tokens.ndim != 2 or tokens.shape[0] != images.shape[0] or tokens.shape[1] > positions:
      raise ValueError(f'tokens: expected [{images.shape[0]}, T <= {positions}] ints, got '
                       f'{list(tokens.shape)}.')
    if tokens.min() < 0 or tokens.max() >= self.vocab.size:
      raise ValueError(f'tokens: ids must be in [0, {self.vocab.size}) ({self.vocab.layout} '
                       f'vocabulary), got {tokens.min()}..{tokens.max()}.')
    if self._logits_fn is None:
      graphdef = build.model_graphdef(self.config, self.vocab)

      def run(params, batch_stats, images, tokens):
        model = nnx.merge(graphdef, params, batch_stats)
        return model(images, tokens, train=False).astype(jnp.float32)

      self._logits_fn = jax.jit(
          precision.traced(run, self.config.train.matmul_precision),
          compiler_options=xla_cpu_flags.inference_compiler_options(
              self.mesh.devices.flat[0].platform))
    return np.asarray(self._logits_fn(self.params, self.batch_stats, images,
                                      tokens.astype(np.int32)))

  @property
  def compilations(self) -> int:
    """How many image shapes the decoder has been compiled for so far."""
    return self._decode.compilations

  def _detect_batch(self, canvases: np.ndarray, scales: list[float],
                    images: list[np.ndarray]) -> list[list[dict]]:
    placed = mesh_lib.put_batch({'image': canvases}, self.mesh)['image']
    tokens, scores = self._decode(self.params, self.batch_stats, placed, self.step)
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    return [detections.detections_in_pixels(tokens[row], scores[row], self.vocab,
                                            self.categories, self.size, scales[row],
                                            image.shape[:2], self.config.decode.mode,
                                            decimals=None)
            for row, image in enumerate(images)]

  def __call__(self, images: Sequence[str | np.ndarray]) -> list[list[dict]]:
    """Per image, a list of {category_id, category_name, bbox [x, y, w, h] px, score}
    (boxes in full precision).

    Images are file paths or uint8 arrays [H, W] (grey), [H, W, 3] or [H, W, 4] (alpha
    is dropped).
    """
    arrays = images_lib.as_arrays(images)
    out: list[list[dict]] = [[] for _ in arrays]
    for indices, canvases, scales in canvas.canvas_batches(arrays, self.size,
                                                           self.canvas_shapes, self.batch_size):
      found = self._detect_batch(canvases, scales, [arrays[i] for i in indices])
      for index, detected in zip(indices, found):
        out[index] = detected
    return out


def predict_files(workdir: str, pattern: str, output: str, draw_dir: str | None = None,
                  min_score: float = 0.0, decode: dict | None = None,
                  draw_threshold: float = drawing.DEFAULT_THRESHOLD) -> list[dict]:
  """Runs the predictor on every file matching `pattern`; writes JSON (and drawings).

  The JSON keeps every detection scored at least `min_score`; the drawings in `draw_dir`
  show those scored at least `draw_threshold` (in [0, 1]).
  """
  if not 0.0 <= draw_threshold <= 1.0:
    raise ValueError(f'draw_threshold={draw_threshold}: use a score in [0, 1].')
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f'No image matches --images={pattern!r}.')
  predictor = Predictor(workdir, decode=decode)
  entries, unreadable = [], []
  for start in range(0, len(paths), predictor.batch_size):
    chunk, images = [], []
    for path in paths[start:start + predictor.batch_size]:
      try:
        images.append(images_lib.load_image(path))
        chunk.append(path)
      except images_lib.UNREADABLE_IMAGE_ERRORS as e:
        logging.warning('%s: skipped, not a readable image (%s)', path, e)
        unreadable.append(path)
    for path, image, found in zip(chunk, images, predictor(images) if images else []):
      found = [dict(d, bbox=[round(v, 2) for v in d['bbox']]) for d in found
               if d['score'] >= min_score]
      entries.append({'file_name': os.path.basename(path), 'path': path,
                      'height': image.shape[0], 'width': image.shape[1], 'detections': found})
      if draw_dir:
        os.makedirs(draw_dir, exist_ok=True)
        name = os.path.splitext(os.path.basename(path))[0] + '.png'
        drawing.draw(image, found, os.path.join(draw_dir, name), threshold=draw_threshold)
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  with open(output, 'w') as f:
    json.dump(entries, f, indent=1)
  if unreadable:
    logging.warning('Skipped %d unreadable file(s) of %d: %s', len(unreadable), len(paths),
                    ', '.join(unreadable))
  return entries
