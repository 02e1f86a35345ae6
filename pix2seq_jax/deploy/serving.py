"""Run an exported detector (`main.py --mode=export`) with JAX alone.

  detector = pix2seq_jax.deploy.serving.load('exported/')
  per_image = detector(['a.jpg', grey_array, rgba_array])  # as Predictor(workdir)(...)

Needs only jax, numpy and PIL: no Flax, no model code, no TensorFlow. Images are put on
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

from pix2seq_jax.data import canvas
from pix2seq_jax.inference import detections
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.runtime import compilation_cache, xla_cpu_flags

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


class ExportedDetector:
  """The detector of an export folder. Call it on images like a `Predictor`."""

  def __init__(self, directory: str, batch_size: int = 8):
    compilation_cache.enable()  # before the first compilation
    manifest_path = os.path.join(directory, MANIFEST)
    try:
      with open(manifest_path) as f:
        self.manifest = json.load(f)
    except FileNotFoundError:
      raise ExportError(f'{manifest_path} is missing: is {directory!r} a folder written by '
                        'main.py --mode=export?') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ExportError(f'{manifest_path} is damaged ({e}): export the workdir again.') from None
    found = self.manifest.get('format') if isinstance(self.manifest, dict) else None
    if found != FORMAT:
      raise ExportError(
          f'{manifest_path}: export format {found!r} (pix2seq_jax '
          f'{self.manifest.get("pix2seq_jax_version") if isinstance(self.manifest, dict) else "?"}'
          f'), this version reads format {FORMAT}: export the workdir again with this version.')
    for name, expected in self.manifest['sha256'].items():
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        raise ExportError(f'{path} is missing: copy the whole export folder.')
      if sha256(path) != expected:
        raise ExportError(f'{path} is damaged (its SHA-256 differs from {MANIFEST}\'s): copy '
                          'it again or export the workdir again.')
    weights_path = os.path.join(directory, WEIGHTS)
    with np.load(weights_path) as stored:
      self._weights = [stored[f'arr_{i}'] for i in range(self.manifest['num_weights'])]
    self._programs = {}
    for entry in self.manifest['canvases']:
      path = os.path.join(directory, entry['file'])
      with open(path, 'rb') as f:
        try:
          exported = jax.export.deserialize(bytearray(f.read()))
        except Exception as e:  # noqa: BLE001  (flatbuffer and MLIR errors vary)
          raise ExportError(f'{path} cannot be read by jax {jax.__version__} ({e}): export '
                            'the workdir again with this version.') from None
      self._programs[tuple(entry['shape'])] = jax.jit(
          exported.call, compiler_options=xla_cpu_flags.inference_compiler_options(
              jax.default_backend()))
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


def load(directory: str, batch_size: int = 8) -> ExportedDetector:
  """The detector exported to `directory`, checked (format, SHA-256) and deserialised."""
  return ExportedDetector(directory, batch_size)
