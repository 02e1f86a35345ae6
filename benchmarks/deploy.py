"""Times the exported detector against the Predictor, and the time to a first detection.

  python benchmarks/deploy.py                        # R50 at 640 px, 100 objects (501 tokens)
  python benchmarks/deploy.py --workdir=W            # a trained workdir instead

Without --workdir, a workdir with random R50 weights is written first (COCO's 80
categories; EOS given a -inf output bias so every image generates every token, as in
benchmarks/decode.py). Then, on the same images:
  export          seconds for `main.py --mode=export` (export.export_workdir)
  predictor       Predictor(workdir), seconds per image at batch 1 and --batch_size
  serving         pix2seq_jax.deploy.serving.load(export), the same
  saved_model     tf.saved_model.load(export/saved_model), the same (TensorFlow's own XLA)
  start           seconds from a new Python process to its first detection (imports,
                  loading, compiling, one image), with an empty compilation cache (cold)
                  and with the cache that run filled (warm), for the Predictor and serving
Times are medians of --repeats calls after a warm-up call. Prints one line per
measurement and, last, one JSON object.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_START = '''
import sys, time
start = float(sys.argv[3])
import numpy as np
image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
if sys.argv[1] == 'predictor':
  from pix2seq_jax.inference.predictor import Predictor
  detect = Predictor(sys.argv[2], batch_size=1)
else:
  from pix2seq_jax.deploy import serving
  detect = serving.load(sys.argv[2], batch_size=1)
detect([image])
print(time.time() - start)
'''


def _random_workdir(path: str, variant: str, size: int, objects: int) -> None:
  import jax.numpy as jnp
  from flax import nnx

  from pix2seq_jax.config import default
  from pix2seq_jax.data import coco_categories, coco_json
  from pix2seq_jax.models import build
  from pix2seq_jax.tasks import vocab as vocab_lib
  from pix2seq_jax.workdir import checkpoints
  from pix2seq_jax.workdir import files as workdir_lib
  config = default.get_config()
  config.model.variant = variant
  config.data.image_size = size
  config.data.max_instances = objects
  categories = coco_json.CategoryMap(*map(tuple, zip(*coco_categories.COCO_CATEGORIES)))
  vocab = vocab_lib.for_categories(config.model.vocabulary, categories.category_ids,
                                   config.data.num_bins)
  model = build.build_model(config, vocab, nnx.Rngs(0))
  model.decoder.output_bias[...] = model.decoder.output_bias[...].at[vocab.eos].set(-1e9)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  manager = checkpoints.make_manager(path)
  checkpoints.save(manager, 0, {'step': jnp.asarray(0, jnp.int32), 'params': params,
                                'batch_stats': batch_stats})
  manager.close()
  workdir_lib.write_json(os.path.join(path, workdir_lib.CONFIG), config.to_dict())
  workdir_lib.write_json(os.path.join(path, workdir_lib.CATEGORIES), categories.to_json())


def _median(fn, repeats: int) -> float:
  fn()  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _start_seconds(kind: str, path: str, cache: str) -> float:
  env = dict(os.environ, PIX2SEQ_COMPILATION_CACHE=cache)
  run = subprocess.run([sys.executable, '-c', _START, kind, path, repr(time.time())],
                       cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', help='a trained workdir (default: random R50 weights)')
  parser.add_argument('--variant', default='r50')
  parser.add_argument('--image_size', type=int, default=640)
  parser.add_argument('--objects', type=int, default=100)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--skip_start', action='store_true', help='skip the cold/warm starts')
  args = parser.parse_args()

  import jax
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  from pix2seq_jax.deploy import export, serving
  from pix2seq_jax.inference.predictor import Predictor

  scratch = tempfile.mkdtemp(prefix='pix2seq_deploy_')
  workdir = args.workdir or os.path.join(scratch, 'workdir')
  if not args.workdir:
    _random_workdir(workdir, args.variant, args.image_size, args.objects)
  out = os.path.join(scratch, 'export')
  start = time.perf_counter()
  manifest = export.export_workdir(workdir, out)
  result = {'variant': args.variant if not args.workdir else workdir,
            'image_size': manifest['canvas_size'], 'max_detections': manifest['max_detections'],
            'batch_size': args.batch_size, 'backend': jax.default_backend(),
            'device': str(jax.devices()[0].device_kind), 'host': platform.node(),
            'date': datetime.date.today().isoformat(),
            'export_seconds': time.perf_counter() - start,
            'detector_jax_mb': os.path.getsize(os.path.join(out, 'detector.jax')) / 1e6,
            'weights_mb': os.path.getsize(os.path.join(out, serving.WEIGHTS)) / 1e6}
  print(f"export {result['export_seconds']:.1f} s (detector.jax {result['detector_jax_mb']:.1f}"
        f" MB, weights {result['weights_mb']:.1f} MB)")

  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(args.batch_size)]
  saved = tf.saved_model.load(os.path.join(out, 'saved_model')).signatures['serving_default']
  sizes = np.asarray([i.shape[:2] for i in images], np.int32)
  runners = {
      'predictor': lambda b: Predictor(workdir, batch_size=b),
      'serving': lambda b: serving.load(out, batch_size=b),
  }
  for name, make in runners.items():
    for batch in (1, args.batch_size):
      detect = make(batch)
      seconds = _median(lambda: detect(images[:batch]), args.repeats) / batch
      result[f'{name}_seconds_per_image_b{batch}'] = seconds
      print(f'{name} batch {batch}: {seconds:.3f} s/image')
  for batch in (1, args.batch_size):
    call = lambda: saved(images=tf.constant(np.stack(images[:batch])),
                         sizes=tf.constant(sizes[:batch]))['num_detections'].numpy()
    seconds = _median(call, args.repeats) / batch
    result[f'saved_model_seconds_per_image_b{batch}'] = seconds
    print(f'saved_model batch {batch}: {seconds:.3f} s/image')
  if not args.skip_start:
    for name, path in (('predictor', workdir), ('serving', out)):
      cache = os.path.join(scratch, f'cache_{name}')
      for when in ('cold', 'warm'):
        seconds = _start_seconds(name, path, cache)
        result[f'{name}_first_detection_{when}_seconds'] = seconds
        print(f'{name} first detection, {when} compilation cache: {seconds:.1f} s')
  print(json.dumps(result))


if __name__ == '__main__':
  from pix2seq_jax.runtime import cpu as cpu_runtime
  cpu_runtime.configure(restart=False)  # the XLA:CPU flags, as when it was measured
  main()
