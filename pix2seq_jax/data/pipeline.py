"""tf.data pipelines that turn image records into model-ready numpy batches.

Training order is a pure function of (seed, step): indices are shuffled per epoch
with a fixed seed, each global batch is the next `global` indices of that stream and
process p reads rows [p * local, (p + 1) * local) of it, and resuming at step s skips
s * global indices before any image is read. Random transforms are seeded by the
example's position in the stream, so any number of processes sees the same global batch.

Every batch holds:
  image          training: uint8 [B, S, S, 3], zero-padded bottom/right, with
                 extent int32 [B, 2] (the image's height and width on the canvas);
                 `canvas.model_images` makes the model's float32 input on the device
                 evaluation: float32 [B, S, S, 3] in [0, 1], padded with PAD_VALUE
  input_tokens   int32 [B, L]   target_tokens int32 [B, L]   loss_weights float32 [B, L]
  image_id       int64 [B]      original_size int32 [B, 2] (h, w)   scale float32 [B]
  mask           bool [B]       (eval only: False on padding examples)
"""

from __future__ import annotations

from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.data import coco_json, sequences, transforms

_FLIP_OP, _ORDER_OP, _SCALE_OP, _CROP_OP, _SEQUENCE_OP = 1, 2, 3, 4, 5


def _record_tables(records: list[coco_json.ImageRecord]) -> dict[str, tf.Tensor]:
  """Records as constant tensors indexed by record number (objects as ragged rows)."""
  counts = [len(r.labels) for r in records]
  return {
      'image_id': tf.constant([r.image_id for r in records], tf.int64),
      'path': tf.constant([r.path for r in records]),
      'size': tf.constant(np.array([(r.height, r.width) for r in records], np.int32).reshape(-1, 2)),
      'orientation': tf.constant([r.orientation for r in records], tf.int32),
      'boxes': tf.RaggedTensor.from_row_lengths(
          tf.constant(np.concatenate([r.boxes for r in records]).reshape(-1, 4)), counts),
      'labels': tf.RaggedTensor.from_row_lengths(
          tf.constant(np.concatenate([r.labels for r in records]).astype(np.int32)), counts),
  }


def preprocess(tables: dict[str, tf.Tensor], index: tf.Tensor, data: ml_collections.ConfigDict,
               vocab: vocab_lib.Vocabulary, seed: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """Reads record `index` and builds one example; `seed` [2] enables training randomness.

  Training: scale jitter and random crop (`data.scale_jitter`), flip (`data.random_flip`),
  object shuffling, padding, and sequence augmentation (`data.noise_objects`,
  `data.corrupt_classes`), on uint8 pixels (the image is uint8 and zero-padded, with its
  `extent`). Evaluation (`seed` None): resize the longest side, pad, in float32.
  """
  boxes = tables['boxes'][index]
  labels = tables['labels'][index]
  pixels = transforms.decode_pixels(tf.io.read_file(tables['path'][index]))
  pixels = transforms.apply_exif_orientation(pixels, tables['orientation'][index])
  # float32 [0, 1] for evaluation, uint8 for training; resize_to is a no-op unless
  # image_check found the file at another size.
  image = transforms.resize_to(pixels if seed is not None else transforms.to_float(pixels),
                               tables['size'][index])
  original_size = tf.shape(image)[:2]
  if seed is None:
    image, scale = transforms.resize_longest_side(image, data.image_size)
  else:
    fold = lambda op: tf.random.experimental.stateless_fold_in(seed, op)
    if data.scale_jitter:
      image, boxes, labels, scale = transforms.random_scale_jitter_and_crop(
          image, boxes, labels, data.image_size, fold(_SCALE_OP), fold(_CROP_OP),
          data.scale_min, data.scale_max)
    else:
      image, scale = transforms.resize_pixels_longest_side(image, data.image_size)
    if data.random_flip:
      image, boxes = transforms.random_horizontal_flip(image, boxes, fold(_FLIP_OP))
    boxes, labels = transforms.shuffle_objects(boxes, labels, fold(_ORDER_OP))
  extent = tf.shape(image)[:2]  # before padding
  image, boxes = transforms.pad_to_canvas(image, boxes, data.image_size)
  augment = seed is not None
  example = sequences.build_sequences(
      boxes, labels, vocab, data.max_instances, data.eos_weight,
      seed=fold(_SEQUENCE_OP) if augment else None,
      noise_objects=augment and data.noise_objects,
      corrupt_classes=augment and data.corrupt_classes,
      noise_coord_weight=data.noise_coord_weight, noise_class_weight=data.noise_class_weight,
      extent=tf.cast(extent, tf.float32) / data.image_size)
  example.update(image=image, image_id=tables['image_id'][index],
                 original_size=original_size, scale=scale)
  if augment:
    example['extent'] = extent
  return example


def train_batches(split: coco_json.CocoSplit, data: ml_collections.ConfigDict,
                  vocab: vocab_lib.Vocabulary, *, seed: int, local_batch_size: int,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """An endless iterator of this process's training batches, starting at `start_step`."""
  tables = _record_tables(split.records)
  num_records = len(split.records)
  global_batch_size = local_batch_size * process_count
  ds = tf.data.Dataset.range(num_records)
  ds = ds.shuffle(num_records, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start_step * global_batch_size)  # (position in the stream, index)
  if process_count > 1:  # rows [p * local, (p + 1) * local) of every global batch
    ds = ds.filter(lambda position, _: (position // local_batch_size) % process_count
                   == process_index)

  @tf.autograph.experimental.do_not_convert  # plain TF ops; converting costs seconds a run
  def _example(position, index):
    example_seed = tf.stack([tf.constant(seed, tf.int64), position])
    return preprocess(tables, index, data, vocab, seed=example_seed)

  ds = ds.map(_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(2)
  return ds.as_numpy_iterator()


def num_eval_batches(num_images: int, global_batch_size: int) -> int:
  return -(-num_images // global_batch_size)


def eval_batches(split: coco_json.CocoSplit, data: ml_collections.ConfigDict,
                 vocab: vocab_lib.Vocabulary, *, global_batch_size: int, max_images: int = 0,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This process's eval batches; every process yields the same number of batches.

  The first `max_images` records (all if 0) are padded to a whole number of global
  batches by repeating record 0 with `mask` False; process p takes rows
  [p * local, (p + 1) * local) of each global batch.
  """
  records = split.records[:max_images] if max_images else split.records
  num_images = len(records)
  local = global_batch_size // process_count
  total = num_eval_batches(num_images, global_batch_size) * global_batch_size
  tables = _record_tables(records)
  positions = np.arange(total).reshape(-1, process_count, local)[:, process_index].reshape(-1)
  ds = tf.data.Dataset.from_tensor_slices(positions)

  @tf.autograph.experimental.do_not_convert
  def _example(position):
    valid = position < num_images
    example = preprocess(tables, tf.where(valid, position, 0), data, vocab, seed=None)
    example['mask'] = valid
    return example

  ds = ds.map(_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local, drop_remainder=True).prefetch(2).as_numpy_iterator()
