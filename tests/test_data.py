"""COCO-format reading, the shapes generator, and the tf.data pipelines on real files."""

import json
import os

import numpy as np
import pytest

from pix2seq_jax.data import coco_json, pipeline, shapes, sources
from pix2seq_jax.tasks import vocab as vocab_lib
from tests.tiny import shared_path, tiny_config


def _write(path, content):
  with open(path, 'w') as f:
    f.write(content if isinstance(content, str) else json.dumps(content))
  return str(path)


def test_coco_tiny_maps_category_ids_with_gaps():
  split = coco_json.load_split(shared_path('coco_tiny', 'annotations', 'instances_val2017.json'),
                               shared_path('coco_tiny', 'val2017'))
  cats = split.categories
  assert cats.num_classes == 80 and cats.category_ids[0] == 1 and cats.category_ids[-1] == 90
  assert 12 not in cats.category_ids and cats.label_of(13) == 11
  assert len(split.records) == 80 and split.dropped['crowd'] == 11
  assert all(os.path.exists(r.path) for r in split.records)
  kept = sum(len(r.labels) for r in split.records)
  assert kept == 815 - 11 - split.dropped.get('degenerate_box', 0)
  for r in split.records:
    assert ((r.boxes >= 0) & (r.boxes <= 1)).all()
    assert (r.boxes[:, :2] < r.boxes[:, 2:]).all()


def test_crowd_degenerate_and_empty_images(tmp_path):
  path = _write(tmp_path / 'a.json', {
      'images': [{'id': 1, 'file_name': 'a.jpg', 'height': 100, 'width': 200},
                 {'id': 2, 'file_name': 'b.jpg', 'height': 10, 'width': 10}],
      'categories': [{'id': 7, 'name': 'cat'}, {'id': 3, 'name': 'dog'}],
      'annotations': [
          {'image_id': 1, 'category_id': 7, 'bbox': [20, 10, 100, 50], 'iscrowd': 0},
          {'image_id': 1, 'category_id': 3, 'bbox': [0, 0, 10, 10], 'iscrowd': 1},
          {'image_id': 1, 'category_id': 3, 'bbox': [5, 5, 0, 10]},
          {'image_id': 1, 'category_id': 3, 'bbox': [190, 90, 50, 50]},  # clipped
      ]})
  split = coco_json.load_split(path, str(tmp_path))
  assert split.categories.category_ids == (3, 7)  # labels follow the ids' order
  first, second = split.records
  np.testing.assert_array_equal(first.labels, [1, 0])
  np.testing.assert_allclose(first.boxes, [[0.1, 0.1, 0.6, 0.6], [0.9, 0.95, 1.0, 1.0]])
  assert len(second.labels) == 0 and second.boxes.shape == (0, 4)
  assert split.dropped == {'crowd': 1, 'degenerate_box': 1}


@pytest.mark.parametrize('content,message', [
    ('{"images": [', 'not valid JSON'),
    ('[]', 'JSON object'),
    ('{"images": [], "annotations": []}', "['categories']"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}', 'images[0]'),
    ('{"images": {}, "annotations": [], "categories": [{"id": 1}]}', '"images" must be a list'),
    ('{"images": [], "annotations": [], "categories": [{"name": "cat"}]}', 'categories[0]'),
    ('{"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 1}]}',
     'more than once'),
    ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 0, "width": 5}], '
     '"annotations": [], "categories": [{"id": 1}]}', 'both must be positive'),
    ('{"images": [], "annotations": [{"image_id": 1, "bbox": [1, 2, 3]}], '
     '"categories": [{"id": 1}]}', 'annotations[0]'),
])
def test_bad_annotation_files_are_refused_with_the_file_named(tmp_path, content, message):
  path = _write(tmp_path / 'bad.json', content)
  with pytest.raises(coco_json.AnnotationFileError, match='bad.json') as error:
    coco_json.load_split(path, str(tmp_path))
  assert message in str(error.value)


def test_shapes_are_deterministic_and_reused(tmp_path):
  a = shapes.ensure_dataset(str(tmp_path / 'a'), seed=3, num_train=6, num_val=2)
  b = shapes.ensure_dataset(str(tmp_path / 'b'), seed=3, num_train=6, num_val=2)
  for split in ('train', 'val'):
    with open(a[split][1]) as fa, open(b[split][1]) as fb:
      assert json.load(fa) == json.load(fb)
    for name in os.listdir(a[split][0]):
      with open(os.path.join(a[split][0], name), 'rb') as fa:
        with open(os.path.join(b[split][0], name), 'rb') as fb:
          assert fa.read() == fb.read()
  stamp = os.path.getmtime(a['train'][1])
  shapes.ensure_dataset(str(tmp_path / 'a'), seed=3, num_train=6, num_val=2)
  assert os.path.getmtime(a['train'][1]) == stamp
  with pytest.raises(ValueError, match='shapes_dir'):
    shapes.ensure_dataset(str(tmp_path / 'a'), seed=4, num_train=6, num_val=2)
  split = coco_json.load_split(a['train'][1], a['train'][0])
  counts = [len(r.labels) for r in split.records]
  assert min(counts) >= 1 and max(counts) <= 8
  assert split.categories.num_classes == len(shapes.CATEGORIES)


def test_train_batches_are_deterministic_and_resume_by_step(shapes_dir):
  config = tiny_config(shapes_dir)
  split = sources.load_splits(config.data).train
  vocab = vocab_lib.Vocabulary(split.categories.num_classes, config.data.num_bins)

  def batches(start_step, count):
    it = pipeline.train_batches(split, config.data, vocab, seed=5, local_batch_size=4,
                                start_step=start_step)
    return [next(it) for _ in range(count)]

  first = batches(0, 8)  # 32 examples: crosses the 24-image epoch boundary
  again = batches(0, 8)
  resumed = batches(5, 3)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  batch = first[0]
  length = vocab_lib.sequence_length(config.data.max_instances)
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.uint8
  assert batch['extent'].shape == batch['source_extent'].shape == (4, 2)
  assert (batch['extent'] <= 64).all() and (batch['source_extent'] <= 64).all()
  assert batch['resample'].shape == (4, 2, 2) and batch['resample'].dtype == np.float32
  assert batch['input_tokens'].shape == batch['target_tokens'].shape == (4, length)
  epoch = np.concatenate([b['image_id'] for b in first])[:24]
  assert sorted(epoch) == list(range(1, 25))  # each image once per epoch


def test_pipelines_of_the_same_settings_share_one_traced_preprocess(shapes_dir):
  """Equal settings reuse the traced `preprocess`, other settings get their own graph (a
  smaller image size gives smaller batches), and the traced function's example is the
  eager `preprocess`'s."""
  import tensorflow as tf
  config = tiny_config(shapes_dir)
  split = sources.load_splits(config.data).train
  vocab = vocab_lib.Vocabulary(split.categories.num_classes, config.data.num_bins)
  traced = pipeline.preprocess_fn(config.data, vocab, training=True)
  assert pipeline.preprocess_fn(tiny_config(shapes_dir).data, vocab, training=True) is traced
  assert pipeline.preprocess_fn(config.data, vocab, training=False) is not traced
  record = pipeline.record_at(pipeline._record_tables(split.records), 3)
  seed = tf.constant([5, 3], tf.int64)
  eager = pipeline.preprocess(record, config.data, vocab, seed)
  example = traced(record, seed)
  assert sorted(example) == sorted(eager)
  for key in eager:
    np.testing.assert_array_equal(example[key].numpy(), eager[key].numpy())
  config.data.image_size = 32
  assert pipeline.preprocess_fn(config.data, vocab, training=True) is not traced
  smaller = pipeline.train_batches(split, config.data, vocab, seed=5, local_batch_size=4)
  assert next(smaller)['image'].shape == (4, 32, 32, 3)


def test_processes_read_their_rows_of_the_same_global_batches(shapes_dir):
  """Two processes' local batches side by side are the one-process global batch, pixel
  for pixel (augmentation included), also after resuming."""
  config = tiny_config(shapes_dir)
  split = sources.load_splits(config.data).train
  vocab = vocab_lib.Vocabulary(split.categories.num_classes, config.data.num_bins)

  def batches(local, process_index, process_count, start_step=0):
    it = pipeline.train_batches(split, config.data, vocab, seed=3, local_batch_size=local,
                                start_step=start_step, process_index=process_index,
                                process_count=process_count)
    return [next(it) for _ in range(3)]

  whole = batches(4, 0, 1, start_step=6)
  halves = [batches(2, p, 2, start_step=6) for p in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key])


def test_eval_batches_pad_with_a_mask_and_split_over_processes(shapes_dir):
  config = tiny_config(shapes_dir)
  split = sources.load_splits(config.data).val  # 6 images
  vocab = vocab_lib.Vocabulary(split.categories.num_classes, config.data.num_bins)
  seen = []
  for process in range(2):
    batches = list(pipeline.eval_batches(split, config.data, vocab, global_batch_size=4,
                                         process_index=process, process_count=2))
    assert len(batches) == 2 and all(b['image'].shape[0] == 2 for b in batches)
    seen += [i for b in batches for i, m in zip(b['image_id'], b['mask']) if m]
  assert sorted(seen) == [r.image_id for r in split.records]
  batch = next(pipeline.eval_batches(split, config.data, vocab, global_batch_size=4))
  record = split.records[0]
  assert tuple(batch['original_size'][0]) == (record.height, record.width)
  assert batch['scale'][0] == pytest.approx(64 / max(record.height, record.width))


@pytest.mark.parametrize('size', [160, 640])
def test_training_pixels_are_the_float_augmentation(size):
  """Training examples of real COCO images (scale jitter, crop, flip), made on the device
  from their uint8 sources, are the float32 chain of the same transforms with the same
  draws: to float rounding where resampled on the device (all at 640, which holds any
  COCO image), to within half a level where the window was resized in tf.data (all at
  160, where the regions read are larger than the canvas); evaluation stays float32."""
  import jax
  import tensorflow as tf

  from pix2seq_jax.config import config_file
  from pix2seq_jax.data import canvas, transforms

  root = shared_path('coco_tiny')
  config = config_file.load(os.path.join(os.path.dirname(__file__), '..', 'configs', 'coco.py'))
  config.data.coco_dir = root
  config.data.image_size = size
  split = sources.load_splits(config.data).train
  split.records = split.records[:4]
  vocab = vocab_lib.Vocabulary(split.categories.num_classes, config.data.num_bins)
  tables = pipeline._record_tables(split.records)
  to_model = jax.jit(canvas.model_images)
  on_device = 0
  for index in range(4):
    seed = tf.constant([3, index], tf.int64)
    fold = lambda op, seed=seed: tf.random.experimental.stateless_fold_in(seed, op)
    example = pipeline.preprocess(pipeline.record_at(tables, index), config.data, vocab, seed)
    source = example['image'].numpy()
    assert source.dtype == np.uint8 and max(source.shape) <= size
    padded = np.zeros((1, size, size, 3), np.uint8)
    padded[0, :source.shape[0], :source.shape[1]] = source
    got = to_model({'image': padded, 'source_extent': example['source_extent'].numpy()[None],
                    'resample': example['resample'].numpy()[None],
                    'extent': example['extent'].numpy()[None]})[0]
    image = transforms.decode_image(tf.io.read_file(split.records[index].path))
    boxes, labels = tables['boxes'][index], tables['labels'][index]
    image, _ = transforms.random_scale_jitter(image, size, fold(pipeline._SCALE_OP),
                                              config.data.scale_min, config.data.scale_max)
    image, boxes, _ = transforms.random_crop(image, boxes, labels, size, fold(pipeline._CROP_OP))
    image, _ = transforms.random_horizontal_flip(image, boxes, fold(pipeline._FLIP_OP))
    want, _ = transforms.pad_to_canvas(image, boxes, size)
    resized_in_tf_data = np.array_equal(np.abs(example['resample'].numpy()[:, 1]), [1, 1])
    on_device += not resized_in_tf_data
    tolerance = 0.5 / 255 + 1e-6 if resized_in_tf_data else 1e-4
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=tolerance)
  assert on_device == (4 if size == 640 else 0)
  evaluation = pipeline.preprocess(pipeline.record_at(tables, 0), config.data, vocab, None)
  assert evaluation['image'].dtype == tf.float32 and 'extent' not in evaluation
