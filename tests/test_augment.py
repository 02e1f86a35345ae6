"""Image augmentation keeps boxes on their pixels; sequence augmentation follows its spec."""

import numpy as np
import pytest
import tensorflow as tf

from pix2seq_jax.data import sequences, transforms
from pix2seq_jax.tasks import vocab as vocab_lib

SIZE = 64


def _painted(height, width, boxes_px):
  """A black image with each box (pixel ymin, xmin, ymax, xmax) painted in its own channel."""
  image = np.zeros((height, width, 3), np.float32)
  for channel, (y0, x0, y1, x1) in enumerate(boxes_px):
    image[y0:y1, x0:x1, channel] = 1.0
  return tf.constant(image)


def _extent(mask):
  """Pixel extent (ymin, xmin, ymax, xmax) of a bool mask, or None when empty."""
  ys, xs = np.nonzero(mask)
  if not ys.size:
    return None
  return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def _augment(image, boxes, labels, seed):
  """The training chain of the pipeline: jitter, crop, flip, pad."""
  fold = lambda op: tf.random.experimental.stateless_fold_in(seed, op)
  image, _ = transforms.random_scale_jitter(image, SIZE, fold(0), 0.3, 2.0)
  image, boxes, labels = transforms.random_crop(image, boxes, labels, SIZE, fold(1))
  image, boxes = transforms.random_horizontal_flip(image, boxes, fold(2))
  image, boxes = transforms.pad_to_canvas(image, boxes, SIZE)
  return image, boxes, labels


@pytest.mark.parametrize('seed', range(12))
def test_augmented_boxes_cover_their_pixels(seed):
  height, width = 48, 80
  boxes_px = [(4, 6, 30, 40), (20, 50, 46, 78), (10, 30, 16, 36)]
  image = _painted(height, width, boxes_px)
  boxes = tf.constant(np.array(boxes_px) / [height, width, height, width], tf.float32)
  labels = tf.constant([0, 1, 2])
  aug_image, aug_boxes, aug_labels = _augment(image, boxes, labels, tf.constant([seed, 3]))
  assert aug_image.shape == (SIZE, SIZE, 3)
  aug_image, aug_boxes, aug_labels = aug_image.numpy(), aug_boxes.numpy(), aug_labels.numpy()
  for label in range(3):
    # The painted region after resampling: pixels more than half covered.
    extent = _extent(aug_image[..., label] > 0.5)
    if label not in aug_labels:
      # A dropped box may leave at most a sliver (under a pixel) inside the crop.
      assert extent is None or np.min(extent[2:] - extent[:2]) <= 1
      continue
    box_px = aug_boxes[list(aug_labels).index(label)] * SIZE
    if extent is None:  # a kept box thinner than half a pixel
      assert np.min(box_px[2:] - box_px[:2]) < 1.5
      continue
    np.testing.assert_allclose(box_px, extent, atol=1.01)


def test_crop_clips_and_drops_boxes():
  image = tf.zeros([100, 200, 3])
  boxes = tf.constant([[0.1, 0.1, 0.3, 0.2],  # inside the left half
                       [0.0, 0.4, 1.0, 0.6],  # across the border of the right half
                       [0.5, 0.8, 0.9, 0.95]])  # inside the right half
  labels = tf.constant([0, 1, 2])
  for seed in range(40):
    cropped, out_boxes, out_labels = transforms.random_crop(
        image, boxes, labels, 100, tf.constant([seed, 0]))
    assert cropped.shape == (100, 100, 3)
    out_boxes = out_boxes.numpy()
    assert np.all(out_boxes >= 0) and np.all(out_boxes <= 1)
    assert np.all(out_boxes[:, 2:] > out_boxes[:, :2])
    assert 1 in out_labels.numpy()  # the middle box is always partly visible
  # Offsets are uniform over [0, 100]: the two extremes keep only the left or right box.
  kept = {tuple(transforms.random_crop(image, boxes, labels, 100, tf.constant([s, 0]))[2].numpy())
          for s in range(200)}
  assert (0, 1) in kept and (1, 2) in kept


def test_scale_jitter_range_and_aspect():
  image = tf.zeros([30, 60, 3])
  longest = []
  for seed in range(300):
    out, scale = transforms.random_scale_jitter(image, 100, tf.constant([seed, 1]), 0.3, 2.0)
    h, w = out.shape[:2]
    assert abs(w / h - 2.0) < 0.1
    assert abs(scale * 60 - w) <= 0.5
    longest.append(w)
  longest = np.array(longest)
  assert 30 <= longest.min() < 40 and 190 < longest.max() <= 200
  assert abs(longest.mean() - 115) < 6  # U[30, 200]


# Sequence augmentation -------------------------------------------------------------

VOCAB = vocab_lib.Vocabulary(num_classes=6, num_bins=100)


def _seeds(n):
  return [tf.constant([i, 17], tf.int64) for i in range(n)]


def test_duplicate_jitter_moments():
  boxes = tf.constant([[0.2, 0.3, 0.6, 0.5]] * 4000)  # h 0.4, w 0.2
  moved = (sequences.jitter_boxes(boxes, tf.constant([1, 2])) - boxes).numpy()
  relative = moved / np.array([0.4, 0.2, 0.4, 0.2])
  # truncnorm(0, 0.05) at 2 sigma: mean 0, std 0.05 * 0.8796, |x| <= 0.1.
  assert abs(relative.mean()) < 0.002
  np.testing.assert_allclose(relative.std(axis=0), 0.05 * 0.8796, rtol=0.05)
  assert np.abs(relative).max() <= 0.1 + 1e-6


def test_shifted_and_random_box_moments():
  boxes = tf.constant([[0.2, 0.3, 0.6, 0.5]] * 4000)
  shifted = sequences.shift_boxes(boxes, tf.constant([3, 4])).numpy()
  np.testing.assert_allclose(shifted[:, 2:] - shifted[:, :2], np.tile([0.4, 0.2], (4000, 1)),
                             atol=1e-6)
  centre = (shifted[:, :2] + shifted[:, 2:]) / 2
  np.testing.assert_allclose(centre.mean(0), 0.5, atol=0.015)
  np.testing.assert_allclose(centre.var(0), 1 / 12, rtol=0.06)

  rand = sequences.random_boxes(8000, tf.constant([5, 6])).numpy()
  size = rand[:, 2:] - rand[:, :2]
  # |truncnorm(0, 0.5)| at 2 sigma: mean 0.5 * 0.7228, at most 1.
  np.testing.assert_allclose(size.mean(0), 0.5 * 0.7228, rtol=0.03)
  assert size.min() >= 0 and size.max() <= 1.0 + 1e-6
  np.testing.assert_allclose(((rand[:, :2] + rand[:, 2:]) / 2).mean(0), 0.5, atol=0.01)


def test_noise_boxes_mix_of_duplicates_and_bad_boxes():
  real = tf.constant([[0.2, 0.3, 0.6, 0.5]])
  duplicates, total = 0, 0
  for seed in _seeds(200):
    noise = sequences.noise_boxes(real, tf.constant(9), 9, seed).numpy()
    assert noise.shape == (9, 4)
    assert np.all(noise >= 0) and np.all(noise <= 1)
    assert np.all(noise[:, 2:] >= noise[:, :2])
    near = np.all(np.abs(noise - real.numpy()) <= 0.1 * 0.4 + 1e-6, axis=1)
    duplicates += near.sum()
    total += len(noise)
  # The number of duplicates is uniform in [0, 9] (mean 4.5 of 9), bad boxes the rest
  # (which are rarely near the real box).
  assert 0.42 < duplicates / total < 0.58
  # Without real objects every noise box is random.
  empty = sequences.noise_boxes(tf.zeros([0, 4]), tf.constant(4), 9, _seeds(1)[0])
  assert empty.shape == (4, 4)


def _augmented(boxes, labels, seed, **kwargs):
  options = dict(noise_objects=True, corrupt_classes=True)
  options.update(kwargs)
  return {k: v.numpy() for k, v in sequences.build_sequences(
      tf.constant(boxes, tf.float32), tf.constant(labels, tf.int32), VOCAB, max_instances=6,
      eos_weight=0.1, seed=seed, **options).items()}


def test_noise_objects_follow_real_ones_with_their_weights():
  boxes, labels = [[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.3]], [4, 1]
  seq = _augmented(boxes, labels, _seeds(1)[0], noise_coord_weight=0.0, noise_class_weight=1.0)
  target, weights = seq['target_tokens'], seq['loss_weights']
  assert target.shape == (31,)
  objects = target[:30].reshape(6, 5)
  np.testing.assert_array_equal(objects[:2, 4], VOCAB.class_token(np.array(labels)))
  np.testing.assert_array_equal(objects[2:, 4], vocab_lib.NOISE_CLASS)
  assert VOCAB.is_coord(objects[:, :4]).all()
  assert target[30] == vocab_lib.EOS
  w = weights[:30].reshape(6, 5)
  np.testing.assert_array_equal(w[:2], 1.0)
  np.testing.assert_array_equal(w[2:, :4], 0.0)
  np.testing.assert_array_equal(w[2:, 4], 1.0)
  assert weights[30] == pytest.approx(0.1)

  other = _augmented(boxes, labels, _seeds(1)[0], noise_coord_weight=0.25,
                     noise_class_weight=0.5)['loss_weights'][:30].reshape(6, 5)
  np.testing.assert_array_equal(other[2:, :4], 0.25)
  np.testing.assert_array_equal(other[2:, 4], 0.5)


def test_noise_boxes_lie_inside_the_image_not_its_padding():
  """As the official code, which makes them before padding: with the image filling the
  top-left 0.5 x 0.75 of the canvas, every noise coordinate stays inside it, eagerly and
  inside a tf.data pipeline."""
  boxes, labels = [[0.1, 0.1, 0.4, 0.5], [0.3, 0.2, 0.45, 0.7]], [4, 1]
  extent = tf.constant([0.5, 0.75])
  limit = VOCAB.coord_offset + np.round(np.array([0.5, 0.75, 0.5, 0.75]) * (VOCAB.num_bins - 1))

  def build(seed):
    return sequences.build_sequences(
        tf.constant(boxes, tf.float32), tf.constant(labels, tf.int32), VOCAB, max_instances=6,
        eos_weight=0.1, seed=seed, noise_objects=True, extent=extent)['target_tokens']

  eager = np.stack([build(seed).numpy() for seed in _seeds(40)])
  dataset = tf.data.Dataset.from_tensor_slices(np.stack(_seeds(40))).map(build)
  in_dataset = np.stack(list(dataset.as_numpy_iterator()))
  np.testing.assert_array_equal(eager, in_dataset)
  noise = eager[:, 10:30].reshape(-1, 4, 5)[:, :, :4].reshape(-1, 4)
  assert (noise <= limit).all()
  whole = np.stack([sequences.build_sequences(
      tf.constant(boxes, tf.float32), tf.constant(labels, tf.int32), VOCAB, max_instances=6,
      eos_weight=0.1, seed=seed, noise_objects=True)['target_tokens'].numpy()
      for seed in _seeds(40)])[:, 10:30].reshape(-1, 4, 5)[:, :, :4].reshape(-1, 4)
  assert (whole > limit).any()  # without the extent they spread over the padding


def test_input_class_corruption():
  boxes, labels = [[0.1, 0.1, 0.4, 0.5]] * 3, [2, 2, 2]
  classes = []
  for seed in _seeds(300):
    seq = _augmented(boxes, labels, seed, noise_objects=False)
    inputs, target = seq['input_tokens'], seq['target_tokens']
    np.testing.assert_array_equal(inputs[1:], np.where(
        np.arange(30) % 5 == 4, inputs[1:], target[:-1]))  # only class slots change
    np.testing.assert_array_equal(target[4:15:5], VOCAB.class_token(2))  # truth kept
    classes.append(inputs[5:16:5])  # the class inputs of the three objects
    assert inputs[16] == vocab_lib.EOS and inputs[0] == vocab_lib.START
  classes = np.concatenate(classes)
  na = classes == vocab_lib.NOISE_CLASS
  assert 0.45 < na.mean() < 0.55  # "n/a" with p 0.5
  assert VOCAB.is_class(classes[~na]).all()
  counts = np.bincount(classes[~na] - vocab_lib.CLASS_OFFSET, minlength=6)
  assert counts.min() > 0.6 * counts.mean()  # uniform over the 6 classes


def test_augmentation_switches_off():
  boxes, labels = [[0.1, 0.1, 0.4, 0.5]], [3]
  plain = {k: v.numpy() for k, v in sequences.build_sequences(
      tf.constant(boxes), tf.constant(labels), VOCAB, max_instances=6, eos_weight=0.1).items()}
  off = _augmented(boxes, labels, _seeds(1)[0], noise_objects=False, corrupt_classes=False)
  for key in plain:
    np.testing.assert_array_equal(plain[key], off[key])
  assert plain['target_tokens'][5] == vocab_lib.EOS
  with pytest.raises(ValueError, match='seed'):
    sequences.build_sequences(tf.constant(boxes), tf.constant(labels), VOCAB, 6, 0.1,
                              noise_objects=True)
