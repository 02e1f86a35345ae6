"""Times the jitted train step on synthetic in-memory batches (no TensorFlow needed).

  python benchmarks/train_step.py --variant=r50 --image_size=512 --batch_size=2 --objects=20 \
      [--compute_dtype=bfloat16] [--grad_accum_steps=K] \
      [--frozen_backbone_stages=2 --frozen_batch_norm]   # the PyTorch replica's fine-tuning
      [--parts]   # also the forward + backward time of the backbone and of the encoder

Each step is timed alone; seconds_per_step is their median (the statistic of the peers'
benchmarks, ../shared/tools/official_speed.py and benchmarks/pytorch_replica_step.py).
Prints one line per setting and, last, one JSON object with seconds_per_step, step_seconds,
images_per_second, XLA's FLOP count per step (over all devices), the matmul peak measured
in this run (square matmuls in the compute dtype, accumulating in float32; the best of
several sizes, on one device, times the devices on accelerators) and flop_utilization =
achieved FLOP/s / that peak. With --parts, where the step's time goes: the gradient of a
sum over the backbone's features, over the encoder's memory (backbone included) and over
the whole model's log-probabilities, each jitted alone (train-mode batch norm, float32,
no optimizer update), the median of --steps calls; benchmarks/official_train_parts.py
times the same three gradients of the official model.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pix2seq_jax.config import default, resolve
from pix2seq_jax.data import synthetic
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import cpu as cpu_runtime
from pix2seq_jax.runtime import malloc_hugepages
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import optimizer
from pix2seq_jax.train import state as state_lib
from pix2seq_jax.train import step as step_lib


def matmul_peak(dtype: str, sizes=(1024, 2048, 4096), repeats: int = 5) -> float:
  """The best FLOP/s of an [n, n] @ [n, n] matmul over `sizes` on the default device."""
  best = 0.0
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(matmul(a, b))
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(matmul(a, b))
      best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
  return best


def _median_seconds(fn, *args, calls: int = 5) -> float:
  """The median seconds of `calls` calls of `fn(*args)`, each waited for, after a warm-up
  call (the statistic of the step's time and of the peers' timers)."""
  jax.block_until_ready(fn(*args))
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    seconds.append(time.perf_counter() - start)
  return float(np.median(seconds))


def part_seconds(graphdef: nnx.GraphDef, params, batch_stats, images: jax.Array,
                 tokens: jax.Array, calls: int = 5) -> dict[str, float]:
  """Median seconds of the jitted gradient of each part: backbone, encode (backbone +
  encoder + memory), full model. images [B, S, S, 3] float32, tokens [B, L]."""
  def model(params):
    return nnx.merge(graphdef, params, batch_stats, copy=True)

  parts = {
      'backbone': lambda p: jnp.sum(model(p).backbone(images, train=True) ** 2),
      'encode': lambda p: jnp.sum(model(p).encode(images, train=True) ** 2),
      'full': lambda p: jnp.sum(jax.nn.log_softmax(model(p)(images, tokens, train=True))),
  }
  return {name: _median_seconds(jax.jit(jax.grad(loss)), params, calls=calls)
          for name, loss in parts.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variant', default='r50')
  parser.add_argument('--image_size', type=int, default=512)
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--objects', type=int, default=20,
                      help='objects per image (sets max_instances)')
  parser.add_argument('--num_bins', type=int, default=1000)
  parser.add_argument('--num_classes', type=int, default=80)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--compute_dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--grad_accum_steps', type=int, default=1)
  parser.add_argument('--frozen_backbone_stages', type=int, default=0,
                      help='2: stem and stage 1 frozen, as the PyTorch replica (DETR) trains')
  parser.add_argument('--frozen_batch_norm', action='store_true',
                      help="batch norms use running statistics, as the PyTorch replica's "
                      'FrozenBatchNorm2d')
  parser.add_argument('--parts', action='store_true',
                      help='also time the gradients of the backbone and the encoder alone')
  args = parser.parse_args()

  config = default.get_config()
  config.model.variant = args.variant
  config.data.image_size = args.image_size
  config.data.max_instances = args.objects
  config.data.num_bins = args.num_bins
  config.train.batch_size = args.batch_size
  config.model.drop_path = 0.0  # the PyTorch replica has none; dropout stays 0.1 as in DETR
  config.train.compute_dtype = args.compute_dtype
  config.train.grad_accum_steps = args.grad_accum_steps
  config.model.frozen_backbone_stages = args.frozen_backbone_stages
  config.model.frozen_batch_norm = args.frozen_batch_norm
  config = resolve.resolve(config)
  vocab = vocab_lib.Vocabulary(args.num_classes, args.num_bins)
  mesh = mesh_lib.make_mesh()
  tx = optimizer.make_optimizer(config)
  state = state_lib.create_train_state(config, vocab, mesh, tx)
  step = step_lib.train_step_for(config, build.model_graphdef(config, vocab), mesh, tx)

  rng = np.random.default_rng(0)
  length = vocab_lib.sequence_length(args.objects)
  size, batch_size = args.image_size, args.batch_size
  batch = mesh_lib.put_batch(synthetic.random_batch(
      rng, batch_size, size, length, vocab.size, uniform_weights=True), mesh)
  compiled = step.jitted.lower(state, batch, *step.inputs(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # cost_analysis counts one device's partition of the SPMD program; the step's FLOPs,
  # over all devices, are that times the devices.
  flops = float(cost.get('flops', 0.0)) * mesh.size if cost else 0.0

  state, metrics = step(state, batch, 0)  # warm up
  jax.block_until_ready(metrics)
  step_seconds = []
  for index in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, index + 1)
    jax.block_until_ready(metrics)
    step_seconds.append(time.perf_counter() - start)
  seconds = float(np.median(step_seconds))
  # The peak is measured on one device. Accelerators add theirs; forced host devices
  # (XLA_FLAGS=--xla_force_host_platform_device_count) share the one CPU's cores.
  peak_devices = 1 if jax.default_backend() == 'cpu' else mesh.size
  peak = matmul_peak(args.compute_dtype) * peak_devices
  result = {'variant': args.variant, 'image_size': size, 'batch_size': batch_size,
            'objects': args.objects, 'compute_dtype': args.compute_dtype,
            'grad_accum_steps': args.grad_accum_steps,
            'frozen_backbone_stages': args.frozen_backbone_stages,
            'frozen_batch_norm': args.frozen_batch_norm, 'devices': jax.device_count(),
            'backend': jax.default_backend(), 'hugepage_malloc': malloc_hugepages.active(),
            'seconds_per_step': seconds, 'step_seconds': step_seconds,
            'images_per_second': batch_size / seconds, 'flops_per_step': flops,
            'achieved_flops_per_second': flops / seconds,
            'matmul_peak_flops_per_second': peak, 'matmul_peak_devices': peak_devices,
            'flop_utilization': flops / seconds / peak}
  print(f"{args.variant} {size}px batch {batch_size}: {seconds:.3f} s/step, "
        f"{batch_size / seconds:.1f} images/s, {flops / 1e9:.1f} GFLOP/step, "
        f"{flops / seconds / 1e9:.0f} of a {peak / 1e9:.0f} GFLOP/s matmul peak "
        f"({flops / seconds / peak:.1%})")
  if args.parts:
    parts = part_seconds(build.model_graphdef(config, vocab), state.params, state.batch_stats,
                         batch['image'], batch['input_tokens'], calls=args.steps)
    print('forward + backward: ' + ', '.join(f'{name} {seconds * 1e3:.0f} ms'
                                            for name, seconds in parts.items()))
    result['part_seconds'] = parts
  stats = jax.devices()[0].memory_stats() or {}  # None on CPU
  if 'peak_bytes_in_use' in stats:
    result['peak_device_memory_gib'] = stats['peak_bytes_in_use'] / 2**30
  print(json.dumps(result))


if __name__ == '__main__':
  cpu_runtime.configure()  # as main.py runs: XLA:CPU flags, huge pages behind malloc
  main()
