"""Every tf.data transform gives the same result eagerly and inside a tf.data pipeline."""

import io

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2seq_jax.data import canvas, sequences, transforms
from pix2seq_jax.tasks import vocab as vocab_lib
from tests import tiny

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
    'resized_window': (lambda p: transforms.resized_window(p, [24, 40], [2, 5], [20, 30]),
                       (_pixels(),)),
    'scale_jitter_and_crop_draws': (lambda: transforms.scale_jitter_and_crop_draws(
        tf.constant([30, 50]), 40, SEED, SEED + 1, 0.3, 2.0), ()),
    'crop_boxes': (lambda b, labels: transforms.crop_boxes(b, labels, [45, 75], [5, 20], [40, 40]),
                   (BOXES, LABELS)),
    'window_source': (lambda p: transforms.window_source(p, [45, 75], [5, 20], [40, 40], 40),
                      (_pixels(),)),
    'window_source_too_large': (lambda p: transforms.window_source(
        p, [24, 40], [2, 5], [20, 30], 20), (_pixels(),)),
    'mirror': (lambda b: transforms.random_mirror(
        b, tf.constant(transforms.IDENTITY_RESAMPLE), 30, SEED), (BOXES,)),
    'canvas_boxes': (lambda b: transforms.canvas_boxes(b, [30, 50], 64), (BOXES,)),
    'resize': (lambda im: transforms.resize_longest_side(im, 64), (_image(),)),
    'flip': (lambda im, b: transforms.random_horizontal_flip(im, b, SEED), (_image(), BOXES)),
    'pad': (lambda im, b: transforms.pad_to_canvas(im, b, 64), (_image(), BOXES)),
    'shuffle': (lambda b, labels: transforms.shuffle_objects(b, labels, SEED), (BOXES, LABELS)),
    'scale_jitter': (lambda im: transforms.random_scale_jitter(im, 64, SEED, 0.3, 2.0),
                     (_image(),)),
    'crop': (lambda im, b, labels: transforms.random_crop(im, b, labels, 20, SEED),
             (_image(), BOXES, LABELS)),
    'sequences': (lambda b, labels: sequences.build_sequences(
        b, labels, vocab_lib.Vocabulary(6, 32), max_instances=4, eos_weight=0.1), (BOXES, LABELS)),
    'sequences_augmented': (lambda b, labels: sequences.build_sequences(
        b, labels, vocab_lib.Vocabulary(6, 32), max_instances=7, eos_weight=0.1, seed=SEED,
        noise_objects=True, corrupt_classes=True), (BOXES, LABELS)),
    'noise_boxes': (lambda b: sequences.noise_boxes(b, tf.constant(5), 6, SEED), (BOXES,)),
    'jitter_boxes': (lambda b: sequences.jitter_boxes(b, SEED), (BOXES,)),
    'shift_boxes': (lambda b: sequences.shift_boxes(b, SEED), (BOXES,)),
    'random_boxes': (lambda: sequences.random_boxes(9, SEED), ()),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_eager_equals_in_dataset(name):
  eager, in_dataset = tiny.eager_and_in_dataset(*CASES[name])
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
  order = [list(LABELS.numpy()).index(label) for label in labels.numpy()]
  assert sorted(order) == [0, 1, 2]
  np.testing.assert_array_equal(boxes.numpy(), BOXES.numpy()[order])


def _fold(seed, op):
  """A [2] seed from an int or an int64 scalar tensor (a tf.data element)."""
  seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(5, tf.int64)])
  return tf.random.experimental.stateless_fold_in(seed, op)


def _augment_on_device(pixels, boxes, labels, size, seed):
  """The training path (`pipeline.preprocess`) of one image: draws, source and resample in
  TensorFlow, the canvas made by `canvas.model_images`; returns (canvas, canvas-normalised
  boxes, labels, scale, (source, resample))."""
  new_shape, scale, offset, extent = transforms.scale_jitter_and_crop_draws(
      tf.shape(pixels)[:2], size, _fold(seed, 1), _fold(seed, 2), 0.3, 2.0)
  boxes, labels = transforms.crop_boxes(boxes, labels, new_shape, offset, extent)
  source, resample = transforms.window_source(pixels, new_shape, offset, extent, size)
  boxes, resample = transforms.random_mirror(boxes, resample, extent[1], _fold(seed, 3))
  return (source, resample, extent, transforms.canvas_boxes(boxes, extent, size), labels,
          scale)


def _reference(pixels, boxes, labels, size, seed):
  """The same augmentation on float32 pixels: jitter, crop, flip, pad (in TensorFlow)."""
  image, scale = transforms.random_scale_jitter(transforms.to_float(pixels), size,
                                                _fold(seed, 1), 0.3, 2.0)
  image, boxes, labels = transforms.random_crop(image, boxes, labels, size, _fold(seed, 2))
  image, boxes = transforms.random_horizontal_flip(image, boxes, _fold(seed, 3))
  image, boxes = transforms.pad_to_canvas(image, boxes, size)
  return image, boxes, labels, scale


def _device_canvases(examples, size):
  """canvas.model_images (jitted) of a batch made of `_augment_on_device` examples."""
  sources = np.zeros((len(examples), size, size, 3), np.uint8)
  for row, (source, *_) in enumerate(examples):
    sources[row, :source.shape[0], :source.shape[1]] = source.numpy()
  batch = {'image': sources,
           'source_extent': np.array([e[0].shape[:2] for e in examples], np.int32),
           'resample': np.stack([e[1].numpy() for e in examples]),
           'extent': np.stack([e[2].numpy() for e in examples])}
  return np.asarray(jax.jit(canvas.model_images)(batch))


@pytest.mark.parametrize('shape,size', [((48, 61), 64), ((53, 17), 64), ((40, 25), 40),
                                        ((9, 70), 70), ((1, 30), 40), ((90, 43), 40),
                                        ((31, 50), 40)])
def test_device_resampling_equals_the_float_augmentation(shape, size):
  """Scale jitter, crop and flip drawn in tf.data and resampled on the device give the
  float32 chain of `random_scale_jitter`, `random_crop`, `random_horizontal_flip` and
  `pad_to_canvas` with the same seeds: the same boxes, labels and scale, and the pixels
  to float rounding; where the source region is larger than the canvas (images larger
  than it, when not enlarged) the window is resized in tf.data, to within half a level.
  Shrinking, enlarging and both flips occur; eager and in tf.data agree."""
  rng = np.random.default_rng(shape[0])
  pixels = tf.constant(rng.integers(0, 256, (*shape, 3)), tf.uint8)
  corners = np.sort(rng.uniform(size=(6, 2, 2)), axis=1)  # [N, (min, max), (y, x)]
  boxes = tf.constant(corners.transpose(0, 2, 1).reshape(6, 4)[:, [0, 2, 1, 3]], tf.float32)
  labels = tf.range(6)
  seeds = 8
  fn = lambda seed: _augment_on_device(pixels, boxes, labels, size, seed)
  in_dataset = list(tf.data.Dataset.range(seeds).map(fn))  # traced once
  eager = [fn(seed) for seed in range(seeds)]
  for a, b in zip(eager, in_dataset):
    tf.nest.map_structure(lambda x, y: np.testing.assert_array_equal(x.numpy(), y.numpy()),
                          a, b)
  canvases = _device_canvases(eager, size)
  mirrored = resized = 0
  for seed, (source, resample, extent, got_boxes, got_labels, got_scale) in enumerate(eager):
    want, want_boxes, want_labels, want_scale = _reference(pixels, boxes, labels, size, seed)
    np.testing.assert_allclose(got_boxes.numpy(), want_boxes.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(got_labels.numpy(), want_labels.numpy())
    assert float(got_scale) == float(want_scale)
    resized_here = (max(shape) > size and source.shape[:2] == tuple(extent.numpy())
                    and np.array_equal(np.abs(resample.numpy()[:, 1]), [1, 1]))
    tolerance = 0.5 / 255 + 1e-6 if resized_here else 2e-5
    np.testing.assert_allclose(canvases[seed], want.numpy(), rtol=0, atol=tolerance)
    mirrored += bool(resample[1, 1] < 0)
    resized += resized_here
  assert 0 < mirrored < seeds
  assert (resized > 0) == (max(shape) > size)


def test_window_source_sends_only_the_region_the_window_reads():
  """Enlarged 2x, a 20-pixel window reads about 10 source pixels plus the filter's reach;
  shrunk, it reads the whole image; too large for the canvas, it is resized in tf.data."""
  pixels = _pixels(30, 50)
  source, resample = transforms.window_source(pixels, [60, 100], [10, 30], [20, 20], 64)
  assert source.shape == (12, 12, 3)
  np.testing.assert_array_equal(source.numpy(), pixels.numpy()[4:16, 14:26])
  np.testing.assert_allclose(resample.numpy(), [[0.25 + 1, 0.5], [0.25 + 1, 0.5]])
  source, resample = transforms.window_source(pixels, [15, 25], [0, 0], [15, 25], 64)
  np.testing.assert_array_equal(source.numpy(), pixels.numpy())
  np.testing.assert_allclose(resample.numpy(), [[1.0, 2.0], [1.0, 2.0]])
  source, resample = transforms.window_source(pixels, [15, 25], [0, 0], [15, 25], 40)
  assert source.shape == (15, 25, 3)
  np.testing.assert_array_equal(resample.numpy(), transforms.IDENTITY_RESAMPLE)
  np.testing.assert_array_equal(
      source.numpy(), transforms.resized_window(pixels, [15, 25], [0, 0], [15, 25]).numpy())


@pytest.mark.parametrize('size', [32, 64, 160])  # shrink, same size, grow
def test_resized_window_equals_the_float_resize_rounded(size):
  pixels = _pixels(48, 64, seed=size)
  want, _ = transforms.resize_longest_side(transforms.to_float(pixels), size)
  shape = tf.shape(want)[:2]
  got = transforms.resized_window(pixels, shape, [0, 0], shape)
  assert got.dtype == tf.uint8 and got.shape == want.shape
  error = np.abs(got.numpy().astype(np.float32) - want.numpy() * 255)
  assert error.max() <= 0.5 + 1e-3
  if size == 64:  # unchanged size: the pixels themselves
    np.testing.assert_array_equal(got.numpy(), pixels.numpy())


def test_model_images_copy_and_mirror_an_identity_resample_exactly():
  """An identity resample (a source resized in tf.data, or not resized at all) gives the
  source's float32 pixels exactly, mirrored exactly when flipped, and PAD_VALUE outside
  the extent; float32 batches pass through."""
  pixels, other = _pixels(30, 50), _pixels(64, 20, seed=1)
  sources = np.zeros((2, 64, 64, 3), np.uint8)
  sources[0, :30, :50], sources[1, :, :20] = pixels.numpy(), other.numpy()
  identity = tf.constant(transforms.IDENTITY_RESAMPLE)
  _, mirrored = transforms.random_mirror(BOXES, identity, 20, tf.constant([1, 0], tf.int64),
                                         probability=1.0)
  batch = {'image': sources, 'source_extent': np.array([[30, 50], [64, 20]], np.int32),
           'resample': np.stack([identity.numpy(), mirrored.numpy()]),
           'extent': np.array([[30, 50], [64, 20]], np.int32)}
  images = np.asarray(jax.jit(canvas.model_images)(batch))
  assert images.dtype == np.float32 and images.shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(images[0, :30, :50], transforms.to_float(pixels).numpy())
  np.testing.assert_array_equal(images[1, :, :20], transforms.to_float(other).numpy()[:, ::-1])
  np.testing.assert_array_equal(images[0, 30:], np.float32(canvas.PAD_VALUE))
  np.testing.assert_array_equal(images[0, :, 50:], np.float32(canvas.PAD_VALUE))
  np.testing.assert_array_equal(images[1, :, 20:], np.float32(canvas.PAD_VALUE))
  want, _ = transforms.pad_to_canvas(transforms.to_float(pixels), BOXES, 64)
  np.testing.assert_allclose(images[0], want.numpy(), rtol=0, atol=1e-7)
  float_batch = {'image': want.numpy()[None]}
  np.testing.assert_array_equal(canvas.model_images(float_batch), float_batch['image'])
