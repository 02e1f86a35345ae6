"""Times building each model variant inside a trace, with CountedRngs against nnx.Rngs.

  python benchmarks/model_build.py [--variants=r50,r50_c4,vit_b,vit_l] [--repeats=2]

Every process builds its model inside a trace: `build.abstract_model` (nnx.eval_shape)
for the structure, timed here, and the train state's initialiser (jax.jit, traced before
it compiles). The project gives the model `counted_rngs.CountedRngs`; the reference is
`nnx.Rngs`, whose traced counter updates cost time that grows with everything traced
before them (pix2seq_jax/models/counted_rngs.py). Official vocabulary (3000 tokens) and
512 positions, as the official checkpoints. Prints one line per variant and, last, one
JSON object with the best seconds of each and their ratio.
"""

import argparse
import json
import time

from flax import nnx

from pix2seq_jax.config import default
from pix2seq_jax.models import build, counted_rngs
from pix2seq_jax.runtime import cpu as cpu_runtime
from pix2seq_jax.tasks import vocab as vocab_lib


def _best_seconds(fn, repeats: int) -> float:
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default='r50,r50_c4,vit_b,vit_l')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()

  config = default.get_config()
  config.model.max_seq_len = 512
  config.data.max_instances = 100
  vocab = vocab_lib.for_categories('official', range(1, 81), 1000)
  results = {}
  for variant in args.variants.split(','):
    config.model.variant = variant
    timed = {}
    for name, rngs in (('counted_rngs', lambda: counted_rngs.CountedRngs(0)),
                       ('nnx_rngs', lambda: nnx.Rngs(0))):
      timed[name] = _best_seconds(
          lambda: nnx.eval_shape(lambda: build.build_model(config, vocab, rngs())),
          args.repeats)
    timed['speedup'] = timed['nnx_rngs'] / timed['counted_rngs']
    results[variant] = timed
    print(f'{variant}: abstract build {timed["counted_rngs"]:.2f} s with CountedRngs, '
          f'{timed["nnx_rngs"]:.2f} s with nnx.Rngs ({timed["speedup"]:.1f}x)')
  print(json.dumps(results))


if __name__ == '__main__':
  cpu_runtime.configure()  # as main.py runs: XLA:CPU flags, huge pages behind malloc
  main()
