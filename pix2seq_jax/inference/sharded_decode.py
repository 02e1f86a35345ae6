"""From image batches to tokens: decoding jitted over the device mesh, one executable per
image shape. Shared by evaluation (the train loop, --mode=eval) and the Predictor."""

from __future__ import annotations

from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.config import resolve
from pix2seq_jax.inference import decoding
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import jit_cache, precision, xla_cpu_flags
from pix2seq_jax.tasks import detection
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
    """How many image shapes this DecodeFn has been called with (one executable each)."""
    return len(self._shapes)

  def __call__(self, params, batch_stats, images: jax.Array,
               step: int = 0) -> tuple[jax.Array, jax.Array]:
    """Decodes with the sampling key of `step` (greedy decoding ignores it)."""
    rng = jax.random.fold_in(jax.random.key(self._seed), step)
    key = (images.shape, images.dtype)
    self._shapes.add(key)
    if key not in self._executables:
      self._executables[key] = self._jitted.lower(params, batch_stats, images, rng).compile(
          compiler_options=self._options)
    return self._executables[key](params, batch_stats, images, rng)


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


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards], axis=0)
