"""From image batches to tokens: decoding jitted over the device mesh, one executable per
input shape. Shared by evaluation (the train loop, --mode=eval) and the Predictor.

`DecodeFn` decodes detection (one start token per image); `InstanceDecodeFn` decodes an
instance task (segmentation, keypoints) from per-object prompts [B, n, 6] (each object's
box and class), every image encoded once for its n * k rows; `CaptionDecodeFn` decodes
captioning (its one prompt token per image)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.config import resolve
from pix2seq_jax.inference import decoding
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import jit_cache, precision, xla_cpu_flags
from pix2seq_jax.tasks import detection
from pix2seq_jax.tasks import task as task_lib
from pix2seq_jax.tasks import vocab as vocab_lib


class DecodeFn:
  """(params, batch_stats, images [B, H, W, 3], step) -> (tokens [B, L], scores [B, L]).

  The outputs are the detection task's (`DetectionTask.outputs`), ready for `detections.parse`,
  sharded over the batch like the images. Parameters may come replicated or sharded
  (train.shard_params): they are gathered inside. Each new image shape is compiled once,
  ahead of time, for the parameters' placement at that first call (with the inference
  compiler options of xla_cpu_flags.py on CPU), traced at `train.matmul_precision`
  (precision.py); `compilations`
  counts them. DecodeFns of one model and decode settings in a process share their
  executables (jit_cache.py).
  """

  def __init__(self, config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
               vocab: vocab_lib.Vocabulary, mesh: Mesh):
    resolve.require_frozen(config, 'DecodeFn')
    dec = config.decode
    length = vocab_lib.sequence_length(dec.max_objects or config.data.max_instances)
    settings = (length, dec.temperature, dec.top_k, dec.top_p, dec.score, dec.mode,
                config.train.matmul_precision)
    self._seed = config.seed
    self._jitted, self._executables = jit_cache.cached(
        ('decode', graphdef, vocab, mesh, settings),
        lambda: (_jitted_decode(graphdef, vocab, mesh, *settings), {}))
    self._shapes: set = set()
    self._options = xla_cpu_flags.inference_compiler_options(mesh.devices.flat[0].platform)

  @property
  def compilations(self) -> int:
    """How many input shapes this function has been called with (one executable each)."""
    return len(self._shapes)

  def _run(self, params, batch_stats, inputs: tuple[jax.Array, ...], step: int) -> Any:
    """The executable for `inputs`' shapes (compiled on first use), called with the
    sampling key of `step` (greedy decoding ignores it)."""
    rng = jax.random.fold_in(jax.random.key(self._seed), step)
    key = tuple((x.shape, x.dtype) for x in inputs)
    self._shapes.add(key)
    if key not in self._executables:
      self._executables[key] = self._jitted.lower(params, batch_stats, *inputs, rng).compile(
          compiler_options=self._options)
    return self._executables[key](params, batch_stats, *inputs, rng)

  def __call__(self, params, batch_stats, images: jax.Array,
               step: int = 0) -> tuple[jax.Array, jax.Array]:
    """Decodes with the sampling key of `step` (greedy decoding ignores it)."""
    return self._run(params, batch_stats, (images,), step)


class InstanceDecodeFn(DecodeFn):
  """(params, batch_stats, images [B, H, W, 3], prompts [B, n, 6], step) -> the instance
  task's outputs (`SegmentationTask.outputs`: points [B, n * k, 2P]; `KeypointTask.outputs`:
  tokens, points [B, n, 34] and points_score [B, n]), sharded over B like the images.

  Each object's prompt is decoded `task.num_samples` (k) times for segmentation (its
  samples adjacent), once for keypoints; a padding object's prompt (all 0) is decoded
  too and its rows are not read. The sampling settings are the task's (`sampling()`);
  compiled and cached as `DecodeFn`.
  """

  def __init__(self, config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
               task: task_lib.InstanceTask, mesh: Mesh):
    resolve.require_frozen(config, 'InstanceDecodeFn')
    self._seed = config.seed
    settings = (task, config.train.matmul_precision)
    self._jitted, self._executables = jit_cache.cached(
        ('decode_instances', graphdef, mesh, settings),
        lambda: (_jitted_instance_decode(graphdef, mesh, *settings), {}))
    self._shapes = set()
    self._options = xla_cpu_flags.inference_compiler_options(mesh.devices.flat[0].platform)

  def __call__(self, params, batch_stats, images: jax.Array, prompts: jax.Array,
               step: int = 0) -> Any:
    """Decodes every object's prompt with the sampling key of `step`."""
    return self._run(params, batch_stats, (images, prompts), step)


class CaptionDecodeFn(DecodeFn):
  """(params, batch_stats, images [B, H, W, 3], step) -> (tokens [B, L], token_probs
  [B, L]) of the captioning task (`CaptioningTask.outputs`), sharded over B like the
  images; its sampling settings are the task's (`sampling()`); compiled and cached as
  `DecodeFn`."""

  def __init__(self, config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
               task: Any, mesh: Mesh):
    resolve.require_frozen(config, 'CaptionDecodeFn')
    self._seed = config.seed
    settings = (task, config.train.matmul_precision)
    self._jitted, self._executables = jit_cache.cached(
        ('decode_captions', graphdef, mesh, settings),
        lambda: (_jitted_caption_decode(graphdef, mesh, *settings), {}))
    self._shapes = set()
    self._options = xla_cpu_flags.inference_compiler_options(mesh.devices.flat[0].platform)


def _jitted_caption_decode(graphdef: nnx.GraphDef, mesh: Mesh, task: Any,
                           matmul_precision: str) -> Callable:
  def run(params, batch_stats, images, rng):
    params, batch_stats = mesh_lib.gathered((params, batch_stats), mesh)
    model = nnx.merge(graphdef, params, batch_stats)
    state = decoding.decode(model, images, task, length=task.length, rng=rng,
                            **task.sampling())
    return task.outputs(state.tokens, state.token_probs, state.task_state)

  return jax.jit(precision.traced(run, matmul_precision),
                 in_shardings=(None, None, mesh_lib.batch_sharded(mesh),
                               mesh_lib.replicated(mesh)),
                 out_shardings=mesh_lib.batch_sharded(mesh))


def _jitted_decode(graphdef: nnx.GraphDef, vocab: vocab_lib.Vocabulary, mesh: Mesh,
                   length: int, temperature: float, top_k: int, top_p: float,
                   score: str, mode: str, matmul_precision: str) -> Callable:
  task = detection.DetectionTask(vocab, mode, score)

  def run(params, batch_stats, images, rng):
    params, batch_stats = mesh_lib.gathered((params, batch_stats), mesh)
    model = nnx.merge(graphdef, params, batch_stats)
    state = decoding.decode(model, images, task, length=length, temperature=temperature,
                            top_k=top_k, top_p=top_p, rng=rng, mode=mode)
    return task.outputs(state.tokens, state.token_probs, state.task_state)

  return jax.jit(precision.traced(run, matmul_precision),
                 in_shardings=(None, None, mesh_lib.batch_sharded(mesh),
                               mesh_lib.replicated(mesh)),
                 out_shardings=mesh_lib.batch_sharded(mesh))


def _jitted_instance_decode(graphdef: nnx.GraphDef, mesh: Mesh, task: task_lib.InstanceTask,
                            matmul_precision: str) -> Callable:
  samples = int(getattr(task, 'num_samples', 1))

  def run(params, batch_stats, images, prompts, rng):
    params, batch_stats = mesh_lib.gathered((params, batch_stats), mesh)
    model = nnx.merge(graphdef, params, batch_stats)
    batch = images.shape[0]
    rows = jnp.repeat(prompts.reshape(-1, prompts.shape[-1]), samples, axis=0)  # [B*n*k, 6]
    state = decoding.decode(model, images, task, length=task.length, rng=rng,
                            prompt=rows, **task.sampling())
    outputs = task.outputs(state.tokens, state.token_probs, state.task_state)
    return jax.tree.map(lambda x: x.reshape(batch, -1, *x.shape[1:]), outputs)  # [B, n*k, ...]

  return jax.jit(precision.traced(run, matmul_precision),
                 in_shardings=(None, None, mesh_lib.batch_sharded(mesh),
                               mesh_lib.batch_sharded(mesh), mesh_lib.replicated(mesh)),
                 out_shardings=mesh_lib.batch_sharded(mesh))


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards], axis=0)
