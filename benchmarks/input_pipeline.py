"""Throughput of the training input pipeline against bare JPEG decoding of the same files.

  python benchmarks/input_pipeline.py --coco_dir=../shared/data/coco_tiny [--image_size=640]

Both run in this process on the same files with tf.data's parallelism (AUTOTUNE):
  pipeline     the full training path of `configs/coco.py`: read, decode, draws of scale
               jitter, crop and flip, the source region each window reads, object
               shuffle, sequences with noise objects and class corruption, batching with
               padding (pix2seq_jax/data/pipeline.py)
  decode only  read and decode each JPEG to uint8 pixels, nothing else
  resampling   the part of the augmentation the train step does on the device: the
               pipeline's batches resampled into float32 canvases (`canvas.model_images`,
               jitted), timed on JAX's default device after the batches are on it
Prints one line per measurement and, last, one JSON object with images_per_second,
decode_only_images_per_second, their ratio, and the device's resampling time per image.
"""

import argparse
import json
import os
import time

import jax
import tensorflow as tf

from pix2seq_jax.config import config_file
from pix2seq_jax.data import canvas, pipeline, sources
from pix2seq_jax.runtime import cpu as cpu_runtime
from pix2seq_jax.runtime import malloc_hugepages
from pix2seq_jax.tasks import vocab as vocab_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images_per_second(iterator, images_per_item: int, warmup: int, items: int) -> float:
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(items):
    next(iterator)
  return items * images_per_item / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--coco_dir', required=True, help='a COCO-layout folder (train2017/)')
  parser.add_argument('--image_size', type=int, default=640)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--images', type=int, default=400, help='images timed per measurement')
  args = parser.parse_args()
  tf.config.set_visible_devices([], 'GPU')

  config = config_file.load(os.path.join(ROOT, 'configs', 'coco.py'))
  config.data.coco_dir = args.coco_dir
  config.data.image_size = args.image_size
  splits = sources.load_splits(config.data)
  split = splits.train
  vocab = vocab_lib.Vocabulary(split.categories.num_classes, config.data.num_bins)
  batches = args.images // args.batch_size
  warmup = max(2, batches // 10)

  full = pipeline.train_batches(split, config.data, vocab, seed=0,
                                local_batch_size=args.batch_size)
  pipeline_rate = _images_per_second(full, args.batch_size, warmup, batches)
  print(f'pipeline: {pipeline_rate:.1f} images/s ({args.image_size} px, batch {args.batch_size})')

  paths = tf.data.Dataset.from_tensor_slices([r.path for r in split.records]).repeat()
  decoded = paths.map(lambda p: tf.io.decode_image(tf.io.read_file(p), channels=3,
                                                   expand_animations=False),
                      num_parallel_calls=tf.data.AUTOTUNE).prefetch(2).as_numpy_iterator()
  decode_rate = _images_per_second(decoded, 1, warmup * args.batch_size, args.images)
  print(f'decode only: {decode_rate:.1f} images/s')

  to_canvas = jax.jit(canvas.model_images)
  keys = ('image', 'source_extent', 'resample', 'extent')
  on_device = [jax.device_put({k: batch[k] for k in keys}) for batch in
               (next(full) for _ in range(max(2, 40 // args.batch_size)))]
  to_canvas(on_device[0]).block_until_ready()  # compile
  start = time.perf_counter()
  for batch in on_device:
    to_canvas(batch).block_until_ready()
  resample_ms = (time.perf_counter() - start) * 1e3 / (len(on_device) * args.batch_size)
  device = jax.devices()[0].device_kind
  print(f'resampling on the device ({device}): {resample_ms:.2f} ms per image')

  print(json.dumps({
      'coco_dir': args.coco_dir, 'train_images': len(split.records),
      'image_size': args.image_size, 'batch_size': args.batch_size,
      'cpu_count': os.cpu_count(), 'hugepage_malloc': malloc_hugepages.active(),
      'images_per_second': pipeline_rate,
      'decode_only_images_per_second': decode_rate,
      'pipeline_over_decode': pipeline_rate / decode_rate,
      'device': device, 'device_resample_ms_per_image': resample_ms}))


if __name__ == '__main__':
  cpu_runtime.configure()  # as main.py runs: XLA:CPU flags, huge pages behind malloc
  main()
