"""Oracle for the Pix2Seq-v2 instance tasks: the official code's own sequences and
post-processing for instance segmentation (prompt 11) and keypoints (prompt 12) on real
COCO images, saved as small fixtures for tests/test_official_tasks_parity.py.

Runs in a scratch environment (tensorflow-cpu, tf-keras, ml-collections, einops,
pycocotools, matplotlib, pillow; skimage and tensorflow_datasets are stubbed, unused on
these paths) with an official checkout SRC; never imported by the project:

  python benchmarks/official_tasks_fixture.py SRC COCO_MINI OUT

What it runs, all official code (google-research/pix2seq), with the official
`configs/config_multi_task.py` task configs:
  1. `data/scripts/create_coco_tfrecord.create_tf_example` turns three coco_mini val2017
     images (instances, person_keypoints, captions JSON) into tf.Examples, written to a
     temporary TFRecord;
  2. the official dataset classes (`coco/2017_instance_segmentation`,
     `coco/2017_keypoint_detection`) parse, filter and `extract` them (training=True);
  3. the official task's `preprocess_single` (for keypoints: unbatch and crop to the padded
     box) and its train transforms, made deterministic: scale jitter fixed to 1.0 (min = max
     = 1, so `fixed_size_crop` has no room to move) and `random_horizontal_flip` left out;
  4. `padded_batch` and the task's `preprocess_batched(training=True)`: input, target and
     token weights. The keypoint task's random input corruption (a ratio, then one uniform
     draw per response token) is fed fixed values by patching `tf.random.uniform` for that
     call: once with ratio 0 (no corruption), once with ratio 0.5 and recorded noise;
  5. the official post-processing on given token sequences: segmentation
     `postprocess_tpu` (eval scaling) then `segment_to_mask_rle`, `mask_rle_to_mask_np`,
     `ensemble_mask_np` (8 samples per object, threshold 0.5); keypoints `postprocess_tpu`
     (invisible -> box centre, rescale, crop offset, weighted scores) then
     `metrics.coco_metrics.insert_visibility(utils.yx2xy(...))`.
Writes OUT/segmentation.npz, OUT/keypoints.npz, OUT/official.json (constants, image ids,
RLEs and keypoints).
"""
import copy
import importlib
import json
import os
import sys
import tempfile
import types

import official_env  # benchmarks/official_env.py, beside this script

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
src, coco_root, out = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, src)
official_env.stub_tensorflow_addons()
# metrics/coco_metrics.py imports skimage.segmentation (panoptic only): a stand-in.
_skimage = types.ModuleType('skimage')
_skimage.segmentation = types.ModuleType('skimage.segmentation')
sys.modules['skimage'] = _skimage
sys.modules['skimage.segmentation'] = _skimage.segmentation
# data/dataset.py imports tensorflow_datasets for its TFDS datasets (unused here).
sys.modules.setdefault('tensorflow_datasets', types.ModuleType('tensorflow_datasets'))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from pycocotools import mask as mask_lib  # noqa: E402

# The official modules (SRC on sys.path), by name: data.coco and the task modules register
# the datasets and tasks that the registries look up below.
_official = {name: importlib.import_module(name) for name in (
    'utils', 'vocab', 'configs.config_multi_task', 'configs.transform_configs', 'data.coco',
    'data.dataset', 'data.scripts.create_coco_tfrecord', 'metrics.coco_metrics',
    'tasks.instance_segmentation', 'tasks.keypoint_detection', 'tasks.task')}
utils, vocab = _official['utils'], _official['vocab']
config_multi_task = _official['configs.config_multi_task']
transform_configs = _official['configs.transform_configs']
dataset_lib = _official['data.dataset']
create_coco_tfrecord = _official['data.scripts.create_coco_tfrecord']
coco_metrics = _official['metrics.coco_metrics']
instance_segmentation = _official['tasks.instance_segmentation']
task_lib = _official['tasks.task']

tf.get_logger().setLevel('ERROR')
tf.autograph.set_verbosity(0)
SPLIT = 'val2017'
# 214753: 4 objects, a horse with two polygons (272 floats + separator: truncated at 256),
#   2 persons with unlabelled (v=0) keypoints; 229358: 10 objects, 2 with two polygons,
#   persons with v=1 keypoints; 92660: 17 objects, one crowd (dropped), more than 10.
IMAGE_IDS = [214753, 229358, 92660]
NUM_SAMPLES = 8
rng = np.random.default_rng(0)


def load_json(name):
  with open(os.path.join(coco_root, 'annotations', name)) as f:
    return json.load(f)


def write_tfrecord(path):
  """The official create_coco_tfrecord conversion of the chosen images."""
  ins = load_json(f'instances_{SPLIT}.json')
  kps = load_json(f'person_keypoints_{SPLIT}.json')
  caps = load_json(f'captions_{SPLIT}.json')
  names = {c['id']: c['name'] for c in ins['categories']}
  images = {i['id']: i for i in ins['images']}
  with tf.io.TFRecordWriter(path) as writer:
    for image_id in IMAGE_IDS:
      obj = [a for a in ins['annotations'] if a['image_id'] == image_id]
      key = [a for a in kps['annotations'] if a['image_id'] == image_id]
      cap = [a['caption'].encode('utf8') for a in caps['annotations']
             if a['image_id'] == image_id]
      example, _ = create_coco_tfrecord.create_tf_example(
          images[image_id], os.path.join(coco_root, SPLIT), None, names, obj, cap, key,
          {}, {})
      writer.write(example.SerializeToString())


def task_config(index, train_transforms):
  config = config_multi_task.get_config(
      'instance_segmentation@coco/2017_instance_segmentation'
      '+keypoint_detection@coco/2017_keypoint_detection,resnet')
  config = copy.deepcopy(config)
  config.task = config.tasks[index]
  config.dataset = config.datasets[index]
  config.dataset.category_names_path = ''
  config.task.metric.name = ''
  config.task.train_transforms = [t for t in train_transforms
                                   if t.name != 'random_horizontal_flip']
  return config


def run_pipeline(config, record):
  """Official parse -> filter -> extract -> preprocess_single, training mode."""
  task = task_lib.TaskRegistry.lookup(config.task.name)(config)
  ds_obj = dataset_lib.DatasetRegistry.lookup(config.dataset.name)(config)
  ds = tf.data.TFRecordDataset(record)
  ds = ds.map(lambda x: ds_obj.parse_example(x, True))
  ds = ds.filter(lambda x: ds_obj.filter_example(x, True))
  extracted = ds.map(lambda x: ds_obj.extract(x, True))
  processed = task.preprocess_single(extracted, 1, True)
  batch = next(iter(processed.padded_batch(64)))
  return task, list(extracted), batch


class PatchedUniform:
  """Feeds fixed values to tf.random.uniform: first the ratio, then the noise."""

  def __init__(self, values):
    self.values, self.orig = list(values), tf.random.uniform

  def __call__(self, shape, *args, **kwargs):
    value = self.values.pop(0)
    assert list(np.shape(value)) == list(shape), (np.shape(value), shape)
    return tf.constant(value, tf.float32)

  def __enter__(self):
    tf.random.uniform = self
    return self

  def __exit__(self, *exc):
    tf.random.uniform = self.orig


def jitter_tokens(response, bins, shift, amount):
  """Sample-like variants of a response: coordinate tokens moved by up to `amount`."""
  noisy = response.copy()
  is_coord = noisy >= shift
  noisy[is_coord] += rng.integers(-amount, amount + 1, int(is_coord.sum()))
  noisy[is_coord] = np.clip(noisy[is_coord], shift, shift + bins - 1)
  return noisy


def segmentation(record, facts):
  tc = transform_configs.get_instance_segmentation_train_transforms(
      (640, 640), 10, jitter_scale_min=1.0, jitter_scale_max=1.0)
  config = task_config(0, tc)
  task, extracted, batch = run_pipeline(config, record)
  bins, shift = config.task.quantization_bins, config.model.coord_vocab_shift
  _, input_seq, target_seq, weights = task.preprocess_batched(dict(batch), True)
  facts['segmentation'] = {k: config.task[k] for k in (
      'vocab_id', 'quantization_bins', 'max_instances_per_image', 'max_points_per_object',
      'max_seq_len', 'eos_token_weight', 'ensemble_num_samples', 'ensemble_threshold',
      'shuffle_polygon_start_point', 'crop_to_bbox', 'unbatch')}

  # Post-processing: 8 "samples" per object built from the ground-truth response.
  label = batch['label'].numpy()
  bsz, n_inst = label.shape
  response = target_seq.numpy()[:, :, 5:]  # [b, n, 256] the response tokens
  samples = np.zeros((bsz, n_inst, NUM_SAMPLES, response.shape[-1]), np.int64)
  for b in range(bsz):
    for i in range(n_inst):
      for s in range(NUM_SAMPLES):
        seq = response[b, i] if s == 0 else jitter_tokens(response[b, i], bins, shift, 12)
        if s == 3:  # stops early (padding mid-way): the rest is ignored
          seq = seq.copy()
          seq[seq.shape[0] // 3 * 2:] = 0
        if s == 5:  # a separator right at the start and an unpaired separator
          seq = np.concatenate([[40, 40], seq[:-2]])
          seq[9] = 40
        samples[b, i, s] = seq
  pred_seq = tf.constant(samples.reshape(-1, samples.shape[-1]))
  scores = tf.where(label > 0, batch['scores'], 0.)
  # The train transforms' fixed_size_crop records crop_offset (0, 0 here); the official
  # segmentation postprocess_tpu tiles it by samples but not by instances (shape error for
  # more than one instance), and its eval transforms never crop: leave it out.
  post_batch = {k: v for k, v in batch.items() if k != 'crop_offset'}
  outputs = task.postprocess_tpu(post_batch, pred_seq, tf.reshape(batch['label'], [-1]),
                                 tf.reshape(batch['bbox'], [-1, 4]),
                                 tf.reshape(scores, [-1]), training=False)
  (_, _, size_before_crop, _, _, _, points_rescaled, _, _, _) = outputs
  mask_size = size_before_crop.numpy()
  rles = instance_segmentation.segment_to_mask_rle(points_rescaled.numpy(), mask_size)
  masks = instance_segmentation.mask_rle_to_mask_np(rles, mask_size)
  ensembled = instance_segmentation.ensemble_mask_np(
      masks, bsz * n_inst, NUM_SAMPLES, config.task.ensemble_threshold)
  polygons = [instance_segmentation._split_segment(utils.yx2xy(p))  # pylint: disable=protected-access
              for p in points_rescaled.numpy()]

  def rle_json(mask):
    rle = mask_lib.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode()}

  facts['segmentation_post'] = {
      'sample_rles': [{'size': [int(v) for v in r['size']],
                       'counts': r['counts'].decode()} for r in rles],
      'ensembled_rles': [rle_json(m) for m in ensembled],
      'polygons_first_sample': [polygons[k] for k in range(0, len(polygons), NUM_SAMPLES)],
  }
  ex0 = extracted
  np.savez_compressed(
      os.path.join(out, 'segmentation.npz'),
      # After the official extract (one row per image, non-crowd objects).
      extract_polygon=np.concatenate([e['polygon'].numpy() for e in ex0]),
      extract_bbox=np.concatenate([e['bbox'].numpy() for e in ex0]),
      extract_label=np.concatenate([e['label'].numpy() for e in ex0]),
      extract_counts=np.array([e['label'].shape[0] for e in ex0]),
      extract_image_id=np.array([int(e['image/id']) for e in ex0]),
      # After the transforms and padded_batch: the builders' inputs.
      bbox=batch['bbox'].numpy(), label=label, polygon=batch['polygon'].numpy(),
      # preprocess_batched(training=True).
      input_seq=input_seq.numpy().astype(np.int16),
      target_seq=target_seq.numpy().astype(np.int16),
      token_weights=weights.numpy(),
      # Post-processing inputs.
      pred_seq=samples.astype(np.int16),
      image_size=np.array(batch['image'].shape[1:3]),
      unpadded_image_size=batch['unpadded_image_size'].numpy(),
      orig_image_size=batch['orig_image_size'].numpy(),
      image_size_before_cropping=batch['image_size_before_cropping'].numpy(),
      # Post-processing outputs: points in original pixels (y, x) per sample.
      points_rescaled=points_rescaled.numpy())


def keypoints(record, facts):
  tc = transform_configs.get_keypoint_detection_train_transforms(
      (640, 640), 1, jitter_scale_min=1.0, jitter_scale_max=1.0)
  config = task_config(1, tc)
  task, extracted, batch = run_pipeline(config, record)
  bins, shift = config.task.quantization_bins, config.model.coord_vocab_shift
  facts['keypoints'] = {k: config.task[k] for k in (
      'vocab_id', 'quantization_bins', 'max_instances_per_image', 'max_points_per_object',
      'max_seq_len', 'eos_token_weight', 'invisible_token_weight', 'crop_to_bbox',
      'crop_to_bbox_pad_scale', 'unbatch', 'points_score_weight',
      'eval_suppress_invisible_token')}
  n = batch['label'].shape[0]
  resp_len = batch['keypoints'].shape[-1]
  with PatchedUniform([np.float32(0.0), np.zeros((n, 1, resp_len - 1), np.float32)]):
    _, input_clean, target_seq, weights = task.preprocess_batched(dict(batch), True)
  noise = rng.uniform(size=(n, 1, resp_len - 1)).astype(np.float32)
  with PatchedUniform([np.float32(0.5), noise]):
    _, input_corrupt, target2, weights2 = task.preprocess_batched(dict(batch), True)
  assert np.array_equal(target_seq.numpy(), target2.numpy())
  assert np.array_equal(weights.numpy(), weights2.numpy())

  # Post-processing on sample-like sequences.
  response = target_seq.numpy()[:, 0, 5:]  # [n, 34]
  pred = np.stack([jitter_tokens(r, bins, shift, 8) for r in response])
  pred[0, 2:4] = 41  # an invisible point (both coordinates)
  pred[1 % n, 7] = 41  # only the x of one point invisible: replaced per coordinate
  pred_seq = tf.constant(pred)
  vocab_size = config.model.vocab_size
  logits = synthetic_logits(n, pred.shape[1], vocab_size)
  box_scores = (0.5 + 0.1 * np.arange(n)).astype(np.float32)
  outputs = task.postprocess_tpu(
      dict(batch), pred_seq, tf.constant(logits), tf.reshape(batch['label'], [-1]),
      tf.reshape(batch['bbox'], [-1, 4]), tf.constant(box_scores), training=False)
  (_, _, _, _, points_rescaled, _, _, scores) = outputs
  coco_kps = [coco_metrics.insert_visibility(utils.yx2xy(p))
              for p in points_rescaled.numpy()]
  facts['keypoints_post'] = {'coco_keypoints': [[float(v) for v in k] for k in coco_kps],
                             'scores': [float(s) for s in scores.numpy()],
                             'box_scores': [float(s) for s in box_scores],
                             'logits': 'synthetic_logits(n, 34, 35000): see README'}
  np.savez_compressed(
      os.path.join(out, 'keypoints.npz'),
      extract_keypoints=np.concatenate([e['keypoints'].numpy() for e in extracted]),
      extract_bbox=np.concatenate([e['bbox'].numpy() for e in extracted]),
      extract_counts=np.array([e['label'].shape[0] for e in extracted]),
      extract_image_id=np.array([int(e['image/id']) for e in extracted]),
      image_id=batch['image/id'].numpy(),
      bbox=batch['bbox'].numpy(), label=batch['label'].numpy(),
      keypoints=batch['keypoints'].numpy(),
      crop_offset=batch['crop_offset'].numpy(),
      input_seq=input_clean.numpy().astype(np.int16),
      input_seq_corrupted=input_corrupt.numpy().astype(np.int16),
      corruption_ratio=np.float32(0.5), corruption_noise=noise,
      target_seq=target_seq.numpy().astype(np.int16),
      token_weights=weights.numpy(),
      pred_seq=pred.astype(np.int16),
      image_size=np.array(batch['image'].shape[1:3]),
      unpadded_image_size=batch['unpadded_image_size'].numpy(),
      orig_image_size=batch['orig_image_size'].numpy(),
      points_rescaled=points_rescaled.numpy(),
      scores=scores.numpy(), box_scores=box_scores)


def synthetic_logits(n, length, vocab_size):
  """Deterministic logits the test rebuilds: 3 sin(0.37 v + 1.3 t + 2.1 b)."""
  b = np.arange(n, dtype=np.float64)[:, None, None]
  t = np.arange(length, dtype=np.float64)[None, :, None]
  v = np.arange(vocab_size, dtype=np.float64)[None, None, :]
  return (3.0 * np.sin(0.37 * v + 1.3 * t + 2.1 * b)).astype(np.float32)


def main():
  os.makedirs(out, exist_ok=True)
  facts = {
      'image_ids': IMAGE_IDS, 'split': SPLIT, 'num_samples': NUM_SAMPLES,
      'vocab': {'PADDING_TOKEN': vocab.PADDING_TOKEN,
                'FAKE_CLASS_TOKEN': vocab.FAKE_CLASS_TOKEN,
                'SEPARATOR_TOKEN': vocab.SEPARATOR_TOKEN,
                'INVISIBLE_TOKEN': vocab.INVISIBLE_TOKEN,
                'BASE_VOCAB_SHIFT': vocab.BASE_VOCAB_SHIFT,
                'PADDING_FLOAT': vocab.PADDING_FLOAT,
                'SEPARATOR_FLOAT': vocab.SEPARATOR_FLOAT,
                'INVISIBLE_FLOAT': vocab.INVISIBLE_FLOAT},
  }
  # (The default config_str names a dataset '2017_instance_segmentation' that
  # dataset_configs lacks, so the defaults cannot be built: name the tasks.)
  config = config_multi_task.get_config('object_detection@coco/2017_object_detection,resnet')
  facts['model'] = {k: config.model[k] for k in (
      'max_seq_len', 'vocab_size', 'coord_vocab_shift', 'text_vocab_shift')}
  facts['task_vocab_ids'] = {
      t: config_multi_task.get_config(f'{t}@coco/2017_captioning,resnet').task.vocab_id
      for t in ('object_detection', 'instance_segmentation', 'keypoint_detection',
                'captioning')}
  with tempfile.TemporaryDirectory() as tmp:
    record = os.path.join(tmp, 'coco_mini.tfrecord')
    write_tfrecord(record)
    segmentation(record, facts)
    keypoints(record, facts)
  with open(os.path.join(out, 'official.json'), 'w') as f:
    json.dump(facts, f, indent=1)
  print(json.dumps({k: facts[k] for k in ('model', 'task_vocab_ids', 'segmentation',
                                          'keypoints')}, indent=1))


if __name__ == '__main__':
  main()
