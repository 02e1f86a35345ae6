"""One prepared check of a GPU machine: speed, memory and numerics, one JSON line per stage.

On the lent GPU machine: the device tool runs commands in the repository root of a copy
of this working tree; its image has jax 0.11.2 with CUDA 13, flax, numpy and absl, but
no TensorFlow and no ml-collections, and nothing can be installed from a registry there.
First, here (with network), in the repository root:

  echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .whl \
      ml-collections==1.1.0 optax==0.2.8

then the device tool's run with carry=[".whl"] and timeout_s=600 (the package runs from
the source tree, not installed; the image's jax and flax, the pinned optax):

  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \
  PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out=$OUT/gpu_check.jsonl

It ends within --budget_s (470 s by default; stages that no longer fit are reported as
skipped, and `--stages=memory:vit_l,decode` runs those stages only, e.g. in a second
call). `--cpu` runs every stage at tiny sizes on the CPU in about half a minute
(tests/test_gpu_check.py runs it in CI).

Each stage runs in its own process (this script with --stage=NAME) with its own time
limit (TIMEOUTS), so that a crash or a hang loses that stage only. A stage that aborts
inside XLA (SIGABRT, a failed "Check", a Triton error: an H100 trial on 2026-11-25
aborted the bf16 R50 train step in `triton_tiling_propagation`) runs once more with
TRITON_WORKAROUND added to XLA_FLAGS; its line then has "retried_with" (and the first
try's error), and the later stages start with the flag ("xla_flags_added"). On GPU the
stages that are not timed (bf16_vs_f32, gpu_vs_cpu, memory:*) compile with
--xla_gpu_autotune_level=0: autotuning a large step takes minutes and decides speed, not
results or buffers. Nothing imported here needs TensorFlow; each stage says whether it
was imported ("tensorflow_imported").

Every line has "stage", "seconds" (the stage's wall time, process start included) and
"returncode"; a failed stage has "error" and "stderr_tail" instead of results; the last
line, "summary", lists the stages that failed or were skipped. The stages at GPU sizes
(--cpu: CPU_SIZES, the smallest model vit_nano at 64 px, 9 classes, 64 bins, 8 objects,
batches of 4 and 8, a few steps, 11-token decoding, one memory stage):

  header       date, python, jax, jaxlib, flax, optax, numpy and CUDA plugin versions,
               backend, device_kind, device_count, XLA_FLAGS, the device's memory limit
               (memory_stats()['bytes_limit']) and the peak dense bf16 FLOP/s assumed
               for its kind (PEAK_BF16_FLOPS; null with peak_reason if unknown).
  train_small  R50 at 640 px, bf16, COCO sizes (80 classes, 1000 bins, 100 objects:
  train_large  501 tokens), 16 and 32 images per device: 32 is the default config's batch
               and that of the 2026-11-25 trial; 16 shows how much of the step is fixed
               cost (the host's share grows as the batch shrinks), and still runs if 32
               does not fit. Batches are the pipeline's training layout (uint8 sources
               with their resampling, made on the device: `production_batch`).
               first_step_seconds: trace + compile + run of step 0.
               loop_seconds_per_step: steps as loop.py runs them (host batches placed
               ahead by mesh.placed_batches, the TrainStep called with the step index,
               its inputs made on the host), waited for at the end of each round of
               `steps` steps; device_seconds_per_step: the same jitted step on a batch
               and inputs already on the devices, waited for likewise;
               host_stall_seconds_per_step = loop - device (medians over rounds).
               images_per_second (loop), peak_bytes_in_use (memory_stats, this process).
               flops_per_step: XLA:CPU's cost analysis of the same step lowered for one
               CPU device at the same global batch (XLA:GPU's leaves out convolutions);
               mfu = flops_per_step / loop seconds / (devices * peak), mfu_device the
               same over device seconds; null with mfu_reason where the peak is unknown.
  decode       the evaluator's decode function (sharded_decode.DecodeFn) on R50 640 px,
               float32 at the default matmul precision, decode.mode 'official' (all
               501 tokens are decoded, so the work does not depend on when random
               weights emit EOS), at batch 1 (on one device) and 64: per batch
               seconds_per_batch (median of `repeats` calls, each waited for),
               images_per_second, tokens_per_second, first_call_seconds (compile
               included).
  bf16_vs_f32  the same 5 steps (same initial state and batches) in bfloat16 and in
               float32 at the highest matmul precision: R50 at 128 px, batch 8 per
               device (small enough to compile in a minute): losses of each and their
               max_relative_difference (of the gradient norms too).
  gpu_vs_cpu   the tiny ResNet config (64 px, batch 8 per device) for 3 steps on the
               default devices and on one CPU device of this process, both in float32 at
               the highest matmul precision: losses of each and max_relative_difference.
  memory:V     for V in r50_c4, vit_b, vit_l: the bf16 train step at 640 px and 16 images
               per device lowered on an abstract state (jax.eval_shape: nothing is
               allocated) and compiled, not run; compiled.memory_analysis()'s argument,
               output, alias and temp bytes, total_bytes = argument + output - alias +
               temp, the device's bytes_limit and fits.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from pix2seq_jax.config import default, resolve
from pix2seq_jax.inference import sharded_decode
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import compilation_cache
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import optimizer
from pix2seq_jax.train import state as state_lib
from pix2seq_jax.train import step as step_lib

TRITON_WORKAROUND = '--xla_gpu_enable_triton_gemm=false'
NO_AUTOTUNE = '--xla_gpu_autotune_level=0'
UNTUNED_STAGES = ('bf16_vs_f32', 'gpu_vs_cpu', 'memory')  # not timed: no autotuning on GPU
RESULT_PREFIX = 'GPU_CHECK_RESULT '

# Dense (no sparsity) bf16 tensor FLOP/s per device from the vendors' datasheets, matched
# as substrings of `device.device_kind`, first match first.
PEAK_BF16_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100 NVL', 835e12),
    ('H200 NVL', 835e12),
    ('H100', 989.4e12),  # SXM ('NVIDIA H100 80GB HBM3')
    ('H200', 989.4e12),  # the H100 SXM's silicon with more memory ('NVIDIA H200')
    ('A100', 312e12),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What each stage runs: the GPU's sizes, or tiny ones for --cpu."""

  variant: str  # train_small / train_large and decode
  image_size: int
  num_classes: int
  num_bins: int
  objects: int  # data.max_instances: sequences of 5 * objects + 1 tokens
  per_device_batches: tuple[int, int]  # train_small, train_large
  steps: int  # timed steps per round
  rounds: int
  decode_batches: tuple[int, int]
  decode_objects: int
  repeats: int  # timed decode calls per batch size
  agreement_variant: str  # bf16_vs_f32
  agreement_image_size: int
  agreement_steps: int
  compared_variant: str  # gpu_vs_cpu, at CPU_SIZES' other sizes
  memory_variants: tuple[str, ...]
  memory_image_size: int
  memory_per_device_batch: int


GPU_SIZES = Sizes(variant='r50', image_size=640, num_classes=80, num_bins=1000, objects=100,
                  per_device_batches=(16, 32), steps=10, rounds=3, decode_batches=(1, 64),
                  decode_objects=100, repeats=3, agreement_variant='r50',
                  agreement_image_size=128, agreement_steps=5, compared_variant='tiny',
                  memory_variants=('r50_c4', 'vit_b', 'vit_l'), memory_image_size=640,
                  memory_per_device_batch=16)
CPU_SIZES = Sizes(variant='vit_nano', image_size=64, num_classes=9, num_bins=64, objects=8,
                  per_device_batches=(4, 8), steps=5, rounds=3, decode_batches=(1, 8),
                  decode_objects=2, repeats=1, agreement_variant='vit_nano',
                  agreement_image_size=64, agreement_steps=5, compared_variant='vit_nano',
                  memory_variants=('vit_nano',), memory_image_size=64,
                  memory_per_device_batch=8)
AGREEMENT_BATCH = 8  # per device, bf16_vs_f32 and gpu_vs_cpu
COMPARED_STEPS = 3  # gpu_vs_cpu

# Stage -> time limit in seconds (GPU; --cpu: CPU_TIMEOUT each).
TIMEOUTS = {'header': 60, 'train_small': 180, 'train_large': 180, 'decode': 150,
            'bf16_vs_f32': 120, 'gpu_vs_cpu': 90, 'memory': 120}
CPU_TIMEOUT = 150


# ---------------------------------------------------------------------------------------
# Building blocks (also used by tests/test_gpu_check.py)


def peak_bf16_flops(device_kind: str) -> float | None:
  """The dense bf16 FLOP/s of one device of `device_kind`, or None when not in the table."""
  for name, peak in PEAK_BF16_FLOPS:
    if name in device_kind:
      return peak
  return None


def make_config(variant: str, image_size: int, batch_size: int, sizes: Sizes,
                compute_dtype: str = 'bfloat16', objects: int | None = None,
                matmul_precision: str = 'default') -> ml_collections.FrozenConfigDict:
  """The default config at these sizes, frozen as a run's; dropout and DropPath stay on.

  Warmup is one step, so that a few steps move the parameters (bf16_vs_f32, gpu_vs_cpu).
  """
  config = default.get_config()
  config.model.variant = variant
  config.data.image_size = image_size
  config.data.max_instances = sizes.objects if objects is None else objects
  config.data.num_bins = sizes.num_bins
  config.train.batch_size = batch_size
  config.train.compute_dtype = compute_dtype
  config.train.matmul_precision = matmul_precision
  config.train.warmup_steps = 1
  config.decode.mode = 'official'  # all tokens decoded: work independent of the weights
  return resolve.resolve(config)


def production_batch(rng: np.random.Generator, batch_size: int, image_size: int,
                     length: int, vocab_size: int) -> dict[str, np.ndarray]:
  """A training batch in the layout `pipeline.train_batches` emits (data/pipeline.py):
  uint8 sources [B, S, S, 3] zero-padded beyond source_extent [B, 2], resample [B, 2, 2]
  (per axis, output pixel 0's source position and the step: each row scaled from its
  source to its extent [B, 2]), tokens and weights [B, L], image_id, original_size, scale.
  """
  size = image_size
  source_extent = rng.integers(size // 4, size + 1, (batch_size, 2)).astype(np.int32)
  extent = rng.integers(size // 2, size + 1, (batch_size, 2)).astype(np.int32)
  step = (source_extent / extent).astype(np.float32)  # source pixels per output pixel
  resample = np.stack([0.5 * step, step], axis=-1).astype(np.float32)  # [B, 2, 2]
  image = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
  rows, cols = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
  inside = (rows < source_extent[:, 0, None, None]) & (cols < source_extent[:, 1, None, None])
  image *= inside[..., None].astype(np.uint8)
  shape = (batch_size, length)
  return {
      'image': image, 'source_extent': source_extent, 'resample': resample,
      'extent': extent,
      'input_tokens': rng.integers(0, vocab_size, shape).astype(np.int32),
      'target_tokens': rng.integers(0, vocab_size, shape).astype(np.int32),
      'loss_weights': np.ones(shape, np.float32),
      'image_id': np.arange(batch_size, dtype=np.int64),
      'original_size': source_extent.copy(),
      'scale': (extent[:, 1] / source_extent[:, 1]).astype(np.float32),
  }


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves (arrays, numpy scalars, keys) with `sharding`,
  in the dtypes JAX would place them as (int64 -> int32 without x64)."""
  def abstract(x):
    dtype = x.dtype
    if not jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
      dtype = jax.dtypes.canonicalize_dtype(dtype)
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)
  return jax.tree.map(abstract, tree)


def lowered_flops(jitted: Callable, *args) -> float:
  """XLA's FLOP count of `jitted` lowered for `args` (abstract or real; their devices
  choose the backend), from the lowered module's cost analysis; from the compiled one
  where a backend gives none before compiling."""
  lowered = jitted.lower(*args)
  cost = lowered.cost_analysis()
  if not cost or 'flops' not in (cost[0] if isinstance(cost, (list, tuple)) else cost):
    cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def step_inputs_like(train_step: step_lib.TrainStep, mesh: jax.sharding.Mesh) -> Any:
  """Abstract values of the train step's per-step inputs besides state and batch,
  replicated on `mesh` (nothing allocated)."""
  return abstract_like(jax.eval_shape(lambda: train_step.inputs(0)),
                       mesh_lib.replicated(mesh))


def train_step_flops(config: ml_collections.FrozenConfigDict, vocab: vocab_lib.Vocabulary,
                     host_batch: dict[str, np.ndarray]) -> float:
  """FLOPs of one train step of `config` on the global `host_batch`, counted by XLA:CPU
  on the same step lowered for one CPU device (nothing compiled or allocated)."""
  mesh = mesh_lib.make_mesh(jax.devices('cpu')[:1])
  tx = optimizer.make_optimizer(config)
  train_step = step_lib.train_step_for(config, build.model_graphdef(config, vocab), mesh, tx)
  state = state_lib.abstract_train_state(config, vocab, mesh, tx)
  batch = abstract_like(host_batch, mesh_lib.batch_sharded(mesh))
  return lowered_flops(train_step.jitted, state, batch, *step_inputs_like(train_step, mesh))


def _vocab(sizes: Sizes) -> vocab_lib.Vocabulary:
  """The compact vocabulary of `sizes`' classes and bins."""
  return vocab_lib.Vocabulary(sizes.num_classes, sizes.num_bins)


def _blocked_seconds(fn: Callable[[], Any]) -> float:
  """Seconds of `fn()` until its outputs are ready on the devices."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def train_losses(config: ml_collections.FrozenConfigDict, vocab: vocab_lib.Vocabulary,
                 mesh: jax.sharding.Mesh,
                 host_batches: list[dict[str, np.ndarray]]) -> dict[str, list[float]]:
  """Losses and gradient norms of one step per host batch from `config`'s initial state
  on `mesh`."""
  tx = optimizer.make_optimizer(config)
  state = state_lib.create_train_state(config, vocab, mesh, tx)
  train_step = step_lib.train_step_for(config, build.model_graphdef(config, vocab), mesh, tx)
  losses, grad_norms = [], []
  for index, batch in enumerate(host_batches):
    state, metrics = train_step(state, mesh_lib.put_batch(batch, mesh), index)
    scalars = jax.device_get(metrics)
    losses.append(float(scalars['loss']))
    grad_norms.append(float(scalars['grad_norm']))
  return {'losses': losses, 'grad_norms': grad_norms}


def max_relative_difference(a: list[float], b: list[float]) -> float:
  """max |a - b| / |b| over the pairs of `a` and `b`."""
  return float(max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)))


# ---------------------------------------------------------------------------------------
# Stages: each returns its JSON object, run in a process of its own


def _version(name: str) -> str | None:
  """The installed version of distribution `name`, or None."""
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def stage_header(sizes: Sizes) -> dict:
  """Date, versions, backend and devices (`sizes` is not used)."""
  del sizes
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  peak = peak_bf16_flops(device.device_kind)
  result = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'python': platform.python_version(), 'jax': jax.__version__,
      'jaxlib': _version('jaxlib'), 'flax': _version('flax'), 'optax': _version('optax'),
      'numpy': np.__version__, 'ml_collections': _version('ml-collections'),
      'cuda_plugin': _version('jax-cuda13-plugin') or _version('jax-cuda12-plugin'),
      'backend': jax.default_backend(), 'device_kind': device.device_kind,
      'device_count': jax.device_count(), 'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(),
      'platform_version': getattr(device.client, 'platform_version', None),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'bytes_limit': stats.get('bytes_limit'), 'peak_bf16_flops_per_device': peak,
  }
  if peak is None:
    result['peak_reason'] = f'no dense bf16 peak known for device kind {device.device_kind!r}'
  return result


def stage_train(sizes: Sizes, per_device_batch: int) -> dict:
  """The bf16 train step at `per_device_batch` images per device, as loop.py runs it."""
  mesh = mesh_lib.make_mesh()
  devices = mesh.size
  batch_size = per_device_batch * devices
  config = make_config(sizes.variant, sizes.image_size, batch_size, sizes)
  vocab = _vocab(sizes)
  tx = optimizer.make_optimizer(config)
  state = state_lib.create_train_state(config, vocab, mesh, tx)
  train_step = step_lib.train_step_for(config, build.model_graphdef(config, vocab), mesh, tx)
  rng = np.random.default_rng(0)
  length = vocab_lib.sequence_length(sizes.objects)
  host = [production_batch(rng, batch_size, sizes.image_size, length, vocab.size)
          for _ in range(2)]  # the loop copies a new host batch every step
  index = 0

  def production_round() -> float:
    """Seconds per step of `sizes.steps` steps as loop.py's loop runs them: host batches
    placed ahead by mesh.placed_batches, the TrainStep called with the step's index."""
    nonlocal state, index
    order = [host[(index + i) % 2] for i in range(sizes.steps)]
    start = time.perf_counter()
    for batch in mesh_lib.placed_batches(iter(order), mesh):
      state, metrics = train_step(state, batch, index)
      index += 1
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / sizes.steps

  def device_round() -> float:
    """Seconds per step of the same jitted step on inputs already on the devices."""
    nonlocal state, index
    placed = mesh_lib.put_batch(host[index % 2], mesh)
    inputs = jax.device_put(train_step.inputs(index), mesh_lib.replicated(mesh))
    jax.block_until_ready((placed, inputs))
    start = time.perf_counter()
    for _ in range(sizes.steps):
      state, metrics = train_step.jitted(state, placed, *inputs)
      index += 1
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / sizes.steps

  start = time.perf_counter()
  state, metrics = train_step(state, mesh_lib.put_batch(host[0], mesh), 0)
  jax.block_until_ready(metrics)
  first_step_seconds = time.perf_counter() - start
  index = 1
  production_round()  # warm-up of both paths
  device_round()
  loop_rounds, device_rounds = [], []
  for _ in range(sizes.rounds):
    loop_rounds.append(production_round())
    device_rounds.append(device_round())
  loss = float(jax.device_get(metrics['loss']))
  stats = jax.devices()[0].memory_stats() or {}

  start = time.perf_counter()
  flops = train_step_flops(config, vocab, host[0])
  flops_seconds = time.perf_counter() - start
  loop_seconds, device_seconds = float(np.median(loop_rounds)), float(np.median(device_rounds))
  device_kind = jax.devices()[0].device_kind
  peak = peak_bf16_flops(device_kind)
  result = {
      'variant': sizes.variant, 'image_size': sizes.image_size, 'compute_dtype': 'bfloat16',
      'tokens': length, 'devices': devices, 'per_device_batch': per_device_batch,
      'batch_size': batch_size, 'first_step_seconds': first_step_seconds,
      'loop_seconds_per_step': loop_seconds, 'device_seconds_per_step': device_seconds,
      'host_stall_seconds_per_step': loop_seconds - device_seconds,
      'loop_rounds': loop_rounds, 'device_rounds': device_rounds,
      'steps_per_round': sizes.steps, 'images_per_second': batch_size / loop_seconds,
      'images_per_second_device': batch_size / device_seconds, 'loss': loss,
      'peak_bytes_in_use': stats.get('peak_bytes_in_use'),
      'flops_per_step': flops, 'flops_source': 'XLA:CPU cost analysis of the lowered step',
      'flops_count_seconds': flops_seconds, 'peak_bf16_flops_per_device': peak,
      'mfu': None, 'mfu_device': None,
  }
  if peak is None:
    result['mfu_reason'] = f'no dense bf16 peak known for device kind {device_kind!r}'
  else:
    result['mfu'] = flops / loop_seconds / (devices * peak)
    result['mfu_device'] = flops / device_seconds / (devices * peak)
  if not np.isfinite(loss):
    raise FloatingPointError(f'Non-finite loss {loss}: {result}')
  return result


def stage_decode(sizes: Sizes) -> dict:
  """The evaluator's decode function at each of `sizes.decode_batches`."""
  config = make_config(sizes.variant, sizes.image_size, len(jax.devices()), sizes,
                       compute_dtype='float32', objects=sizes.decode_objects)
  vocab = _vocab(sizes)
  graphdef = build.model_graphdef(config, vocab)
  full = mesh_lib.make_mesh()
  state = state_lib.create_train_state(config, vocab, full, optimizer.make_optimizer(config))
  length = vocab_lib.sequence_length(sizes.decode_objects)
  rng = np.random.default_rng(0)
  batches = []
  for batch in sizes.decode_batches:
    # Batch 1 runs on one device; a batch the devices divide, on all of them.
    mesh = full if batch % full.size == 0 else mesh_lib.make_mesh(jax.devices()[:1])
    params, batch_stats = jax.device_put((state.params, state.batch_stats),
                                         mesh_lib.replicated(mesh))
    decode_fn = sharded_decode.DecodeFn(config, graphdef, vocab, mesh)
    images = jax.device_put(
        rng.uniform(size=(batch, sizes.image_size, sizes.image_size, 3)).astype(np.float32),
        mesh_lib.batch_sharded(mesh))
    first = _blocked_seconds(lambda: decode_fn(params, batch_stats, images))
    seconds = float(np.median([_blocked_seconds(lambda: decode_fn(params, batch_stats, images))
                               for _ in range(sizes.repeats)]))
    tokens, _ = decode_fn(params, batch_stats, images)
    batches.append({'batch_size': batch, 'devices': mesh.size, 'first_call_seconds': first,
                    'seconds_per_batch': seconds, 'images_per_second': batch / seconds,
                    'tokens_per_second': batch * length / seconds,
                    'output_shape': list(tokens.shape)})
  return {'variant': sizes.variant, 'image_size': sizes.image_size, 'dtype': 'float32',
          'matmul_precision': config.train.matmul_precision, 'mode': config.decode.mode,
          'tokens_per_image': length, 'batches': batches}


def stage_bf16_vs_f32(sizes: Sizes) -> dict:
  """The same steps in bfloat16 and in float32 at the highest matmul precision."""
  mesh = mesh_lib.make_mesh()
  batch_size = AGREEMENT_BATCH * mesh.size
  vocab = _vocab(sizes)
  rng = np.random.default_rng(1)
  length = vocab_lib.sequence_length(sizes.objects)
  host = [production_batch(rng, batch_size, sizes.agreement_image_size, length, vocab.size)
          for _ in range(sizes.agreement_steps)]
  runs = {dtype: train_losses(
      make_config(sizes.agreement_variant, sizes.agreement_image_size, batch_size, sizes,
                  compute_dtype=dtype, matmul_precision=precision), vocab, mesh, host)
          for dtype, precision in (('float32', 'highest'), ('bfloat16', 'default'))}
  f32, bf16 = runs['float32'], runs['bfloat16']
  return {'variant': sizes.agreement_variant, 'image_size': sizes.agreement_image_size,
          'batch_size': batch_size, 'steps': sizes.agreement_steps,
          'float32_losses': f32['losses'], 'bfloat16_losses': bf16['losses'],
          'max_relative_difference': max_relative_difference(bf16['losses'], f32['losses']),
          'grad_norm_max_relative_difference': max_relative_difference(
              bf16['grad_norms'], f32['grad_norms'])}


def stage_gpu_vs_cpu(sizes: Sizes) -> dict:
  """`sizes.compared_variant` at CPU_SIZES in float32 at the highest matmul precision, the
  same steps on the default devices and on one CPU device of this process."""
  default_mesh = mesh_lib.make_mesh()
  cpu_mesh = mesh_lib.make_mesh(jax.devices('cpu')[:1])
  small = CPU_SIZES
  batch_size = AGREEMENT_BATCH * default_mesh.size
  config = make_config(sizes.compared_variant, small.image_size, batch_size, small,
                       compute_dtype='float32', matmul_precision='highest')
  vocab = _vocab(small)
  rng = np.random.default_rng(2)
  length = vocab_lib.sequence_length(small.objects)
  host = [production_batch(rng, batch_size, small.image_size, length, vocab.size)
          for _ in range(COMPARED_STEPS)]
  device = train_losses(config, vocab, default_mesh, host)
  cpu = train_losses(config, vocab, cpu_mesh, host)
  return {'variant': sizes.compared_variant, 'image_size': small.image_size,
          'batch_size': batch_size, 'backend': jax.default_backend(),
          'matmul_precision': 'highest', 'device_losses': device['losses'],
          'cpu_losses': cpu['losses'],
          'max_relative_difference': max_relative_difference(device['losses'], cpu['losses']),
          'grad_norm_max_relative_difference': max_relative_difference(
              device['grad_norms'], cpu['grad_norms'])}


def stage_memory(sizes: Sizes, variant: str) -> dict:
  """The compiled (not run) bf16 train step's buffers for `variant`."""
  mesh = mesh_lib.make_mesh()
  batch_size = sizes.memory_per_device_batch * mesh.size
  config = make_config(variant, sizes.memory_image_size, batch_size, sizes)
  vocab = _vocab(sizes)
  tx = optimizer.make_optimizer(config)
  train_step = step_lib.train_step_for(config, build.model_graphdef(config, vocab), mesh, tx)
  state = state_lib.abstract_train_state(config, vocab, mesh, tx)
  length = vocab_lib.sequence_length(sizes.objects)
  # Shapes only: the batch of one image tells the layout.
  one = production_batch(np.random.default_rng(0), 1, sizes.memory_image_size, length,
                         vocab.size)
  batch = {k: jax.ShapeDtypeStruct((batch_size, *s.shape[1:]), s.dtype, sharding=s.sharding)
           for k, s in abstract_like(one, mesh_lib.batch_sharded(mesh)).items()}
  start = time.perf_counter()
  compiled = train_step.jitted.lower(state, batch, *step_inputs_like(train_step, mesh)).compile()
  compile_seconds = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
            'temp_size_in_bytes', 'generated_code_size_in_bytes')
  sizes_in_bytes = {name: int(getattr(analysis, name)) for name in fields}
  total = (sizes_in_bytes['argument_size_in_bytes'] + sizes_in_bytes['output_size_in_bytes']
           - sizes_in_bytes['alias_size_in_bytes'] + sizes_in_bytes['temp_size_in_bytes'])
  limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return {'variant': variant, 'image_size': sizes.memory_image_size,
          'compute_dtype': 'bfloat16', 'per_device_batch': sizes.memory_per_device_batch,
          'batch_size': batch_size, 'parameters': params, 'compile_seconds': compile_seconds,
          **sizes_in_bytes, 'total_bytes': total, 'total_gib': total / 2 ** 30,
          'bytes_limit': limit, 'fits': None if limit is None else total <= limit,
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def run_stage(name: str, sizes: Sizes) -> dict:
  """Runs stage `name` in this process; returns its JSON object."""
  if name == 'header':
    result = stage_header(sizes)
  elif name in ('train_small', 'train_large'):
    result = stage_train(sizes, sizes.per_device_batches[name == 'train_large'])
  elif name == 'decode':
    result = stage_decode(sizes)
  elif name == 'bf16_vs_f32':
    result = stage_bf16_vs_f32(sizes)
  elif name == 'gpu_vs_cpu':
    result = stage_gpu_vs_cpu(sizes)
  elif name.startswith('memory:'):
    result = stage_memory(sizes, name.split(':', 1)[1])
  else:
    raise ValueError(f'Unknown stage {name!r}; the stages are {stage_names(sizes)}.')
  result['tensorflow_imported'] = sys.modules.get('tensorflow') is not None
  return result


# ---------------------------------------------------------------------------------------
# The parent: one process per stage, retries, the time budget


def stage_names(sizes: Sizes) -> list[str]:
  """Every stage at `sizes`, in the order they run."""
  return (['header', 'train_small', 'train_large', 'decode', 'bf16_vs_f32', 'gpu_vs_cpu']
          + [f'memory:{variant}' for variant in sizes.memory_variants])


def _with_flag(env: dict[str, str], flag: str) -> dict[str, str]:
  """`env` with `flag` added to its XLA_FLAGS."""
  return {**env, 'XLA_FLAGS': ' '.join([env.get('XLA_FLAGS', ''), flag]).strip()}


def xla_aborted(returncode: int | None, stderr: str) -> bool:
  """Whether a stage process died inside XLA: killed by SIGABRT (a failed CHECK), or its
  error names a failed check or Triton."""
  if returncode in (None, 0):
    return False
  return (returncode in (-signal.SIGABRT, 128 + signal.SIGABRT) or 'Check failed' in stderr
          or 'triton' in stderr.lower())


def attempt(command: list[str], env: dict[str, str], timeout: float) -> dict:
  """Runs `command` in a new process group; kills the group after `timeout` seconds.
  Returns returncode (None on timeout), stdout, stderr and seconds."""
  start = time.perf_counter()
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)
  try:
    stdout, stderr = process.communicate(timeout=timeout)
    returncode = process.returncode
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = process.communicate()
    returncode = None
  return {'returncode': returncode, 'stdout': stdout, 'stderr': stderr,
          'seconds': time.perf_counter() - start}


def stage_line(name: str, run: dict, timeout: float) -> dict:
  """The stage's JSON object from its process's output, or an error object."""
  results = [line[len(RESULT_PREFIX):] for line in run['stdout'].splitlines()
             if line.startswith(RESULT_PREFIX)]
  line = {'stage': name, 'seconds': round(run['seconds'], 2), 'returncode': run['returncode']}
  if run['returncode'] == 0 and results:
    return {**line, **json.loads(results[-1])}
  if run['returncode'] is None:
    error = f'timed out after {timeout:.0f} s (process group killed)'
  elif run['returncode'] < 0:
    error = f'killed by signal {-run["returncode"]}'
  else:
    error = f'exited with {run["returncode"]}' + ('' if run['returncode'] else ', no result')
  return {**line, 'error': error, 'stderr_tail': run['stderr'][-3000:]}


def run_with_retry(name: str, command: list[str], env: dict[str, str], timeout: float,
                   deadline: float, flag: str = TRITON_WORKAROUND) -> dict:
  """Runs a stage's `command`; if it aborted inside XLA (`xla_aborted`) and `flag` is not
  in its XLA_FLAGS yet, runs it once more with `flag` (within `deadline`, a
  time.perf_counter() value) and says so in "retried_with"."""
  run = attempt(command, env, min(timeout, deadline - time.perf_counter()))
  line = stage_line(name, run, timeout)
  if not xla_aborted(run['returncode'], run['stderr']) or flag in env.get('XLA_FLAGS', ''):
    return line
  left = min(timeout, deadline - time.perf_counter())
  if left < 10:
    return {**line, 'retry_skipped': f'{flag} not tried: the time budget is spent'}
  retry = stage_line(name, attempt(command, _with_flag(env, flag), left), timeout)
  return {**retry, 'retried_with': flag, 'first_error': line.get('error'),
          'first_stderr_tail': line.get('stderr_tail', '')[-1500:]}


def main_parent(args: argparse.Namespace) -> int:
  """Runs the stages one process each, prints (and appends to --out) their lines and a
  summary; returns 1 if a stage failed or was skipped."""
  sizes = CPU_SIZES if args.cpu else GPU_SIZES
  names = args.stages.split(',') if args.stages else stage_names(sizes)
  env = dict(os.environ)
  if args.cpu:
    env['JAX_PLATFORMS'] = 'cpu'
  budget = args.budget_s if args.budget_s else (300 if args.cpu else 470)
  start = time.perf_counter()
  deadline = start + budget
  out = open(args.out, 'a') if args.out else None
  failed, added = [], None

  def emit(line: dict) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
      out.write(text + '\n')
      out.flush()

  for name in names:
    timeout = CPU_TIMEOUT if args.cpu else TIMEOUTS[name.split(':')[0]]
    if deadline - time.perf_counter() < 20:
      failed.append(name)
      emit({'stage': name, 'skipped': f'the time budget of {budget} s is spent'})
      continue
    stage_env = dict(env)
    if name.split(':')[0] in UNTUNED_STAGES and not args.cpu:
      stage_env = _with_flag(stage_env, NO_AUTOTUNE)
    if added:
      stage_env = _with_flag(stage_env, added[0])
    command = [sys.executable, os.path.abspath(__file__), f'--stage={name}']
    command += ['--cpu'] if args.cpu else []
    line = run_with_retry(name, command, stage_env, timeout, deadline)
    if added:
      line.update(xla_flags_added=added[0], because=f'{added[1]} aborted without it')
    elif 'retried_with' in line and 'error' not in line:
      added = (line['retried_with'], name)  # the later stages start with the workaround
    if 'error' in line:
      failed.append(name)
    emit(line)
  emit({'stage': 'summary', 'seconds': round(time.perf_counter() - start, 2),
        'stages': len(names), 'failed_or_skipped': failed})
  if out:
    out.close()
  return 1 if failed else 0


def main() -> int:
  """The parent (no --stage) or one stage's process (--stage=NAME)."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cpu', action='store_true',
                      help='every stage at tiny sizes on the CPU (CI)')
  parser.add_argument('--stages', default='',
                      help='comma-separated stages to run (default: all, in order)')
  parser.add_argument('--stage', default='', help=argparse.SUPPRESS)  # a stage's process
  parser.add_argument('--budget_s', type=float, default=0,
                      help='wall-clock budget for all stages (default 470; --cpu 300)')
  parser.add_argument('--out', default='', help='also append the JSON lines to this file')
  args = parser.parse_args()
  if not args.stage:
    return main_parent(args)
  compilation_cache.enable()
  result = run_stage(args.stage, CPU_SIZES if args.cpu else GPU_SIZES)
  print(RESULT_PREFIX + json.dumps(result), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
