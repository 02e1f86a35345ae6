"""Detections (or masks, keypoints) for image files or arrays from a trained workdir,
without TensorFlow.

  predictor = Predictor('workdirs/shapes')
  per_image = predictor(['a.jpg', 'b.png'])   # or uint8 arrays [H, W, 3]
  masks = Predictor('workdirs/segm')(['a.jpg'], boxes=per_image[:1])  # an instance task

A multi-task workdir (`config.tasks`) predicts the task asked for
(`Predictor(workdir, task='captioning')`; default its `config.task`). A captioning task
gives one caption per image. A workdir trained for an instance task (`config.task`
instance_segmentation or keypoint_detection) reads the objects it is given, per image
COCO-style boxes (`instance_inputs.py`): segmentation decodes every object of an image
from one encoding of the image (`data.max_instances` objects per call), keypoint
detection each person on its own crop of the image (the official eval's crop).

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

from pix2seq_jax.config import checks, default, multitask, workdir_config
from pix2seq_jax.data import canvas, coco_json
from pix2seq_jax.inference import (
  captions,
  detections,
  drawing,
  instance_inputs,
  instance_predict,
  instances,
  sharded_decode,
)
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.models import backbones, build, variants
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import compilation_cache, precision, xla_cpu_flags
from pix2seq_jax.tasks import captioning
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
    decode: overrides of the config's `decode` fields, e.g. {'top_p': 0.4} (object
      detection's: the other tasks sample as the official).
    task: the task to predict, one of the workdir's (`config.tasks`); default its
      `config.task`.
  """

  def __init__(self, workdir: str, step: int | None = None, batch_size: int = 8,
               decode: dict | None = None, task: str | None = None):
    compilation_cache.enable()  # before the first compilation (see compilation_cache.py)
    trained = workdir_config.load(workdir)
    self.tasks = multitask.task_names(trained)
    task = trained.task if task is None else task
    if task not in self.tasks:
      raise ValueError(f'task={task!r}: {workdir} was trained for {list(self.tasks)}.')
    changed = sorted(k for k, v in (decode or {}).items()
                     if k not in trained.decode or trained.decode[k] != v)
    if changed and task != 'object_detection':
      raise checks.ConfigError(
          f'decode.{changed[0]}={decode[changed[0]]!r}: the decode settings are object '
          f'detection\'s; {task} samples as the official multi-task config does '
          '(docs/tasks.md). Leave them out.')
    if decode:
      trained = workdir_config.load(workdir, decode)
    self.config = multitask.task_config(trained, task)
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
    graphdef = build.model_graphdef(self.config, self.vocab)
    stride = backbones.STRIDES[variants.get_spec(self.config.model.variant).backbone]
    self.size = self.config.data.image_size
    self.task = None  # detection; the decoding task of the other tasks
    self.tokenizer = None  # captioning's
    if self.config.task == 'captioning':
      self.tokenizer = captions.load_tokenizer(self.config)
      self.task = captions.caption_task(self.config, self.vocab, self.tokenizer)
      self._decode = sharded_decode.CaptionDecodeFn(self.config, graphdef, self.task,
                                                    self.mesh)
      self.canvas_shapes = [(self.size, self.size)]  # as the evaluation pipeline
    elif self.config.task in default.INSTANCE_TASKS:
      self.task = instances.instance_task(self.config, self.vocab)
      self._decode = sharded_decode.InstanceDecodeFn(self.config, graphdef, self.task,
                                                     self.mesh)
      self.canvas_shapes = [(self.size, self.size)]  # prompts are boxes of the square
    else:
      self._decode = sharded_decode.DecodeFn(self.config, graphdef, self.vocab, self.mesh)
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

  def __call__(self, images: Sequence[str | np.ndarray],
               boxes: Sequence[Sequence[dict]] | None = None,
               return_masks: bool = False) -> list[list[dict]]:
    """Per image, a list of {category_id, category_name, bbox [x, y, w, h] px, score}
    (boxes in full precision).

    Images are file paths or uint8 arrays [H, W] (grey), [H, W, 3] or [H, W, 4] (alpha
    is dropped). An instance task's workdir needs `boxes`: per image the objects to read,
    {'bbox': [x, y, w, h] px, 'category_id', optional 'score' (default 1)}; it returns
    one result per object, in their order, with the object's bbox and:
      segmentation  'segmentation' (COCO RLE, counts a str), score = the box's; with
                    `return_masks` also 'mask', bool [H, W] of the image;
      keypoints     'keypoints' [x, y, v] * 17 px, score = the box score mixed with the
                    points' (`keypoints.combine_scores`).
    """
    if self.task is None or self.tokenizer is not None:
      if boxes is not None or return_masks:
        raise instance_inputs.BoxesError(
            f'This workdir\'s model was trained for {self.config.task}: it reads whole '
            'images; call it without boxes or return_masks.')
    elif boxes is None:
      raise instance_inputs.BoxesError(instance_inputs.needs_boxes(self.config.task))
    arrays = images_lib.as_arrays(images)
    if self.tokenizer is not None:
      return self._captions(arrays)
    if self.task is not None:
      return instance_predict.predict(arrays, boxes, self.task, self.categories, self.size,
                                      self._decode_batch, self.batch_size,
                                      self.config.data.max_instances, return_masks)
    out: list[list[dict]] = [[] for _ in arrays]
    for indices, canvases, scales in canvas.canvas_batches(arrays, self.size,
                                                           self.canvas_shapes, self.batch_size):
      found = self._detect_batch(canvases, scales, [arrays[i] for i in indices])
      for index, detected in zip(indices, found):
        out[index] = detected
    return out

  def _captions(self, arrays: list[np.ndarray]) -> list[list[dict]]:
    """One caption per image, its canvas the evaluation pipeline's (square)."""
    out: list[list[dict]] = [[] for _ in arrays]
    for indices, canvases, _ in canvas.canvas_batches(arrays, self.size, self.canvas_shapes,
                                                      self.batch_size):
      placed = mesh_lib.put_batch({'image': canvases}, self.mesh)['image']
      tokens, probs = (np.asarray(x) for x in self._decode(
          self.params, self.batch_stats, placed, self.step))
      texts = captions.caption_texts(tokens, self.tokenizer, self.vocab)
      for row, index in enumerate(indices):
        out[index] = [{'caption': texts[row],
                       'score': captioning.caption_score(probs[row])}]
    return out

  def _decode_batch(self, canvases: np.ndarray, prompts: np.ndarray):
    """instance_predict's decode function: the jitted InstanceDecodeFn on this mesh."""
    placed = mesh_lib.put_batch({'image': canvases, 'prompts': prompts}, self.mesh)
    return self._decode(self.params, self.batch_stats, placed['image'], placed['prompts'],
                        self.step)


def _rounded(found: dict) -> dict:
  """A result as the JSON keeps it: pixels to 2 decimals, no bool mask."""
  out = {k: v for k, v in found.items() if k != 'mask'}
  for key in ('bbox', 'keypoints'):
    if key in out:
      out[key] = [round(float(v), 2) for v in out[key]]
  return out


def predict_files(workdir: str, pattern: str, output: str, draw_dir: str | None = None,
                  min_score: float = 0.0, decode: dict | None = None,
                  draw_threshold: float = drawing.DEFAULT_THRESHOLD,
                  boxes: str | None = None, task: str | None = None) -> list[dict]:
  """Runs the predictor on every file matching `pattern`; writes JSON (and drawings).

  The JSON keeps every detection scored at least `min_score`; the drawings in `draw_dir`
  show those scored at least `draw_threshold` (in [0, 1]). An instance task's workdir
  needs `boxes`, a file of the objects to read (`instance_inputs.read_boxes`: a detection
  workdir's predict JSON, COCO results or annotations); its 'detections' are the instance
  results (masks as RLE, or keypoints); a captioning task's are its one caption. `task`:
  which task of a multi-task workdir (default its config.task).
  """
  if not 0.0 <= draw_threshold <= 1.0:
    raise ValueError(f'draw_threshold={draw_threshold}: use a score in [0, 1].')
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f'No image matches --images={pattern!r}.')
  predictor = Predictor(workdir, decode=decode, task=task)
  if predictor.tokenizer is not None and (boxes or draw_dir):
    raise instance_inputs.BoxesError(
        f'--{"boxes" if boxes else "draw_dir"} is for boxes, masks and keypoints; '
        f'{workdir}\'s captioning writes text: leave it out.')
  if predictor.task is None and boxes:
    raise instance_inputs.BoxesError(
        f'--boxes reads the objects of an instance task\'s workdir; {workdir} was trained '
        'for object_detection and finds its boxes itself: leave --boxes out.')
  if predictor.task is not None and predictor.tokenizer is None and not boxes:
    raise instance_inputs.BoxesError(
        f'{workdir}: ' + instance_inputs.needs_boxes(predictor.config.task)
        + ' Add --boxes=FILE.json.')
  objects = instance_inputs.read_boxes(boxes, paths) if boxes else None
  entries, unreadable = [], []
  for start in range(0, len(paths), predictor.batch_size):
    chunk, images, given = [], [], []
    for index in range(start, min(start + predictor.batch_size, len(paths))):
      path = paths[index]
      try:
        images.append(images_lib.load_image(path))
        chunk.append(path)
        given.append(objects[index] if objects else None)
      except images_lib.UNREADABLE_IMAGE_ERRORS as e:
        logging.warning('%s: skipped, not a readable image (%s)', path, e)
        unreadable.append(path)
    if not images:
      continue
    results = predictor(images, boxes=given) if objects else predictor(images)
    for path, image, found in zip(chunk, images, results):
      found = [_rounded(d) for d in found if d['score'] >= min_score]
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
