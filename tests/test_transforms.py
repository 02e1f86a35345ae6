"""Every tf.data transform gives the same result eagerly and inside a tf.data pipeline."""

import io

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.data import canvas, sequences, transforms

SEED = tf.constant([7, 11], tf.int64)


def _image(height=30, width=50, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(size=(height, width, 3)), tf.float32)


def _pixels(height=30, width=50, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (height, width, 3)), tf.uint8)


BOXES = tf.constant([[0.1, 0.2, 0.5, 0.6], [0.3, 0.0, 0.9, 0.4], [0.0, 0.5, 1.0, 1.0]])
LABELS = tf.constant([3, 0, 5], tf.int32)


def _encoded(fmt, mode='RGB'):
  array = (np.random.default_rng(1).uniform(size=(12, 9, 3)) * 255).astype(np.uint8)
  image = Image.fromarray(array).convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return tf.constant(buffer.getvalue())


CASES = {
    'decode_jpeg': (transforms.decode_image, (_encoded('JPEG'),)),
    'decode_png': (transforms.decode_image, (_encoded('PNG'),)),
    'decode_grey_png': (transforms.decode_image, (_encoded('PNG', 'L'),)),
    'decode_pixels': (transforms.decode_pixels, (_encoded('JPEG'),)),
    'resize_pixels': (lambda p: transforms.resize_pixels_longest_side(p, 64), (_pixels(),)),
    'resize_pixels_shrink': (lambda p: transforms.resize_pixels_longest_side(p, 20),
                             (_pixels(),)),
    'scale_jitter_and_crop': (lambda p, b, l: transforms.random_scale_jitter_and_crop(
        p, b, l, 40, SEED, SEED + 1, 0.3, 2.0), (_pixels(), BOXES, LABELS)),
    'pad_pixels': (lambda p, b: transforms.pad_to_canvas(p, b, 64), (_pixels(), BOXES)),
    'resize': (lambda im: transforms.resize_longest_side(im, 64), (_image(),)),
    'flip': (lambda im, b: transforms.random_horizontal_flip(im, b, SEED), (_image(), BOXES)),
    'pad': (lambda im, b: transforms.pad_to_canvas(im, b, 64), (_image(), BOXES)),
    'shuffle': (lambda b, l: transforms.shuffle_objects(b, l, SEED), (BOXES, LABELS)),
    'scale_jitter': (lambda im: transforms.random_scale_jitter(im, 64, SEED, 0.3, 2.0),
                     (_image(),)),
    'crop': (lambda im, b, l: transforms.random_crop(im, b, l, 20, SEED),
             (_image(), BOXES, LABELS)),
    'sequences': (lambda b, l: sequences.build_sequences(
        b, l, vocab_lib.Vocabulary(6, 32), max_instances=4, eos_weight=0.1), (BOXES, LABELS)),
    'sequences_augmented': (lambda b, l: sequences.build_sequences(
        b, l, vocab_lib.Vocabulary(6, 32), max_instances=7, eos_weight=0.1, seed=SEED,
        noise_objects=True, corrupt_classes=True), (BOXES, LABELS)),
    'noise_boxes': (lambda b: sequences.noise_boxes(b, tf.constant(5), 6, SEED), (BOXES,)),
    'jitter_boxes': (lambda b: sequences.jitter_boxes(b, SEED), (BOXES,)),
    'shift_boxes': (lambda b: sequences.shift_boxes(b, SEED), (BOXES,)),
    'random_boxes': (lambda: sequences.random_boxes(9, SEED), ()),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_eager_equals_in_dataset(name):
  fn, args = CASES[name]
  eager = fn(*args)
  if args:
    ds = tf.data.Dataset.from_tensors(args).map(lambda *a: fn(*a))
  else:
    ds = tf.data.Dataset.range(1).map(lambda _: fn())
  in_dataset = next(iter(ds))
  tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a.numpy(), b.numpy()),
                        eager, in_dataset)


def test_decode_makes_rgb_floats():
  image = transforms.decode_image(_encoded('PNG', 'L'))
  assert image.shape == (12, 9, 3) and image.dtype == tf.float32
  assert 0.0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 1.0
  np.testing.assert_array_equal(image[..., 0].numpy(), image[..., 2].numpy())


def test_resize_keeps_aspect_ratio():
  image, scale = transforms.resize_longest_side(_image(30, 50), 100)
  assert image.shape == (60, 100, 3) and float(scale) == pytest.approx(2.0)


@pytest.mark.parametrize('size', [32, 64, 160])  # shrink, same size, grow
def test_resize_antialiases_exactly_when_it_matters(size):
  """Plain bilinear where not shrinking (the same pixels as antialiased)."""
  image = tf.random.stateless_uniform([48, 64, 3], seed=[3, 4])
  shape = [size * 3 // 4, size]
  want = tf.clip_by_value(tf.image.resize(image, shape, antialias=True), 0.0, 1.0).numpy()
  eager, _ = transforms.resize_longest_side(image, size)
  in_dataset, _ = next(iter(tf.data.Dataset.from_tensors(image).map(
      lambda x: transforms.resize_longest_side(x, size))))
  for got in (eager.numpy(), in_dataset.numpy()):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_flip_moves_boxes_with_pixels():
  image = np.zeros((10, 20, 3), np.float32)
  image[2:5, 1:6] = 1.0  # box (0.2, 0.05, 0.5, 0.3)
  boxes = tf.constant([[0.2, 0.05, 0.5, 0.3]])
  flipped = False
  for s in range(20):  # both outcomes occur over seeds; the box always covers the block
    out, out_boxes = transforms.random_horizontal_flip(tf.constant(image), boxes,
                                                       tf.constant([s, 0], tf.int64))
    y0, x0, y1, x1 = (out_boxes.numpy()[0] * [10, 20, 10, 20]).round().astype(int)
    assert out.numpy()[y0:y1, x0:x1].min() == 1.0 and out.numpy().sum() == 15 * 3
    flipped |= x0 != 1
  assert flipped


def test_pad_keeps_pixels_and_rescales_boxes():
  image = _image(30, 50)
  padded, boxes = transforms.pad_to_canvas(image, BOXES, 64)
  assert padded.shape == (64, 64, 3)
  np.testing.assert_allclose(padded[:30, :50].numpy(), image.numpy(), atol=1e-6)
  np.testing.assert_allclose(padded[30:].numpy(), transforms.PAD_VALUE, atol=1e-6)
  np.testing.assert_allclose(boxes.numpy(), BOXES.numpy() * [30 / 64, 50 / 64, 30 / 64, 50 / 64],
                             atol=1e-6)


def test_shuffle_is_a_joint_permutation():
  boxes, labels = transforms.shuffle_objects(BOXES, LABELS, SEED)
  order = [list(LABELS.numpy()).index(l) for l in labels.numpy()]
  assert sorted(order) == [0, 1, 2]
  np.testing.assert_array_equal(boxes.numpy(), BOXES.numpy()[order])


def _fold(seed, op):
  """A [2] seed from an int or an int64 scalar tensor (a tf.data element)."""
  seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(5, tf.int64)])
  return tf.random.experimental.stateless_fold_in(seed, op)


@pytest.mark.parametrize('shape', [(48, 61), (53, 17), (40, 25), (9, 70), (90, 43), (1, 30)])
def test_jitter_and_crop_on_pixels_equals_jitter_then_crop_in_float(shape):
  """The same boxes, labels and scale as the float transforms with the same seeds, and
  their pixels to within the rounding to uint8 (half a level), eagerly and in tf.data;
  both shrinking and enlarging occur over the shapes and seeds."""
  size, rng = 40, np.random.default_rng(shape[0])
  pixels = tf.constant(rng.integers(0, 256, (*shape, 3)), tf.uint8)
  corners = np.sort(rng.uniform(size=(6, 2, 2)), axis=1)  # [N, (min, max), (y, x)]
  boxes = tf.constant(corners.transpose(0, 2, 1).reshape(6, 4)[:, [0, 2, 1, 3]], tf.float32)
  labels = tf.range(6)
  fn = lambda p, b, l, seed: transforms.random_scale_jitter_and_crop(
      p, b, l, size, _fold(seed, 1), _fold(seed, 2), 0.3, 2.0)
  seeds = 8
  # One dataset over the seeds (traced once), element `seed` for seed `seed`.
  in_dataset = list(tf.data.Dataset.range(seeds).map(
      lambda seed: fn(pixels, boxes, labels, seed)))
  for seed in range(seeds):
    reference, scale = transforms.random_scale_jitter(transforms.to_float(pixels), size,
                                                      _fold(seed, 1), 0.3, 2.0)
    reference, ref_boxes, ref_labels = transforms.random_crop(reference, boxes, labels, size,
                                                              _fold(seed, 2))
    eager = fn(pixels, boxes, labels, seed)
    for got, got_boxes, got_labels, got_scale in (eager, in_dataset[seed]):
      assert got.dtype == tf.uint8 and got.shape == reference.shape
      np.testing.assert_array_equal(got_boxes.numpy(), ref_boxes.numpy())
      np.testing.assert_array_equal(got_labels.numpy(), ref_labels.numpy())
      assert float(got_scale) == float(scale)
      error = np.abs(got.numpy().astype(np.float32) - reference.numpy() * 255).max()
      assert error <= 0.5 + 1e-3, error


@pytest.mark.parametrize('size', [32, 64, 160])  # shrink, same size, grow
def test_resize_of_pixels_equals_the_float_resize_rounded(size):
  pixels = _pixels(48, 64, seed=size)
  want, want_scale = transforms.resize_longest_side(transforms.to_float(pixels), size)
  got, scale = transforms.resize_pixels_longest_side(pixels, size)
  assert got.dtype == tf.uint8 and got.shape == want.shape and float(scale) == float(want_scale)
  error = np.abs(got.numpy().astype(np.float32) - want.numpy() * 255)
  assert error.max() <= 0.5 + 1e-3
  if size == 64:  # unchanged size: the pixels themselves
    np.testing.assert_array_equal(got.numpy(), pixels.numpy())


def test_pixels_are_zero_padded_and_model_images_fill_the_pad_value():
  """The uint8 canvas and its extent give, on the device, the float canvas that
  `pad_to_canvas` makes of the float image (which rounds x - 0.3 + 0.3 by an ulp)."""
  pixels = _pixels(30, 50)
  padded, boxes = transforms.pad_to_canvas(pixels, BOXES, 64)
  want, want_boxes = transforms.pad_to_canvas(transforms.to_float(pixels), BOXES, 64)
  assert padded.dtype == tf.uint8 and int(tf.reduce_max(padded[30:])) == 0
  np.testing.assert_array_equal(boxes.numpy(), want_boxes.numpy())
  other = np.asarray(transforms.pad_to_canvas(_pixels(64, 20, seed=1), BOXES, 64)[0])
  batch = {'image': np.stack([padded.numpy(), other]), 'extent': np.array([[30, 50], [64, 20]])}
  images = np.asarray(jax.jit(canvas.model_images)(batch))
  assert images.dtype == np.float32
  np.testing.assert_allclose(images[0], want.numpy(), rtol=0, atol=1e-7)
  np.testing.assert_array_equal(images[0, 30:], np.float32(canvas.PAD_VALUE))
  np.testing.assert_array_equal(images[0, :30, :50], transforms.to_float(pixels).numpy())
  np.testing.assert_array_equal(images[1, :, 20:], np.float32(canvas.PAD_VALUE))
  float_batch = {'image': want.numpy()[None]}
  np.testing.assert_array_equal(canvas.model_images(float_batch), float_batch['image'])
