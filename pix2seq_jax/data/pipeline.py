"""tf.data pipelines that turn image records into model-ready numpy batches.

Training order is a pure function of (seed, step): indices are shuffled per epoch
with a fixed seed, each global batch is the next `global` indices of that stream and
process p reads rows [p * local, (p + 1) * local) of it, and resuming at step s skips
s * global indices before any image is read. Random transforms are seeded by the
example's position in the stream, so any number of processes sees the same global batch.

Every batch holds:
  image          evaluation: float32 [B, S, S, 3] in [0, 1], padded with PAD_VALUE
                 training: uint8 [B, S, S, 3], each row the source pixels of its example
                 (`transforms.window_source`) zero-padded bottom/right, with
                 source_extent int32 [B, 2] (their height and width), resample float32
                 [B, 2, 2] (per axis, output pixel 0's source position and the step) and
                 extent int32 [B, 2] (the output image's height and width on the canvas);
                 `canvas.model_images` resamples them into the float32 canvas on the device
  input_tokens   int32 [B, L]   target_tokens int32 [B, L]   loss_weights float32 [B, L]
  image_id       int64 [B]      original_size int32 [B, 2] (h, w)   scale float32 [B]
  mask           bool [B]       (eval only: False on padding examples)

With `task='instance_segmentation'` (Pix2Seq-v2) the records carry their objects'
polygons (`instance_annotations`, passed as `targets`), which follow the boxes through
the same draws (`geometry.*_objects`), and every image holds n = `data.max_instances`
sequences, one per object, padded with empty ones (`instance_sequences`):
  input_tokens   int32 [B, n, L]   target_tokens int32 [B, n, L]   loss_weights float32
                 [B, n, L], L = 5 + 2 * data.max_points
the other fields as above: the image appears once, and the model encodes it once for its
n sequences (`Pix2Seq.__call__`). Batches still split over devices along B.
"""

from __future__ import annotations

from typing import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from pix2seq_jax.config import default
from pix2seq_jax.data import (
  coco_json,
  geometry,
  instance_annotations,
  instance_sequences,
  sequences,
  transforms,
)
from pix2seq_jax.runtime import jit_cache
from pix2seq_jax.tasks import vocab as vocab_lib

_FLIP_OP, _ORDER_OP, _SCALE_OP, _CROP_OP, _SEQUENCE_OP = 1, 2, 3, 4, 5


def _record_tables(records: list[coco_json.ImageRecord],
                   polygons: list[np.ndarray] | None = None) -> dict[str, tf.Tensor]:
  """Records as constant tensors indexed by record number (objects as ragged rows), with
  their objects' `polygons` (per record float32 [N, 2P]) where given."""
  counts = [len(r.labels) for r in records]
  tables = {
      'image_id': tf.constant([r.image_id for r in records], tf.int64),
      'path': tf.constant([r.path for r in records]),
      'size': tf.constant(
          np.array([(r.height, r.width) for r in records], np.int32).reshape(-1, 2)),
      'orientation': tf.constant([r.orientation for r in records], tf.int32),
      'boxes': tf.RaggedTensor.from_row_lengths(
          tf.constant(np.concatenate([r.boxes for r in records]).reshape(-1, 4)), counts),
      'labels': tf.RaggedTensor.from_row_lengths(
          tf.constant(np.concatenate([r.labels for r in records]).astype(np.int32)), counts),
  }
  if polygons is not None:
    width = polygons[0].shape[1]
    tables['polygons'] = tf.RaggedTensor.from_row_lengths(
        tf.constant(np.concatenate(polygons).reshape(-1, width)), counts)
  return tables


def record_at(tables: dict[str, tf.Tensor], index: tf.Tensor) -> dict[str, tf.Tensor]:
  """Record `index` of `_record_tables`: path, size [2], orientation, boxes [N, 4],
  labels [N], image_id, and polygons [N, 2P] where the tables have them."""
  names = ('path', 'size', 'orientation', 'boxes', 'labels', 'image_id')
  return {name: tables[name][index] for name in names + tuple(
      name for name in ('polygons',) if name in tables)}


_RECORD_SPEC = {
    'path': tf.TensorSpec([], tf.string), 'size': tf.TensorSpec([2], tf.int32),
    'orientation': tf.TensorSpec([], tf.int32), 'boxes': tf.TensorSpec([None, 4], tf.float32),
    'labels': tf.TensorSpec([None], tf.int32), 'image_id': tf.TensorSpec([], tf.int64),
}


def _record_spec(task: str, data: ml_collections.ConfigDict) -> dict[str, tf.TensorSpec]:
  """The signature of `record_at`'s records for `task`."""
  if task == 'object_detection':
    return _RECORD_SPEC
  return dict(_RECORD_SPEC, polygons=tf.TensorSpec([None, 2 * data.max_points], tf.float32))


def preprocess(record: dict[str, tf.Tensor], data: ml_collections.ConfigDict,
               vocab: vocab_lib.Vocabulary, seed: tf.Tensor | None,
               task: str = 'object_detection') -> dict[str, tf.Tensor]:
  """Reads a record (`record_at`) and builds one example of `task`; `seed` [2] enables
  training randomness (`preprocess_instances` for the instance tasks).

  Training: scale jitter and random crop (`data.scale_jitter`), flip (`data.random_flip`)
  and object shuffling drawn here, the resampling left to the device
  (`transforms.window_source`), then sequence augmentation (`data.noise_objects`,
  `data.corrupt_classes`). Evaluation (`seed` None): resize the longest side and pad, in
  float32.
  """
  if task != 'object_detection':
    return preprocess_instances(record, data, vocab, seed, task)
  objects, example, extent = _placed(record, data, seed,
                                     {'boxes': record['boxes'], 'labels': record['labels']})
  augment = seed is not None
  example.update(sequences.build_sequences(
      objects['boxes'], objects['labels'], vocab, data.max_instances, data.eos_weight,
      seed=tf.random.experimental.stateless_fold_in(seed, _SEQUENCE_OP) if augment else None,
      noise_objects=augment and data.noise_objects,
      corrupt_classes=augment and data.corrupt_classes,
      noise_coord_weight=data.noise_coord_weight, noise_class_weight=data.noise_class_weight,
      extent=tf.cast(extent, tf.float32) / data.image_size))
  return example


def _placed(record: dict[str, tf.Tensor], data: ml_collections.ConfigDict,
            seed: tf.Tensor | None,
            objects: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor],
                                                    tf.Tensor]:
  """The record's image as the model gets it, and its `objects` (boxes [N, 4] normalised
  to the image, labels [N], polygons or keypoints) moved with it by the same draws
  (`geometry.*_objects`), every task alike.

  Returns (objects normalised to the size x size canvas, the example's image fields:
  image, image_id, original_size, scale and in training extent, source_extent and
  resample, the extent [2] of the image on the canvas).
  """
  pixels = transforms.decode_pixels(tf.io.read_file(record['path']))
  pixels = transforms.apply_exif_orientation(pixels, record['orientation'])
  augment = seed is not None
  # float32 [0, 1] for evaluation, uint8 for training; resize_to is a no-op unless
  # image_check found the file at another size.
  image = transforms.resize_to(pixels if augment else transforms.to_float(pixels),
                               record['size'])
  original_size = tf.shape(image)[:2]
  size = data.image_size
  if augment:
    fold = lambda op: tf.random.experimental.stateless_fold_in(seed, op)
    if data.scale_jitter:
      new_shape, scale, offset, extent = transforms.scale_jitter_and_crop_draws(
          original_size, size, fold(_SCALE_OP), fold(_CROP_OP), data.scale_min,
          data.scale_max)
      objects = geometry.crop_objects(objects, new_shape, offset, extent)
    else:
      new_shape, scale = transforms.longest_side_shape(original_size, size)
      offset, extent = tf.zeros([2], tf.int32), new_shape
    image, resample = transforms.window_source(image, new_shape, offset, extent, size)
    if data.random_flip:
      objects, resample = geometry.random_mirror_objects(objects, resample, extent[1],
                                                         fold(_FLIP_OP))
    objects = geometry.shuffle_objects(objects, fold(_ORDER_OP))
  else:
    image, scale = transforms.resize_longest_side(image, size)
    extent = tf.shape(image)[:2]
    image = transforms.pad_image(image, size)
  example = {'image': image, 'image_id': record['image_id'], 'original_size': original_size,
             'scale': scale}
  if augment:
    example.update(extent=extent, source_extent=tf.shape(image)[:2], resample=resample)
  return geometry.canvas_objects(objects, extent, size), example, extent


def preprocess_instances(record: dict[str, tf.Tensor], data: ml_collections.ConfigDict,
                         vocab: vocab_lib.Vocabulary, seed: tf.Tensor | None,
                         task: str = 'instance_segmentation') -> dict[str, tf.Tensor]:
  """`preprocess` of an instance task: the image and the objects' boxes, labels and
  polygons placed as for detection (`_placed`), then one sequence per object
  (`instance_sequences`), [n, L] each for n = data.max_instances.

  Training shuffles the objects before keeping the first n (as detection; the official
  keeps the first n in the annotations' order) and has no sequence augmentation.
  """
  if task != 'instance_segmentation':
    raise ValueError(f'preprocess_instances: task={task!r} has no sequences here yet.')
  objects, example, _ = _placed(
      record, data, seed, {'boxes': record['boxes'], 'labels': record['labels'],
                           'polygons': record['polygons']})  # [N, 4], [N], [N, 2P]
  bbox, label, polygon = instance_sequences.official_objects(
      objects, vocab.category_ids, data.max_instances)  # [n, 4], [n], [n, 2P]
  input_seq, target_seq, weights = instance_sequences.build_segmentation_sequences(
      bbox, label, polygon, bins=vocab.num_bins, coord_shift=vocab.coord_offset,
      max_points=data.max_points, eos_weight=data.eos_weight,
      prompt=vocab.prompt(task))  # [n, L] each
  example.update(input_tokens=tf.cast(input_seq, tf.int32),
                 target_tokens=tf.cast(target_seq, tf.int32), loss_weights=weights)
  return example


def preprocess_fn(data: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                  training: bool,
                  task: str = 'object_detection') -> Callable[..., dict[str, tf.Tensor]]:
  """`preprocess` as a tf.function of (record, seed [2] int64) for training or (record,)
  for evaluation, traced once per process for each data config and vocabulary.

  Tracing `preprocess` takes about as long as building the rest of a pipeline; every
  pipeline made from the same settings (a resumed run, a periodic evaluation, the tests)
  calls this one traced graph. The records are inputs, not captured, so any split and
  any record table share it.
  """
  settings = ml_collections.FrozenConfigDict(data)
  spec = _record_spec(task, settings)

  def build():
    if training:
      return tf.function(lambda record, seed: preprocess(record, settings, vocab, seed, task),
                         input_signature=[spec, tf.TensorSpec([2], tf.int64)],
                         autograph=False)
    return tf.function(lambda record: preprocess(record, settings, vocab, None, task),
                       input_signature=[spec], autograph=False)

  key = ('preprocess', settings, vocab, training)
  return jit_cache.cached(key if task == 'object_detection' else key + (task,), build)


def _tables_for(records: list[coco_json.ImageRecord], task: str,
                targets: instance_annotations.InstanceTargets | None) -> dict[str, tf.Tensor]:
  """The record tables `task` reads: with the objects' polygons for segmentation."""
  if task not in default.TASKS:
    raise ValueError(f'task={task!r}: use one of {default.TASKS}.')
  if task == 'object_detection':
    return _record_tables(records)
  if targets is None or len(targets.polygons) < len(records):
    raise ValueError(f'task={task!r} needs the records\' instance targets '
                     '(instance_annotations.load_instance_targets, as sources.load_splits '
                     'gives them in Splits.instances).')
  return _record_tables(records, targets.polygons[:len(records)])


def train_batches(split: coco_json.CocoSplit, data: ml_collections.ConfigDict,
                  vocab: vocab_lib.Vocabulary, *, seed: int, local_batch_size: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  task: str = 'object_detection',
                  targets: instance_annotations.InstanceTargets | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """An endless iterator of this process's training batches, starting at `start_step`
  (`targets`: the split's polygons, aligned with its records, for an instance `task`)."""
  tables = _tables_for(split.records, task, targets)
  num_records = len(split.records)
  global_batch_size = local_batch_size * process_count
  ds = tf.data.Dataset.range(num_records)
  ds = ds.shuffle(num_records, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start_step * global_batch_size)  # (position in the stream, index)
  if process_count > 1:  # rows [p * local, (p + 1) * local) of every global batch
    ds = ds.filter(lambda position, _: (position // local_batch_size) % process_count
                   == process_index)

  example_fn = preprocess_fn(data, vocab, training=True, task=task)

  @tf.autograph.experimental.do_not_convert  # plain TF ops; converting costs seconds a run
  def _example(position, index):
    example_seed = tf.stack([tf.constant(seed, tf.int64), position])
    return example_fn(record_at(tables, index), example_seed)

  ds = ds.map(_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # The sources are zero-padded to the canvas as they are copied into the batch.
  size = data.image_size
  padded_shapes = {name: spec.shape for name, spec in ds.element_spec.items()}
  padded_shapes['image'] = tf.TensorShape([size, size, 3])
  ds = ds.padded_batch(local_batch_size, padded_shapes, drop_remainder=True).prefetch(2)
  return ds.as_numpy_iterator()


def num_eval_batches(num_images: int, global_batch_size: int) -> int:
  return -(-num_images // global_batch_size)


def eval_batches(split: coco_json.CocoSplit, data: ml_collections.ConfigDict,
                 vocab: vocab_lib.Vocabulary, *, global_batch_size: int, max_images: int = 0,
                 process_index: int = 0, process_count: int = 1,
                 task: str = 'object_detection',
                 targets: instance_annotations.InstanceTargets | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """This process's eval batches; every process yields the same number of batches.

  The first `max_images` records (all if 0) are padded to a whole number of global
  batches by repeating record 0 with `mask` False; process p takes rows
  [p * local, (p + 1) * local) of each global batch.
  """
  records = split.records[:max_images] if max_images else split.records
  num_images = len(records)
  local = global_batch_size // process_count
  total = num_eval_batches(num_images, global_batch_size) * global_batch_size
  tables = _tables_for(records, task, targets)
  positions = np.arange(total).reshape(-1, process_count, local)[:, process_index].reshape(-1)
  ds = tf.data.Dataset.from_tensor_slices(positions)

  example_fn = preprocess_fn(data, vocab, training=False, task=task)

  @tf.autograph.experimental.do_not_convert
  def _example(position):
    valid = position < num_images
    example = example_fn(record_at(tables, tf.where(valid, position, 0)))
    example['mask'] = valid
    return example

  ds = ds.map(_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local, drop_remainder=True).prefetch(2).as_numpy_iterator()
