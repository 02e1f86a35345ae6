"""Kernel gradients of the R50 k x k convolutions: XLA's against `matmul_grad_conv`'s.

  python benchmarks/conv_grads.py [--batch_size=2] [--image_size=512] [--repeats=7]

For each k x k convolution shape of ResNet-50 at --image_size (the stem and the 3x3
convolutions of each stage, strided and not), times, on the same input and dy:
  forward    the convolution itself
  xla        the kernel gradient as XLA derives it (a convolution over the whole image)
  patches    one matmul of the input's patches with dy
  offsets    one matmul per kernel offset (stride 1 only)
The best of --repeats calls each, the methods interleaved so that a slow moment of the
machine hits all of them. Prints one line per shape and, last, one JSON object.
"""

import argparse
import json
import time

import jax

from pix2seq_jax.models import resnet
from pix2seq_jax.runtime import cpu as cpu_runtime


def _best_seconds(fns: dict, args: tuple, repeats: int) -> dict:
  jitted = {name: jax.jit(fn) for name, fn in fns.items()}
  for fn in jitted.values():
    jax.block_until_ready(fn(*args))
  best = {name: float('inf') for name in fns}
  for _ in range(repeats):
    for name, fn in jitted.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--image_size', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=7)
  args = parser.parse_args()
  s = args.image_size
  # (input side, Cin, Cout, kernel, stride): R50's stem, then per stage its first
  # (strided, except stage 1) and its other 3x3 convolutions.
  shapes = [(s, 3, 64, 7, 2), (s // 4, 64, 64, 3, 1), (s // 4, 128, 128, 3, 2),
            (s // 8, 128, 128, 3, 1), (s // 8, 256, 256, 3, 2), (s // 16, 256, 256, 3, 1),
            (s // 16, 512, 512, 3, 2), (s // 32, 512, 512, 3, 1)]
  results = []
  for side, cin, cout, size, stride in shapes:
    pad = (size - 1) // 2
    x = jax.random.normal(jax.random.key(0), (args.batch_size, side, side, cin))
    kernel = jax.random.normal(jax.random.key(1), (size, size, cin, cout)) * 0.05
    conv = lambda x, k: resnet._conv_nhwc(x, k, stride, pad)
    dy = jax.random.normal(jax.random.key(2), conv(x, kernel).shape)

    def kernel_grad(fn):
      return lambda x, dy: jax.vjp(lambda k: fn(x, k), kernel)[1](dy)[0]

    fns = {'forward': lambda x, dy: conv(x, kernel), 'xla': kernel_grad(conv),
           'patches': kernel_grad(
               lambda x, k: resnet.matmul_grad_conv(x, k, stride, pad, 'patches'))}
    if stride == 1:
      fns['offsets'] = kernel_grad(
          lambda x, k: resnet.matmul_grad_conv(x, k, stride, pad, 'offsets'))
    best = _best_seconds(fns, (x, dy), args.repeats)
    gflop = 2 * dy.size * size * size * cin / 1e9
    row = {'input': [args.batch_size, side, side, cin], 'cout': cout, 'kernel': size,
           'stride': stride, 'gflop': gflop, **{f'{k}_ms': v * 1e3 for k, v in best.items()}}
    results.append(row)
    print(f"{size}x{size}/{stride} {side}px {cin}->{cout} ({gflop:.2f} GFLOP): " +
          ', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in best.items()), flush=True)
  print(json.dumps({'backend': jax.default_backend(), 'rows': results}))


if __name__ == '__main__':
  cpu_runtime.configure()  # as main.py runs: XLA:CPU flags, huge pages behind malloc
  main()
