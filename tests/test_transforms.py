"""Every tf.data transform gives the same result eagerly and inside a tf.data pipeline."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.data import sequences, transforms

SEED = tf.constant([7, 11], tf.int64)


def _image(height=30, width=50, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(size=(height, width, 3)), tf.float32)


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
