"""A trained workdir written out as a detector that runs without this project's model code.

  python main.py --mode=export --workdir=W --output=DIR [--config=C for decode settings]

writes into DIR:

  detector.jax       `jax.export` of `detector.detector_fn` on the S x S canvas: (weights,
                     canvases [b, S, S, 3] float32) -> detections, b symbolic, lowered for
                     CPU and CUDA. With decode.canvas_buckets > 1, one more file per extra
                     canvas (detector_HxW.jax), as the Predictor compiles them.
  weights.npz        the parameters and batch statistics, in the exported functions' order.
  saved_model/       the same function through jax2tf as a TensorFlow SavedModel whose
                     serving signature takes uint8 images [b, H, W, C] (padded to a common
                     size) with each one's (height, width) [b, 2], resizes and pads them as
                     the evaluation pipeline does, and returns boxes in original pixels.
  export.json        what a user needs: canvas, vocabulary, categories, decode settings,
                     versions, the checkpoint step and a SHA-256 per file.

`pix2seq_jax.deploy.serving.load(DIR)` runs the first three with JAX alone.

A workdir of an instance task (segmentation, keypoints) exports its decoding instead:

  instances.jax      `jax.export` of `detector.instance_fn`: (weights, canvases [b, S, S, 3]
                     float32, prompts [b, n, 6] int32) -> the task's outputs, b symbolic, n
                     the Predictor's objects per canvas (data.max_instances; keypoints 1).
  weights.npz, export.json as above (export.json also holds the task and its settings).

No SavedModel: the masks and keypoints are read on the host (`inference/instances.py`),
which a TensorFlow-only runtime would have to re-implement; `serving.load` returns a
callable that takes images and boxes as the Predictor does.

A captioning workdir (or task) exports its decoding likewise:

  captions.jax       `jax.export` of `detector.caption_fn`: (weights, canvases [b, S, S, 3]
                     float32) -> (tokens [b, L] int32, token_probs [b, L] float32), b
                     symbolic, L = data.max_text_len, lowered for CPU and CUDA.
  tokenizer.model    the workdir's SentencePiece model (its SHA-256 in export.json), which
                     turns the tokens into text.
  weights.npz, export.json as above (export.json also holds the task, max_text_len and
                     the tokenizer).

No SavedModel either: the text is made on the host by SentencePiece, outside any
TensorFlow graph; `serving.load` returns a callable that gives each image's caption and
score as the Predictor does.

A multi-task workdir (`config.tasks`) exports one of its tasks' programs, `task` (default
its config.task), each as the single-task workdir of that task would be exported.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import pix2seq_jax
from pix2seq_jax.deploy import detector, serving
from pix2seq_jax.deploy import saved_model as saved_model_lib
from pix2seq_jax.inference import instance_predict
from pix2seq_jax.inference import predictor as predictor_lib
from pix2seq_jax.models import build
from pix2seq_jax.runtime import precision

SAVED_MODEL = 'saved_model'
INSTANCE_PROGRAM = 'instances.jax'
CAPTION_PROGRAM = 'captions.jax'
TOKENIZER = 'tokenizer.model'
PLATFORMS = ('cpu', 'cuda')


def detector_file(shape: tuple[int, int], size: int) -> str:
  """The program file of one canvas: detector.jax for the S x S square."""
  return 'detector.jax' if tuple(shape) == (size, size) else f'detector_{shape[0]}x{shape[1]}.jax'


def _flat_detector(predictor: predictor_lib.Predictor) -> tuple[Callable, list[np.ndarray]]:
  """(list of weight arrays, canvases) -> detections, and those weights as numpy."""
  detect = detector.detector_fn(predictor.config,
                                build.model_graphdef(predictor.config, predictor.vocab),
                                predictor.vocab, predictor.categories, predictor.step)
  weights, trees = _weights(predictor)

  def run(weights, canvases):
    return detect(*trees(weights), canvases)

  return run, weights


def _weights(predictor: predictor_lib.Predictor) -> tuple[list[np.ndarray], Callable]:
  """The parameters and batch statistics as numpy leaves, and the function that puts
  such a list back into their trees."""
  leaves, treedef = jax.tree.flatten((predictor.params, predictor.batch_stats))
  return ([np.asarray(jax.device_get(leaf)) for leaf in leaves],
          lambda weights: jax.tree.unflatten(treedef, list(weights)))


def _write_program(run: Callable, args: list, path: str, platforms: tuple[str, ...],
                   matmul_precision: str) -> None:
  """`jax.export` of `run` at `matmul_precision` for the argument specs `args`, serialised
  to `path`."""
  exported = jax.export.export(jax.jit(precision.traced(run, matmul_precision)),
                               platforms=platforms)(*args)
  with open(path, 'wb') as f:
    f.write(exported.serialize())


def _manifest_head(predictor: predictor_lib.Predictor, workdir: str) -> dict:
  """The fields every export's manifest starts with."""
  return {
      'format': serving.FORMAT,
      'task': predictor.config.task,
      'workdir_tasks': list(predictor.tasks),
      'pix2seq_jax_version': pix2seq_jax.__version__,
      'jax_version': jax.__version__,
      'workdir': os.path.abspath(workdir),
      'checkpoint_step': predictor.step,
      'canvas_size': predictor.size,
  }


def _export_instances(predictor: predictor_lib.Predictor, workdir: str, output: str,
                      platforms: tuple[str, ...]) -> dict:
  """The instance task's decoding program (INSTANCE_PROGRAM), weights and manifest."""
  config, task = predictor.config, predictor.task
  decode = detector.instance_fn(config, build.model_graphdef(config, predictor.vocab), task,
                                predictor.step)
  weights, trees = _weights(predictor)

  def run(weights, canvases, prompts):
    return decode(*trees(weights), canvases, prompts)

  n = instance_predict.objects_per_call(task, config.data.max_instances)
  size = predictor.size
  os.makedirs(output, exist_ok=True)
  np.savez(os.path.join(output, serving.WEIGHTS), *weights)
  batch = jax.export.symbolic_shape('b')[0]
  logging.info('Exporting the %s decoder on the %dx%d canvas (%s) ...', config.task, size,
               size, INSTANCE_PROGRAM)
  _write_program(run, [[jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
                       jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
                       jax.ShapeDtypeStruct((batch, n, task.prompt_length), jnp.int32)],
                 os.path.join(output, INSTANCE_PROGRAM), platforms,
                 config.train.matmul_precision)
  settings = {k: getattr(task, k) for k in ('mode', 'temperature', 'top_k', 'top_p',
                                           'max_points', 'num_samples', 'threshold',
                                           'suppress_invisible', 'points_score_weight')
              if hasattr(task, k)}
  manifest = {
      **_manifest_head(predictor, workdir),
      'program': {'file': INSTANCE_PROGRAM, 'objects_per_canvas': n,
                  'prompt_length': task.prompt_length},
      'task_settings': settings,
      'saved_model': None,
      'platforms': list(platforms),
      'num_weights': len(weights),
      'vocabulary': _vocabulary(predictor),
      'categories': predictor.categories.to_json(),
      'max_instances': config.data.max_instances,
      'outputs': ({'points': '[b, n * k, 2P] float32 (y, x) normalised to the canvas, or '
                             '-1 / -2 / -3 (end, separator, invisible)'}
                  if 'max_points' in settings else
                  {'tokens': '[b, n, 34] int32', 'points': '[b, n, 34] float32',
                   'points_score': '[b, n] float32'}),
      'sha256': {name: serving.sha256(os.path.join(output, name))
                 for name in (serving.WEIGHTS, INSTANCE_PROGRAM)},
  }
  with open(os.path.join(output, serving.MANIFEST), 'w') as f:
    json.dump(manifest, f, indent=1)
  return manifest


def _vocabulary(predictor: predictor_lib.Predictor) -> dict:
  """What serving needs to rebuild the vocabulary (with the manifest's categories)."""
  vocab = predictor.vocab
  return {'layout': vocab.layout, 'num_classes': vocab.num_classes,
          'num_bins': vocab.num_bins, 'size': vocab.size, 'coord_offset': vocab.coord_offset,
          'padding': vocab.padding}


def _export_captions(predictor: predictor_lib.Predictor, workdir: str, output: str,
                     platforms: tuple[str, ...]) -> dict:
  """Captioning's decoding program (CAPTION_PROGRAM), weights, tokenizer and manifest."""
  config, task = predictor.config, predictor.task
  decode = detector.caption_fn(config, build.model_graphdef(config, predictor.vocab), task,
                               predictor.step)
  weights, trees = _weights(predictor)

  def run(weights, canvases):
    return decode(*trees(weights), canvases)

  size = predictor.size
  os.makedirs(output, exist_ok=True)
  np.savez(os.path.join(output, serving.WEIGHTS), *weights)
  shutil.copyfile(predictor.tokenizer.path, os.path.join(output, TOKENIZER))
  batch = jax.export.symbolic_shape('b')[0]
  logging.info('Exporting the captioning decoder on the %dx%d canvas (%s) ...', size, size,
               CAPTION_PROGRAM)
  _write_program(run, [[jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
                       jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)],
                 os.path.join(output, CAPTION_PROGRAM), platforms,
                 config.train.matmul_precision)
  files = (serving.WEIGHTS, CAPTION_PROGRAM, TOKENIZER)
  digests = {name: serving.sha256(os.path.join(output, name)) for name in files}
  manifest = {
      **_manifest_head(predictor, workdir),
      'program': {'file': CAPTION_PROGRAM},
      'max_text_len': config.data.max_text_len,
      'tokenizer': {'file': TOKENIZER, 'sha256': digests[TOKENIZER],
                    'vocab_size': predictor.tokenizer.vocab_size},
      'task_settings': {k: getattr(task, k) for k in ('mode', 'temperature', 'top_k', 'top_p',
                                                       'length', 'num_pieces')},
      'saved_model': None,
      'platforms': list(platforms),
      'num_weights': len(weights),
      'vocabulary': dict(_vocabulary(predictor), text_offset=predictor.vocab.text_offset),
      'categories': predictor.categories.to_json(),
      'outputs': {'tokens': '[b, max_text_len] int32: text tokens (text_offset + piece id) '
                            'up to the caption\'s EOS, then padding 0',
                  'token_probs': '[b, max_text_len] float32, 0 past the EOS'},
      'sha256': digests,
  }
  with open(os.path.join(output, serving.MANIFEST), 'w') as f:
    json.dump(manifest, f, indent=1)
  return manifest


def export_workdir(workdir: str, output: str, decode: dict | None = None,
                   step: int | None = None, saved_model: bool | None = None,
                   platforms: tuple[str, ...] = PLATFORMS, task: str | None = None) -> dict:
  """Writes the export of `workdir`'s checkpoint (default: the latest) to `output`;
  returns the manifest. `decode` overrides the workdir's decode settings (detection's).
  `saved_model` (default: for detection) also writes the TensorFlow SavedModel, which the
  other tasks do not have. `task`: which task of a multi-task workdir (default its
  config.task)."""
  predictor = predictor_lib.Predictor(workdir, step=step, decode=decode, task=task)
  if predictor.task is not None:
    if saved_model:
      what = ('its captions are made on the host by SentencePiece'
              if predictor.tokenizer is not None else
              'its masks and keypoints are read on the host')
      raise ValueError(f'{workdir} was trained for {predictor.config.task}: its export is a '
                       f'jax.export program only ({what}); export it without saved_model.')
    if predictor.tokenizer is not None:
      return _export_captions(predictor, workdir, output, platforms)
    return _export_instances(predictor, workdir, output, platforms)
  saved_model = True if saved_model is None else saved_model
  run, weights = _flat_detector(predictor)
  size = predictor.size
  os.makedirs(output, exist_ok=True)
  weight_specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]
  np.savez(os.path.join(output, serving.WEIGHTS), *weights)  # arr_0, arr_1, ... in order
  files = [serving.WEIGHTS]
  batch = jax.export.symbolic_shape('b')[0]
  canvases = []
  for shape in predictor.canvas_shapes:
    name = detector_file(shape, size)
    logging.info('Exporting the detector on the %dx%d canvas (%s) ...', *shape, name)
    _write_program(run, [weight_specs, jax.ShapeDtypeStruct((batch, *shape, 3), jnp.float32)],
                   os.path.join(output, name), platforms,
                   predictor.config.train.matmul_precision)
    canvases.append({'shape': list(shape), 'file': name})
    files.append(name)
  if saved_model:
    target = os.path.join(output, SAVED_MODEL)
    shutil.rmtree(target, ignore_errors=True)
    logging.info('Writing the TensorFlow SavedModel (%s) ...', target)
    saved_model_lib.save(run, weights, size, predictor.config.decode.mode, target, platforms)
  config = predictor.config
  vocab = predictor.vocab
  manifest = {
      **_manifest_head(predictor, workdir),
      'canvases': canvases,
      'saved_model': {'folder': SAVED_MODEL, 'canvas': [size, size]} if saved_model else None,
      'platforms': list(platforms),
      'max_detections': (config.decode.max_objects or config.data.max_instances),
      'num_weights': len(weights),
      'vocabulary': {'layout': vocab.layout, 'num_classes': vocab.num_classes,
                     'num_bins': vocab.num_bins, 'size': vocab.size,
                     'class_tokens': vocab.class_tokens.tolist(),
                     'coord_offset': vocab.coord_offset, 'eos': vocab.eos,
                     'start': vocab.start, 'padding': vocab.padding},
      'categories': predictor.categories.to_json(),
      'decode': config.decode.to_dict(),
      'outputs': {
          'boxes': '[b, K, 4] float32 (ymin, xmin, ymax, xmax) normalised to the '
                   'canvas_size square',
          'classes': '[b, K] int32 category ids, -1 past num_detections',
          'scores': '[b, K] float32, 0 past num_detections',
          'num_detections': '[b] int32'},
      'sha256': {name: serving.sha256(os.path.join(output, name)) for name in files},
  }
  with open(os.path.join(output, serving.MANIFEST), 'w') as f:
    json.dump(manifest, f, indent=1)
  return manifest
