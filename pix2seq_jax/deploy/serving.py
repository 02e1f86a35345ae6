"""Run an exported detector (`main.py --mode=export`) with JAX alone.

  detector = pix2seq_jax.deploy.serving.load('exported/')
  per_image = detector(['a.jpg', grey_array, rgba_array])  # as Predictor(workdir)(...)

Needs only jax, numpy and PIL (and pycocotools for masks, sentencepiece for captions): no
Flax, no model code, no TensorFlow. An instance task's export (segmentation, keypoints)
loads as `ExportedInstances`, called with images and boxes as that workdir's Predictor; a
captioning export as `ExportedCaptioner`, which gives each image's caption and score as the
Predictor does (the export's own copy of the tokenizer makes the text). Images are put on
canvases exactly as the Predictor puts them (`data/canvas.py`), batches are padded to a
fixed size, and each canvas shape's deserialised program is compiled once per process
and kept in the persistent compilation cache (`compilation_cache.py`) across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import jax
import numpy as np

from pix2seq_jax.data import canvas, coco_json
from pix2seq_jax.inference import captions, detections, instance_predict
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.runtime import compilation_cache, xla_cpu_flags
from pix2seq_jax.tasks import captioning, keypoints, segmentation
from pix2seq_jax.tasks import tokenizer as tokenizer_lib
from pix2seq_jax.tasks import vocab as vocab_lib

FORMAT = 1  # the export format this module reads (deploy/export.py writes it)
MANIFEST = 'export.json'
WEIGHTS = 'weights.npz'


class ExportError(ValueError):
  """An export folder that cannot be used; the message names the file and the fix."""


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _read_folder(directory: str) -> tuple[dict, list[np.ndarray]]:
  """(manifest, weights) of an export folder, its format and every file's SHA-256 checked."""
  compilation_cache.enable()  # before the first compilation
  manifest_path = os.path.join(directory, MANIFEST)
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise ExportError(f'{manifest_path} is missing: is {directory!r} a folder written by '
                      'main.py --mode=export?') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ExportError(f'{manifest_path} is damaged ({e}): export the workdir again.') from None
  found = manifest.get('format') if isinstance(manifest, dict) else None
  if found != FORMAT:
    raise ExportError(
        f'{manifest_path}: export format {found!r} (pix2seq_jax '
        f'{manifest.get("pix2seq_jax_version") if isinstance(manifest, dict) else "?"}'
        f'), this version reads format {FORMAT}: export the workdir again with this version.')
  for name, expected in manifest['sha256'].items():
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      raise ExportError(f'{path} is missing: copy the whole export folder.')
    if sha256(path) != expected:
      raise ExportError(f'{path} is damaged (its SHA-256 differs from {MANIFEST}\'s): copy '
                        'it again or export the workdir again.')
  with np.load(os.path.join(directory, WEIGHTS)) as stored:
    weights = [stored[f'arr_{i}'] for i in range(manifest['num_weights'])]
  return manifest, weights


def _program(path: str):
  """The deserialised jax.export program of `path`, jitted."""
  with open(path, 'rb') as f:
    try:
      exported = jax.export.deserialize(bytearray(f.read()))
    except Exception as e:  # noqa: BLE001  (flatbuffer and MLIR errors vary)
      raise ExportError(f'{path} cannot be read by jax {jax.__version__} ({e}): export '
                        'the workdir again with this version.') from None
  return jax.jit(exported.call, compiler_options=xla_cpu_flags.inference_compiler_options(
      jax.default_backend()))


class ExportedDetector:
  """The detector of an export folder. Call it on images like a `Predictor`."""

  def __init__(self, directory: str, batch_size: int = 8):
    self.manifest, self._weights = _read_folder(directory)
    self._programs = {}
    for entry in self.manifest['canvases']:
      self._programs[tuple(entry['shape'])] = _program(os.path.join(directory, entry['file']))
    self.size = int(self.manifest['canvas_size'])
    self.canvas_shapes = [tuple(entry['shape']) for entry in self.manifest['canvases']]
    self.category_names = {c['id']: c['name'] for c in self.manifest['categories']}
    self.batch_size = batch_size
    self._clip = self.manifest['decode']['mode'] != 'official'

  def detect_canvases(self, canvases: np.ndarray) -> dict[str, np.ndarray]:
    """float32 canvases [B, H, W, 3] (one of `canvas_shapes`) -> the exported outputs."""
    shape = tuple(canvases.shape[1:3])
    if shape not in self._programs:
      raise ValueError(f'No exported program for a {shape} canvas; have {self.canvas_shapes}.')
    out = self._programs[shape](self._weights, np.asarray(canvases, np.float32))
    return {name: np.asarray(value) for name, value in out.items()}

  def __call__(self, images: Sequence[str | np.ndarray]) -> list[list[dict]]:
    """Per image, [{category_id, category_name, bbox [x, y, w, h] px, score}], as the
    Predictor returns them: file paths or uint8 [H, W], [H, W, 1-4] arrays."""
    arrays = images_lib.as_arrays(images)
    out: list[list[dict]] = [[] for _ in arrays]
    for indices, canvases, scales in canvas.canvas_batches(arrays, self.size,
                                                           self.canvas_shapes, self.batch_size):
      found = self.detect_canvases(canvases)
      for row, index in enumerate(indices):
        count = int(found['num_detections'][row])
        boxes = detections.to_original_pixels(found['boxes'][row, :count], self.size,
                                              scales[row], arrays[index].shape[:2],
                                              clip=self._clip)
        out[index] = [{'category_id': int(c), 'category_name': self.category_names[int(c)],
                       'bbox': [float(v) for v in box], 'score': float(s)}
                      for box, c, s in zip(boxes, found['classes'][row, :count],
                                           found['scores'][row, :count])]
    return out


class ExportedInstances:
  """The decoding of an instance task's export (segmentation, keypoints). Call it on
  images and their boxes like that workdir's `Predictor` (`instance_predict.py`)."""

  def __init__(self, directory: str, batch_size: int = 8):
    self.manifest, self._weights = _read_folder(directory)
    program = self.manifest['program']
    self._program = _program(os.path.join(directory, program['file']))
    self.size = int(self.manifest['canvas_size'])
    self.categories = coco_json.CategoryMap.from_categories(self.manifest['categories'])
    layout = self.manifest['vocabulary']
    vocab = vocab_lib.for_categories(layout['layout'], self.categories.category_ids,
                                     layout['num_bins'])
    settings = dict(self.manifest['task_settings'])
    task_class = {'instance_segmentation': segmentation.SegmentationTask,
                  'keypoint_detection': keypoints.KeypointTask}[self.manifest['task']]
    self.task = task_class(vocab, **settings)
    self.batch_size = batch_size

  def decode_canvases(self, canvases: np.ndarray, prompts: np.ndarray) -> dict:
    """float32 canvases [B, S, S, 3] and int32 prompts [B, n, 6] -> the exported outputs."""
    out = self._program(self._weights, np.asarray(canvases, np.float32),
                        np.asarray(prompts, np.int32))
    out = {name: np.asarray(value) for name, value in out.items()}
    return out['points'] if set(out) == {'points'} else keypoints.KeypointOutputs(**out)

  def __call__(self, images: Sequence[str | np.ndarray], boxes: Sequence[Sequence[dict]],
               return_masks: bool = False) -> list[list[dict]]:
    """Per image, one result per object of `boxes`, as the Predictor returns them."""
    return instance_predict.predict(images_lib.as_arrays(images), boxes, self.task,
                                    self.categories, self.size, self.decode_canvases,
                                    self.batch_size, self.manifest['max_instances'],
                                    return_masks)


class ExportedCaptioner:
  """The captioning decoder of an export, with its tokenizer. Call it on images like a
  captioning `Predictor`: per image [{'caption': str, 'score': float}]."""

  def __init__(self, directory: str, batch_size: int = 8):
    self.manifest, self._weights = _read_folder(directory)
    self._program = _program(os.path.join(directory, self.manifest['program']['file']))
    self.size = int(self.manifest['canvas_size'])
    self.tokenizer = tokenizer_lib.TextTokenizer(
        os.path.join(directory, self.manifest['tokenizer']['file']))
    layout = self.manifest['vocabulary']
    category_ids = [c['id'] for c in self.manifest['categories']]
    self.vocab = vocab_lib.for_categories(layout['layout'], category_ids, layout['num_bins'])
    self.batch_size = batch_size

  def decode_canvases(self, canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 canvases [B, S, S, 3] -> (tokens [B, L] int32, token_probs [B, L])."""
    tokens, probs = self._program(self._weights, np.asarray(canvases, np.float32))
    return np.asarray(tokens), np.asarray(probs)

  def __call__(self, images: Sequence[str | np.ndarray]) -> list[list[dict]]:
    """Per image, [{'caption': str, 'score': float}]: file paths or uint8 arrays."""
    arrays = images_lib.as_arrays(images)
    out: list[list[dict]] = [[] for _ in arrays]
    shapes = [(self.size, self.size)]  # the evaluation pipeline's square, as the Predictor
    for indices, canvases, _ in canvas.canvas_batches(arrays, self.size, shapes,
                                                      self.batch_size):
      tokens, probs = self.decode_canvases(canvases)
      texts = captions.caption_texts(tokens, self.tokenizer, self.vocab)
      for row, index in enumerate(indices):
        out[index] = [{'caption': texts[row], 'score': captioning.caption_score(probs[row])}]
    return out


Exported = ExportedDetector | ExportedInstances | ExportedCaptioner


def load(directory: str, batch_size: int = 8) -> Exported:
  """The detector (or an instance task's decoder, or the captioner) exported to
  `directory`, checked (format, SHA-256) and deserialised."""
  task = None
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      content = json.load(f)
    task = content.get('task') if isinstance(content, dict) else None
  except (OSError, ValueError):
    pass  # ExportedDetector says what is wrong
  if task == 'captioning':
    return ExportedCaptioner(directory, batch_size)
  if task and task != 'object_detection':
    return ExportedInstances(directory, batch_size)
  return ExportedDetector(directory, batch_size)
