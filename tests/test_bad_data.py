"""Bad data: unreadable images are skipped and named, fixable records fixed and counted.

A small COCO-format dataset is written with one file of each kind (real JPEG/PNG bytes
made with PIL, then broken where the case asks) and one annotation of each bad kind.
"""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from pix2seq_jax.data import coco_json, image_check, pipeline, sources, transforms
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.inference import predictor
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import loop
from tests.tiny import tiny_config

H, W = 48, 64  # every image's annotated size


def _upright(seed: int) -> np.ndarray:
  """A smooth RGB test card (JPEG keeps it within a few levels) with a dark block."""
  y, x = np.mgrid[0:H, 0:W]
  image = np.stack([4 * x, 5 * y, 255 - 2 * x - 2 * y], -1) + seed
  image[10:30, 20:44] = 20
  return np.clip(image, 0, 255).astype(np.uint8)


def _write_images(folder) -> dict[str, str]:
  """One file per case; returns {case: file name}."""
  os.makedirs(folder, exist_ok=True)
  rgb = _upright(0)
  save = lambda name, image, **kw: image.save(os.path.join(folder, name), **kw)
  save('good.jpg', Image.fromarray(rgb), quality=95)
  save('png_named.jpg', Image.fromarray(rgb), format='PNG')
  save('grey.jpg', Image.fromarray(rgb[..., 0]), quality=95)
  save('cmyk.jpg', Image.fromarray(rgb).convert('CMYK'), quality=95)
  save('sixteen_bit.png', Image.fromarray(rgb[..., 1].astype(np.uint16) * 257))
  exif = Image.Exif()
  exif[0x0112] = 6  # stored rotated 90 degrees counter-clockwise: display turns it back
  save('exif_rotated.jpg', Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90),
       exif=exif, quality=95)
  save('twice_the_size.jpg', Image.fromarray(rgb).resize((2 * W, 2 * H)), quality=95)
  save('wrong_aspect.jpg', Image.fromarray(rgb[:, :H]), quality=95)
  save('crowded.jpg', Image.fromarray(_upright(7)), quality=95)
  with open(os.path.join(folder, 'good.jpg'), 'rb') as f:
    jpeg = f.read()
  with open(os.path.join(folder, 'truncated.jpg'), 'wb') as f:
    f.write(jpeg[:len(jpeg) // 2])
  open(os.path.join(folder, 'zero_bytes.jpg'), 'wb').close()
  with open(os.path.join(folder, 'not_an_image.jpg'), 'w') as f:
    f.write('<html>404 Not Found</html>')
  return {
      'good': 'good.jpg', 'png_named_jpg': 'png_named.jpg', 'greyscale': 'grey.jpg',
      'cmyk': 'cmyk.jpg', 'sixteen_bit': 'sixteen_bit.png', 'exif': 'exif_rotated.jpg',
      'resized': 'twice_the_size.jpg', 'wrong_aspect': 'wrong_aspect.jpg',
      'crowded': 'crowded.jpg', 'truncated': 'truncated.jpg', 'zero_bytes': 'zero_bytes.jpg',
      'not_an_image': 'not_an_image.jpg', 'missing': 'missing.jpg',
  }


READABLE = ('good', 'png_named_jpg', 'greyscale', 'cmyk', 'sixteen_bit', 'exif', 'resized',
            'crowded')
UNREADABLE = {'truncated': 'truncated', 'zero_bytes': 'empty', 'not_an_image': 'not_an_image',
              'missing': 'missing', 'wrong_aspect': 'size_mismatch'}


def _write_dataset(root) -> tuple[str, str, dict[str, int]]:
  """Images and an instances JSON with every bad annotation; returns (images, json, ids)."""
  images_dir = os.path.join(root, 'images')
  files = _write_images(images_dir)
  cases = list(files)
  ids = {case: i + 1 for i, case in enumerate(cases)}
  box = [20, 10, 24, 20]  # x, y, w, h: the dark block
  annotations = [{'image_id': ids[c], 'category_id': 1, 'bbox': box} for c in cases]
  good = ids['good']
  annotations += [
      {'image_id': good, 'category_id': 2, 'bbox': [50, 40, 30, 30]},  # partly outside: clipped
      {'image_id': good, 'category_id': 2, 'bbox': [-40, -40, 20, 20]},  # wholly outside
      {'image_id': good, 'category_id': 2, 'bbox': [10, 10, -5, 8]},  # negative width
      {'image_id': good, 'category_id': 2, 'bbox': [10, 10, 8, 0]},  # zero height
      {'image_id': good, 'category_id': 2, 'bbox': [10, 10, float('nan'), 8]},
      {'image_id': good, 'category_id': 99, 'bbox': box},  # category not in categories
      {'image_id': 12345, 'category_id': 1, 'bbox': box},  # image id not in images
  ]
  annotations += [{'image_id': ids['crowded'], 'category_id': 2,
                   'bbox': [2 + 4 * k, 2 + 3 * k, 6, 5]} for k in range(11)]
  images = [{'id': ids[c], 'file_name': files[c], 'height': H, 'width': W} for c in cases]
  images.append({'id': good, 'file_name': 'duplicate_id.jpg', 'height': H, 'width': W})
  path = os.path.join(root, 'instances.json')
  with open(path, 'w') as f:
    json.dump({'images': images, 'annotations': annotations,
               # 9 categories, as the shapes data: the tests' compiled model fits it
               'categories': [{'id': 1, 'name': 'block'}, {'id': 2, 'name': 'other'}] + [
                   {'id': i, 'name': f'unused {i}'} for i in range(3, 10)]}, f)
  return images_dir, path, ids


@pytest.fixture(scope='module')
def bad_dataset(tmp_path_factory):
  return _write_dataset(str(tmp_path_factory.mktemp('bad_data')))


def test_each_file_gets_its_verdict(bad_dataset):
  images_dir, _, _ = bad_dataset
  files = _write_images(images_dir)
  verdict = {case: image_check.check_file(os.path.join(images_dir, name), H, W)
             for case, name in files.items()}
  assert {c: v.problem for c, v in verdict.items() if v.problem} == UNREADABLE
  assert verdict['exif'].orientation == 6 and not verdict['exif'].resize
  assert verdict['resized'].resize and verdict['resized'].orientation == 1
  assert all(verdict[c] == image_check.FileCheck() for c in
             ('good', 'png_named_jpg', 'greyscale', 'cmyk', 'sixteen_bit', 'crowded'))


def test_the_split_keeps_readable_images_and_counts_everything_else(bad_dataset):
  images_dir, path, ids = bad_dataset
  split = sources.check_images(coco_json.load_split(path, images_dir), max_instances=8)
  kept = {r.image_id for r in split.records}
  assert kept == {ids[c] for c in READABLE}
  assert sorted((os.path.basename(p), q) for p, q, _ in split.skipped_images) == sorted(
      (f'{c}.jpg', q) for c, q in UNREADABLE.items())
  assert split.dropped == {
      'duplicate_image_id': 1, 'unknown_image_id': 1, 'unknown_category_id': 1,
      'non_finite_box': 1, 'degenerate_box': 3, 'image_truncated': 1, 'image_empty': 1,
      'image_not_an_image': 1, 'image_missing': 1, 'image_size_mismatch': 1}
  assert split.fixed == {'clipped_box': 1, 'exif_rotated': 1, 'resized': 1,
                         'images_over_max_instances': 1, 'objects_over_max_instances': 4}
  good = next(r for r in split.records if r.image_id == ids['good'])
  np.testing.assert_allclose(good.boxes, [[10 / H, 20 / W, 30 / H, 44 / W],
                                          [40 / H, 50 / W, 1.0, 1.0]], rtol=1e-6)


def test_without_the_check_a_bad_file_stops_the_pipeline(bad_dataset):
  """The counterfactual: tf.data fails mid-epoch on the truncated file."""
  images_dir, path, _ = bad_dataset
  split = coco_json.load_split(path, images_dir)
  split.records = [r for r in split.records if r.path.endswith('truncated.jpg')]
  config = tiny_config('unused')
  vocab = vocab_lib.Vocabulary(2, config.data.num_bins)
  with pytest.raises(tf.errors.InvalidArgumentError):
    next(pipeline.eval_batches(split, config.data, vocab, global_batch_size=1))


def _pipeline_images(bad_dataset) -> dict[int, np.ndarray]:
  """Each kept image as the eval pipeline yields it, at its annotated size (canvas 64)."""
  images_dir, path, _ = bad_dataset
  split = sources.check_images(coco_json.load_split(path, images_dir), max_instances=8)
  config = tiny_config('unused')
  config.data.image_size = W
  vocab = vocab_lib.Vocabulary(2, config.data.num_bins)
  out = {}
  for batch in pipeline.eval_batches(split, config.data, vocab, global_batch_size=1):
    np.testing.assert_array_equal(batch['original_size'][0], [H, W])
    out[int(batch['image_id'][0])] = batch['image'][0, :H, :W]
  return out


def test_every_readable_kind_decodes_to_the_upright_rgb_image(bad_dataset):
  _, _, ids = bad_dataset
  images = _pipeline_images(bad_dataset)
  rgb = _upright(0) / 255.0
  # JPEG loses a few levels; single-channel files hold one channel of the card.
  expected = {'good': rgb, 'png_named_jpg': rgb, 'cmyk': rgb, 'exif': rgb, 'resized': rgb,
              'greyscale': rgb[..., :1], 'sixteen_bit': rgb[..., 1:2]}
  for case, want in expected.items():
    got = images[ids[case]]
    assert got.shape == (H, W, 3), case
    error = np.abs(got - want).mean()
    assert error < 0.02, (case, error)
  np.testing.assert_allclose(images[ids['png_named_jpg']], rgb, atol=1e-6)  # lossless
  np.testing.assert_allclose(images[ids['sixteen_bit']], rgb[..., [1, 1, 1]], atol=1 / 255)
  # The rotated file really needed turning: stored as is, it would not match.
  assert np.abs(images[ids['exif']] - images[ids['good']]).mean() < 0.02


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_matches_pil_eagerly_and_in_a_dataset(tmp_path, orientation):
  stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = str(tmp_path / 'o.png')
  Image.fromarray(stored).save(path, exif=exif)
  want = np.asarray(ImageOps.exif_transpose(Image.open(path)))
  eager = transforms.apply_exif_orientation(tf.constant(stored), tf.constant(orientation))
  np.testing.assert_array_equal(eager.numpy(), want)
  ds = tf.data.Dataset.from_tensors((stored, orientation)).map(
      transforms.apply_exif_orientation)
  np.testing.assert_array_equal(next(iter(ds)).numpy(), want)


def test_resize_to_is_a_no_op_at_the_annotated_size_eagerly_and_in_a_dataset():
  image = tf.random.stateless_uniform([6, 8, 3], seed=[1, 2])
  np.testing.assert_array_equal(transforms.resize_to(image, tf.constant([6, 8])).numpy(),
                                image.numpy())
  ds = tf.data.Dataset.from_tensors(image).map(lambda x: transforms.resize_to(x, [3, 4]))
  halved = next(iter(ds)).numpy()
  assert halved.shape == (3, 4, 3)
  np.testing.assert_allclose(halved.mean(), image.numpy().mean(), atol=0.02)


def test_objects_beyond_max_instances_are_cut_per_epoch(bad_dataset):
  images_dir, path, ids = bad_dataset
  split = sources.check_images(coco_json.load_split(path, images_dir), max_instances=8)
  split.records = [r for r in split.records if r.image_id == ids['crowded']]
  assert len(split.records[0].labels) == 12
  config = tiny_config('unused')
  vocab = vocab_lib.Vocabulary(2, config.data.num_bins)
  config.data.noise_objects = False
  batch = next(pipeline.train_batches(split, config.data, vocab, seed=0, local_batch_size=2))
  kept = []
  for target in batch['target_tokens']:  # two epochs of the one image
    slots = target[:-1].reshape(8, vocab_lib.TOKENS_PER_OBJECT)
    assert vocab.is_class(slots[:, 4]).all() and vocab.is_coord(slots[:, :4]).all()
    assert target[-1] == vocab_lib.EOS  # 8 objects, the most that fit, then EOS
    kept.append({tuple(row) for row in slots[:, :4]})
  assert kept[0] != kept[1]  # each epoch keeps a different random 8 of the 12


def test_a_split_with_no_readable_image_is_refused(tmp_path):
  images_dir = str(tmp_path / 'images')
  _write_images(images_dir)
  path = str(tmp_path / 'instances.json')
  with open(path, 'w') as f:
    json.dump({'images': [{'id': i, 'file_name': name, 'height': H, 'width': W} for i, name in
                          enumerate(['truncated.jpg', 'missing.jpg', 'zero_bytes.jpg'])],
               'annotations': [], 'categories': [{'id': 1, 'name': 'block'}]}, f)
  with pytest.raises(image_check.ImageFilesError, match='instances.json.*none of its 3 images'):
    sources.check_images(coco_json.load_split(path, images_dir), max_instances=8)


@pytest.mark.slow
def test_training_on_bad_data_skips_names_and_counts(bad_dataset, tmp_path, caplog):
  images_dir, path, ids = bad_dataset
  config = tiny_config('unused')
  config.model.variant = 'vit_nano'  # the smallest model: the test is about the data
  config.data.source = 'coco_files'
  config.data.train_images = config.data.val_images = images_dir
  config.data.train_annotations = config.data.val_annotations = path
  config.data.image_size = 64
  config.train.steps = 2
  workdir = str(tmp_path / 'run')
  with caplog.at_level(logging.INFO):
    metrics = loop.train_and_evaluate(config, workdir)
  assert np.isfinite(metrics['val_loss'])
  with open(os.path.join(workdir, 'data_report.json')) as f:
    report = json.load(f)
  assert report['train']['images'] == len(READABLE)
  assert len(report['train']['skipped_images']) == len(UNREADABLE)
  assert report['train']['fixed']['exif_rotated'] == 1
  text = caplog.text
  assert 'skipping 5 unreadable image(s)' in text and 'truncated.jpg: truncated' in text
  # 8 images at batch 8: steps 1 and 2 begin epochs 1 and 2.
  assert 'Epoch 1 (from step 1): 5 unreadable' in text
  assert 'Epoch 2 (from step 2): 5 unreadable' in text
  with open(os.path.join(workdir, 'eval', 'step_2', 'detections.json')) as f:
    assert {d['image_id'] for d in json.load(f)} <= {ids[c] for c in READABLE}


def test_predict_reads_every_kind_as_the_training_pipeline_does(bad_dataset):
  images_dir, path, ids = bad_dataset
  split = sources.check_images(coco_json.load_split(path, images_dir), max_instances=8)
  from_pipeline = _pipeline_images(bad_dataset)
  for record in split.records:
    pixels = images_lib.load_image(record.path, record.orientation,
                                   (record.height, record.width))
    assert pixels.shape == (H, W, 3) and pixels.dtype == np.uint8
    error = np.abs(pixels / 255.0 - from_pipeline[record.image_id]).mean()
    assert error < 0.01, (record.path, error)
  # With no annotation to follow, the file's EXIF tag turns the photo upright.
  upright = images_lib.load_image(os.path.join(images_dir, 'exif_rotated.jpg'))
  assert upright.shape == (H, W, 3)


def test_predict_skips_unreadable_files_and_names_them(bad_dataset, tiny_workdir, tmp_path,
                                                       caplog):
  images_dir, _, _ = bad_dataset
  output = str(tmp_path / 'predictions.json')
  with caplog.at_level(logging.WARNING):
    entries = predictor.predict_files(tiny_workdir, os.path.join(images_dir, '*'), output)
  names = sorted(os.listdir(images_dir))
  unreadable = {'truncated.jpg', 'zero_bytes.jpg', 'not_an_image.jpg'}
  assert sorted(e['file_name'] for e in entries) == sorted(set(names) - unreadable)
  assert 'Skipped 3 unreadable file(s) of 12' in caplog.text
  assert all(name in caplog.text for name in unreadable)
  exif = next(e for e in entries if e['file_name'] == 'exif_rotated.jpg')
  assert (exif['height'], exif['width']) == (H, W)
