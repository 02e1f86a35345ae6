"""Times whole-image inference (encode + cached decoding) on random weights, no TensorFlow.

  python benchmarks/decode.py   # the PyTorch replica's sizes: R50, 512 px, 6+6 x 256
  python benchmarks/decode.py --batch_size=64 --objects=100 --skip_recompute   # GPU sizes

Compiled as the project compiles inference (xla_cpu_flags.inference_compiler_options).
Measured, after compilation, as the median of --repeats calls on a device-resident image:
  b1       one image generating 5 * objects + 1 tokens (the PyTorch replica: 20 objects, 101 tokens)
  bN       the same at --batch_size, per image
  encode   the backbone + encoder alone at batch 1 and at --batch_size (per image), so
           the decode loop = b1 - encode, bN - encode at bN
  500      one image generating 5 * compare_objects + 1 tokens with the KV cache and with
           full-prefix recomputation (the PyTorch replica's method), once each
EOS is given a -inf output bias, so every row generates every token; the grammar forces
EOS at the last position. Prints one line per measurement and, last, one JSON object.
"""

import argparse
import datetime
import functools
import json
import platform
import statistics
import time

import jax
import numpy as np
from flax import nnx

from pix2seq_jax.config import default
from pix2seq_jax.inference import decoding, detections
from pix2seq_jax.models import build
from pix2seq_jax.runtime import cpu as cpu_runtime
from pix2seq_jax.runtime import malloc_hugepages, xla_cpu_flags
from pix2seq_jax.tasks import vocab as vocab_lib


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variant', default='r50')
  parser.add_argument('--image_size', type=int, default=512)
  parser.add_argument('--objects', type=int, default=20, help='objects per image generated')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--compare_objects', type=int, default=100,
                      help='objects for the cached vs recompute comparison (500 tokens)')
  parser.add_argument('--num_bins', type=int, default=1000)
  parser.add_argument('--num_classes', type=int, default=80)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--prefix_block', type=int, default=decoding.PREFIX_BLOCK,
                      help='positions per block of the self-attention cache (0: one block)')
  parser.add_argument('--skip_recompute', action='store_true',
                      help='skip the slow full-prefix recompute comparison')
  args = parser.parse_args()

  config = default.get_config()
  config.model.variant = args.variant
  config.data.image_size = args.image_size
  config.data.max_instances = max(args.objects, args.compare_objects)
  config.data.num_bins = args.num_bins
  vocab = vocab_lib.Vocabulary(args.num_classes, args.num_bins)
  model = build.build_model(config, vocab, nnx.Rngs(0))
  model.decoder.output_bias[...] = model.decoder.output_bias[...].at[vocab_lib.EOS].set(-1e9)
  graphdef, state = nnx.split(model)
  options = xla_cpu_flags.inference_compiler_options(jax.default_backend())

  def infer(objects: int, step: str):
    length = vocab_lib.sequence_length(objects)

    @functools.partial(jax.jit, compiler_options=options)
    def run(state, images):
      out = decoding.decode(nnx.merge(graphdef, state), images, vocab, length=length,
                            step=step, prefix_block=args.prefix_block)
      return decoding.detection_outputs(out, vocab) + (out.position,)
    return run

  @functools.partial(jax.jit, compiler_options=options)
  def encode(state, images):
    return nnx.merge(graphdef, state).encode(images, train=False)

  size = args.image_size
  rng = np.random.default_rng(0)
  image = lambda b: jax.device_put(rng.uniform(0, 1, (b, size, size, 3)).astype(np.float32))
  one, batch = image(1), image(args.batch_size)

  run_short = infer(args.objects, 'cached')
  tokens, scores, steps = run_short(state, one)
  assert int(steps) == vocab_lib.sequence_length(args.objects), int(steps)
  found = detections.parse_tokens(np.asarray(tokens[0]), vocab, np.asarray(scores[0]))

  result = {'variant': args.variant, 'image_size': size, 'dtype': 'float32',
            'objects': args.objects, 'tokens': int(steps), 'batch_size': args.batch_size,
            'prefix_block': args.prefix_block, 'compiler_options': options,
            'backend': jax.default_backend(), 'device': str(jax.devices()[0].device_kind),
            'hugepage_malloc': malloc_hugepages.active(),
            'host': platform.node(), 'date': datetime.date.today().isoformat()}
  result['seconds_per_image_b1'] = _median_seconds(lambda: run_short(state, one), args.repeats)
  result['encode_seconds_b1'] = _median_seconds(lambda: encode(state, one), args.repeats)
  result['decode_loop_seconds_b1'] = result['seconds_per_image_b1'] - result['encode_seconds_b1']
  result['seconds_per_image_bN'] = _median_seconds(
      lambda: run_short(state, batch), args.repeats) / args.batch_size
  result['encode_seconds_per_image_bN'] = _median_seconds(
      lambda: encode(state, batch), args.repeats) / args.batch_size
  loop_b1 = result['decode_loop_seconds_b1']
  loop_bn = result['seconds_per_image_bN'] - result['encode_seconds_per_image_bN']
  result['decode_loop_seconds_per_image_bN'] = loop_bn
  result['decode_loop_bN_over_b1'] = loop_bn / loop_b1
  print(f"{args.variant} {size}px float32: {int(steps)} tokens, {len(found.labels)} objects "
        f"parsed; b1 {result['seconds_per_image_b1']:.3f} s/image (encode "
        f"{result['encode_seconds_b1']:.3f} s, decode loop {result['decode_loop_seconds_b1']:.3f}"
        f" s); b{args.batch_size} {result['seconds_per_image_bN']:.3f} s/image (encode "
        f"{result['encode_seconds_per_image_bN']:.3f} s, decode loop {loop_bn:.3f} s: "
        f"{loop_bn / loop_b1:.2f} of batch 1's)")

  if not args.skip_recompute:
    compare_tokens = 5 * args.compare_objects  # plus the final EOS
    for step in ('cached', 'recompute'):
      run_long = infer(args.compare_objects, step)
      result[f'{step}_seconds_{compare_tokens}'] = _median_seconds(
          lambda: run_long(state, one), 1)
    result[f'speedup_cached_vs_uncached_{compare_tokens}'] = (
        result[f'recompute_seconds_{compare_tokens}'] / result[f'cached_seconds_{compare_tokens}'])
    cached = result[f'cached_seconds_{compare_tokens}']
    print(f"{compare_tokens} tokens, batch 1: cached {cached:.3f}"
          f" s, recompute {result[f'recompute_seconds_{compare_tokens}']:.3f} s, speedup "
          f"{result[f'speedup_cached_vs_uncached_{compare_tokens}']:.1f}x")
  stats = jax.devices()[0].memory_stats() or {}  # None on CPU
  if 'peak_bytes_in_use' in stats:
    result['peak_device_memory_gib'] = stats['peak_bytes_in_use'] / 2**30
  print(json.dumps(result))


if __name__ == '__main__':
  cpu_runtime.configure()  # as main.py runs: XLA:CPU flags, huge pages behind malloc
  main()
