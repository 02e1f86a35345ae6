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
n sequences (`Pix2Seq.__call__`). Batches still split over devices along B. Evaluation
batches of both instance tasks also hold crop_offset int32 [B, 2] (zeros here).

With `task='keypoint_detection'` (Pix2Seq-v2) an example is one person, not one image
(the official `unbatch`): the stream runs over every (record, person) pair of the split
(`targets` holds the persons' keypoints; `num_train_examples`, `eval_example_ids`), its
order a pure function of (seed, step) as above. Each example's image is the person's box
widened by `data.crop_pad` of its size on every side within the image
(`transforms.box_crop_region`, the official `crop_to_bbox`), the box and keypoints moved
into it (`geometry.crop_objects`); then the usual draws of `_placed` on the crop, and one
sequence (n = 1) of L = 5 + 2 * 17 tokens: prompt 12, box, class, 17 (y, x) keypoints,
an unlabelled or cropped-out one 41 41. Training corrupts the decoder input (a fraction
r ~ U(0, 1), drawn per example from its seed, of the response input tokens becomes 41;
`data.corrupt_keypoints`). Evaluation examples hold input_tokens / target_tokens /
loss_weights [B, 1, L] uncorrupted (the ground-truth prompt is input_tokens[..., :6]),
original_size int32 [B, 2] the (h, w) of the crop (what was resized to the canvas),
scale float32 [B] canvas / crop, crop_offset int32 [B, 2] the (y, x) of the crop in the
full image, image_id, mask.
"""

from __future__ import annotations

from typing import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from pix2seq_jax.config import default
from pix2seq_jax.data import (
  caption_targets,
  coco_json,
  geometry,
  instance_annotations,
  instance_sequences,
  sequences,
  transforms,
)
from pix2seq_jax.runtime import jit_cache
from pix2seq_jax.tasks import vocab as vocab_lib

_FLIP_OP, _ORDER_OP, _SCALE_OP, _CROP_OP, _SEQUENCE_OP, _CORRUPT_OP = 1, 2, 3, 4, 5, 6
_TEXT_DROP_OP = 7
# A task's targets beside its records (Splits.targets): none for detection.
Targets = instance_annotations.InstanceTargets | caption_targets.CaptionTargets | None


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


def _caption_tables(records: list[coco_json.ImageRecord],
                    targets: caption_targets.CaptionTargets) -> dict[str, tf.Tensor]:
  """`_record_tables` (no objects) with each record's captions' pieces: captions
  int32 ragged [R, (k), (t)]."""
  tables = _record_tables(records)
  values, lengths, counts = targets.flat()
  tables['captions'] = tf.RaggedTensor.from_row_lengths(
      tf.RaggedTensor.from_row_lengths(tf.constant(values), lengths), counts)
  return tables


def _person_tables(records: list[coco_json.ImageRecord],
                   keypoints: list[np.ndarray]) -> dict[str, tf.Tensor]:
  """One row per (record, person) pair, in record then object order: the record's
  fields and the person as its only object (boxes [P, 1, 4], labels [P, 1], keypoints
  [P, 1, K]; `keypoints` per record float32 [N, K], K = 2 * 17)."""
  pairs = [(r, k) for r, record in enumerate(records) for k in range(len(record.labels))]
  width = keypoints[0].shape[1] if keypoints else 2 * instance_annotations.NUM_KEYPOINTS
  image = lambda field, dtype: np.array([getattr(records[r], field) for r, _ in pairs], dtype)
  boxes = np.array([records[r].boxes[k] for r, k in pairs], np.float32).reshape(-1, 1, 4)
  labels = np.array([records[r].labels[k] for r, k in pairs], np.int32).reshape(-1, 1)
  points = np.array([keypoints[r][k] for r, k in pairs], np.float32).reshape(-1, 1, width)
  return {
      'image_id': tf.constant(image('image_id', np.int64)),
      'path': tf.constant(image('path', object).astype(str), tf.string),
      'size': tf.constant(np.stack([image('height', np.int32), image('width', np.int32)],
                                   axis=-1).reshape(-1, 2)),
      'orientation': tf.constant(image('orientation', np.int32)),
      'boxes': tf.constant(boxes), 'labels': tf.constant(labels),
      'keypoints': tf.constant(points),
  }


def record_at(tables: dict[str, tf.Tensor], index: tf.Tensor) -> dict[str, tf.Tensor]:
  """Record `index` of `_record_tables` (or example `index` of `_person_tables`): path,
  size [2], orientation, boxes [N, 4], labels [N], image_id, and polygons [N, 2P] or
  keypoints [N, 34] where the tables have them."""
  names = ('path', 'size', 'orientation', 'boxes', 'labels', 'image_id')
  return {name: tables[name][index] for name in names + tuple(
      name for name in ('polygons', 'keypoints', 'captions') if name in tables)}


_RECORD_SPEC = {
    'path': tf.TensorSpec([], tf.string), 'size': tf.TensorSpec([2], tf.int32),
    'orientation': tf.TensorSpec([], tf.int32), 'boxes': tf.TensorSpec([None, 4], tf.float32),
    'labels': tf.TensorSpec([None], tf.int32), 'image_id': tf.TensorSpec([], tf.int64),
}


def _record_spec(task: str, data: ml_collections.ConfigDict) -> dict[str, tf.TensorSpec]:
  """The signature of `record_at`'s records for `task`."""
  if task == 'object_detection':
    return _RECORD_SPEC
  if task == 'captioning':
    return dict(_RECORD_SPEC, captions=tf.RaggedTensorSpec([None, None], tf.int32, 1))
  points = 'keypoints' if task == 'keypoint_detection' else 'polygons'
  return dict(_RECORD_SPEC, **{points: tf.TensorSpec([None, 2 * data.max_points], tf.float32)})


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
  if task == 'captioning':
    return preprocess_captions(record, data, vocab, seed)
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
            seed: tf.Tensor | None, objects: dict[str, tf.Tensor],
            crop_pad: float | None = None
            ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor], tf.Tensor]:
  """The record's image as the model gets it, and its `objects` (boxes [N, 4] normalised
  to the image, labels [N], polygons or keypoints) moved with it by the same draws
  (`geometry.*_objects`), every task alike. With `crop_pad` the image is first cropped
  to the first object's box widened by `crop_pad` of its size (`_crop_to_box`), and
  everything below sees the crop as the image.

  Returns (objects normalised to the size x size canvas, the example's image fields:
  image, image_id, original_size, scale, in evaluation with `crop_pad` crop_offset, in
  training extent, source_extent and resample; the extent [2] of the image on the
  canvas).
  """
  pixels = transforms.decode_pixels(tf.io.read_file(record['path']))
  pixels = transforms.apply_exif_orientation(pixels, record['orientation'])
  augment = seed is not None
  # float32 [0, 1] for evaluation, uint8 for training; resize_to is a no-op unless
  # image_check found the file at another size.
  image = transforms.resize_to(pixels if augment else transforms.to_float(pixels),
                               record['size'])
  crop_offset = tf.zeros([2], tf.int32)
  if crop_pad is not None:
    image, objects, crop_offset = _crop_to_box(image, objects, crop_pad)
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
  if crop_pad is not None and not augment:
    example['crop_offset'] = crop_offset
  if augment:
    example.update(extent=extent, source_extent=tf.shape(image)[:2], resample=resample)
  return geometry.canvas_objects(objects, extent, size), example, extent


def _crop_to_box(image: tf.Tensor, objects: dict[str, tf.Tensor], pad: float
                 ) -> tuple[tf.Tensor, dict[str, tf.Tensor], tf.Tensor]:
  """`image` [H, W, 3] cropped to the window of objects['boxes'][0]
  (`transforms.box_crop_region`), the objects moved into it (keypoints left outside
  become invisible, `geometry.crop_keypoints`). Returns (crop, objects, offset int32 [2])."""
  shape = tf.shape(image)[:2]
  offset, size = transforms.box_crop_region(objects['boxes'][0], shape, pad)
  crop = image[offset[0]:offset[0] + size[0], offset[1]:offset[1] + size[1]]
  return crop, geometry.crop_objects(objects, shape, offset, size), offset


def preprocess_instances(record: dict[str, tf.Tensor], data: ml_collections.ConfigDict,
                         vocab: vocab_lib.Vocabulary, seed: tf.Tensor | None,
                         task: str = 'instance_segmentation') -> dict[str, tf.Tensor]:
  """`preprocess` of an instance task: the image and the objects' boxes, labels and
  polygons or keypoints placed as for detection (`_placed`; keypoints: the image cropped
  to the example's person first), then one sequence per object (`instance_sequences`),
  [n, L] each for n = data.max_instances.

  Training shuffles the objects before keeping the first n (as detection; the official
  keeps the first n in the annotations' order). Segmentation has no sequence
  augmentation; keypoints have the official input corruption (`data.corrupt_keypoints`).
  Evaluation examples carry crop_offset [2] (zeros for segmentation); training ones not.
  """
  if task not in default.INSTANCE_TASKS:
    raise ValueError(f'preprocess_instances: task={task!r} is not one of '
                     f'{default.INSTANCE_TASKS}.')
  keypoints = task == 'keypoint_detection'
  points = 'keypoints' if keypoints else 'polygons'
  objects, example, _ = _placed(
      record, data, seed, {'boxes': record['boxes'], 'labels': record['labels'],
                           points: record[points]},  # [N, 4], [N], [N, 2P]
      crop_pad=data.crop_pad if keypoints else None)
  bbox, label, rows = instance_sequences.official_objects(
      objects, vocab.category_ids, data.max_instances, points)  # [n, 4], [n], [n, 2P]
  common = dict(bins=vocab.num_bins, coord_shift=vocab.coord_offset,
                max_points=data.max_points, eos_weight=data.eos_weight,
                prompt=vocab.prompt(task))
  if keypoints:
    ratio = noise = None
    if seed is not None and data.corrupt_keypoints:
      ratio, noise = _corruption_draws(
          tf.random.experimental.stateless_fold_in(seed, _CORRUPT_OP), data)
    input_seq, target_seq, weights = instance_sequences.build_keypoint_sequences(
        bbox, label, rows, invisible_weight=data.invisible_weight, ratio=ratio,
        noise=noise, **common)  # [n, L] each
  else:
    input_seq, target_seq, weights = instance_sequences.build_segmentation_sequences(
        bbox, label, rows, **common)  # [n, L] each
  if seed is None:  # the instance tasks' eval fields are alike
    example.setdefault('crop_offset', tf.zeros([2], tf.int32))
  example.update(input_tokens=tf.cast(input_seq, tf.int32),
                 target_tokens=tf.cast(target_seq, tf.int32), loss_weights=weights)
  return example


def caption_sequences(pieces: tf.Tensor, vocab: vocab_lib.Vocabulary, length: int,
                      eos_weight: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Teacher-forcing sequences of captions: pieces int32 [k, t] (piece ids ending with
  EOS, padded with -1) -> input_tokens, target_tokens int32 [k, length] and loss_weights
  float32 [k, length] (the official captioning `preprocess_batched`).

  The response is each caption's text tokens (text_offset + piece, the EOS piece's token
  last) padded with 0 to `length`; the input is the captioning prompt followed by the
  response without its last token, the target the response. Weights: the EOS target
  `eos_weight`, every other target 1, padding included (the official weighs the
  padding after a caption as a token, so the model learns to stop); a caption row without
  pieces (an image with fewer captions than rows) weighs 0 throughout.
  """
  pieces = pieces[:, :length]
  pad = length - tf.shape(pieces)[1]
  pieces = tf.pad(pieces, [[0, 0], [0, pad]], constant_values=-1)  # [k, length]
  response = tf.where(pieces >= 0, pieces + vocab.text_offset, vocab.padding)
  prompt = tf.fill([tf.shape(pieces)[0], 1], vocab.prompt('captioning'))
  input_tokens = tf.concat([prompt, response[:, :-1]], axis=1)
  weights = tf.where(response == vocab.text_eos, eos_weight, 1.0)
  real = tf.cast(pieces[:, :1] >= 0, tf.float32)  # [k, 1]: rows holding a caption
  return (tf.cast(input_tokens, tf.int32), tf.cast(response, tf.int32),
          tf.cast(weights, tf.float32) * real)


def preprocess_captions(record: dict[str, tf.Tensor], data: ml_collections.ConfigDict,
                        vocab: vocab_lib.Vocabulary,
                        seed: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """`preprocess` of captioning: the image placed as for detection (`_placed`, no
  objects: training draws the scale jitter, crop and flip of the official captioning
  transforms), and the first `data.captions_per_image` captions of the record as n of
  them sequences [n, data.max_text_len] (`caption_sequences`). Training replaces each
  input token by the fake-text token with probability `data.text_dropout` (the
  official input_seq_drop_rate: prompt and padding included; targets unchanged)."""
  empty = {'boxes': tf.zeros([0, 4], tf.float32), 'labels': tf.zeros([0], tf.int32)}
  _, example, _ = _placed(record, data, seed, empty)
  n = data.captions_per_image
  pieces = record['captions'][:n].to_tensor(default_value=-1)  # [<= n, t]
  pieces = tf.pad(pieces, [[0, n - tf.shape(pieces)[0]], [0, 0]], constant_values=-1)
  input_seq, target_seq, weights = caption_sequences(
      pieces, vocab, data.max_text_len, data.eos_weight)  # [n, L] each
  if seed is not None and data.text_dropout > 0:
    keep = tf.random.stateless_uniform(
        tf.shape(input_seq), seed=tf.random.experimental.stateless_fold_in(
            seed, _TEXT_DROP_OP)) > data.text_dropout
    input_seq = tf.where(keep, input_seq, vocab.noise_class)
  if seed is None:
    example['crop_offset'] = tf.zeros([2], tf.int32)
  example.update(input_tokens=input_seq, target_tokens=target_seq, loss_weights=weights)
  return example


def _corruption_draws(seed: tf.Tensor,
                      data: ml_collections.ConfigDict) -> tuple[tf.Tensor, tf.Tensor]:
  """(ratio [], noise float32 [n, L - 6]) of the keypoint input corruption for `seed` [2]:
  response input token j becomes 41 where noise[j] < ratio."""
  # The input's response tokens: L - 6 = 2 * max_points - 1 (the last point's x is only
  # a target).
  ratio = tf.random.stateless_uniform([], seed=seed)
  noise = tf.random.stateless_uniform(
      [data.max_instances, 2 * data.max_points - 1],
      seed=tf.random.experimental.stateless_fold_in(seed, 1))
  return ratio, noise


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


def _check_targets(records: list[coco_json.ImageRecord], task: str, targets) -> None:
  if task not in default.TASKS:
    raise ValueError(f'task={task!r}: use one of {default.TASKS}.')
  if task == 'captioning':
    if not isinstance(targets, caption_targets.CaptionTargets) or len(targets.pieces) < len(
        records):
      raise ValueError('task=\'captioning\' needs the records\' captions '
                       '(caption_targets.caption_targets, as sources.load_splits gives them '
                       'in Splits.captions).')
    return
  if task != 'object_detection' and (targets is None or len(targets.polygons) < len(records)):
    raise ValueError(f'task={task!r} needs the records\' instance targets '
                     '(instance_annotations.load_instance_targets, as sources.load_splits '
                     'gives them in Splits.instances).')


def _tables_for(records: list[coco_json.ImageRecord], task: str,
                targets: Targets
                ) -> tuple[dict[str, tf.Tensor], int]:
  """(the tables `task` reads, their number of examples): records, with the objects'
  polygons for segmentation; one row per person with its keypoints for keypoints."""
  _check_targets(records, task, targets)
  if task == 'object_detection':
    return _record_tables(records), len(records)
  if task == 'captioning':
    return _caption_tables(records, caption_targets.CaptionTargets(
        targets.texts[:len(records)], targets.pieces[:len(records)])), len(records)
  if task == 'keypoint_detection':
    tables = _person_tables(records, targets.keypoints[:len(records)])
    return tables, int(tables['image_id'].shape[0])
  return _record_tables(records, targets.polygons[:len(records)]), len(records)


def example_image_ids(records: list[coco_json.ImageRecord], task: str) -> np.ndarray:
  """int64 [E]: the image id of each example `task` makes of `records`, in stream order
  (keypoint_detection: one per person, i.e. per object of the records; otherwise one per
  record)."""
  if task == 'keypoint_detection':
    return np.array([r.image_id for r in records for _ in range(len(r.labels))], np.int64)
  return np.array([r.image_id for r in records], np.int64)


def num_train_examples(split: coco_json.CocoSplit, task: str = 'object_detection') -> int:
  """Examples in one epoch of `split` for `task` (keypoint_detection: its persons)."""
  return len(example_image_ids(split.records, task))


def eval_example_ids(split: coco_json.CocoSplit, task: str = 'object_detection',
                     max_images: int = 0) -> np.ndarray:
  """int64 [E]: the image id of each example `eval_batches` yields (mask True), in order,
  for the first `max_images` records (all if 0)."""
  return example_image_ids(split.records[:max_images] if max_images else split.records, task)


def num_eval_examples(split: coco_json.CocoSplit, task: str = 'object_detection',
                      max_images: int = 0) -> int:
  """The examples `eval_batches` yields with mask True (keypoints: one per person)."""
  return len(eval_example_ids(split, task, max_images))


def train_batches(split: coco_json.CocoSplit, data: ml_collections.ConfigDict,
                  vocab: vocab_lib.Vocabulary, *, seed: int, local_batch_size: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  task: str = 'object_detection',
                  targets: Targets = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """An endless iterator of this process's training batches, starting at `start_step`
  (`targets`: the split's polygons or keypoints, aligned with its records, for an instance
  `task`; keypoint_detection streams its persons, `num_train_examples` of them)."""
  tables, num_records = _tables_for(split.records, task, targets)
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
                 targets: Targets = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """This process's eval batches; every process yields the same number of batches.

  The examples of the first `max_images` records (all if 0; keypoint_detection: one per
  person, `eval_example_ids`) are padded to a whole number of global batches by repeating
  example 0 with `mask` False; process p takes rows [p * local, (p + 1) * local) of each
  global batch.
  """
  records = split.records[:max_images] if max_images else split.records
  local = global_batch_size // process_count
  tables, num_examples = _tables_for(records, task, targets)
  total = num_eval_batches(num_examples, global_batch_size) * global_batch_size
  positions = np.arange(total).reshape(-1, process_count, local)[:, process_index].reshape(-1)
  ds = tf.data.Dataset.from_tensor_slices(positions)

  example_fn = preprocess_fn(data, vocab, training=False, task=task)

  @tf.autograph.experimental.do_not_convert
  def _example(position):
    valid = position < num_examples
    example = example_fn(record_at(tables, tf.where(valid, position, 0)))
    example['mask'] = valid
    return example

  ds = ds.map(_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local, drop_remainder=True).prefetch(2).as_numpy_iterator()
