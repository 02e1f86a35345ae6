"""Vocabulary, sequence building (TF) and parsing back to boxes (numpy)."""

import numpy as np
import pytest
import tensorflow as tf

from pix2seq_jax.data import sequences
from pix2seq_jax.inference import detections
from pix2seq_jax.tasks import vocab as vocab_lib

VOCAB = vocab_lib.Vocabulary(num_classes=9, num_bins=100)


def _objects(rng, n):
  corners = np.sort(rng.uniform(0, 1, size=(n, 2, 2)), axis=1)  # [n, (min, max), (y, x)]
  boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1).astype(np.float32)
  return boxes, rng.integers(0, VOCAB.num_classes, size=n).astype(np.int32)


def test_vocabulary_layout_is_disjoint():
  special = {vocab_lib.PADDING, vocab_lib.EOS, vocab_lib.START, vocab_lib.NOISE_CLASS}
  classes = set(range(vocab_lib.CLASS_OFFSET, VOCAB.coord_offset))
  coords = set(range(VOCAB.coord_offset, VOCAB.size))
  assert len(special | classes | coords) == VOCAB.size == 4 + 9 + 100
  assert not special & classes and not classes & coords


def test_sequences_layout_and_weights():
  boxes, labels = _objects(np.random.default_rng(0), 3)
  out = {k: v.numpy() for k, v in sequences.build_sequences(
      tf.constant(boxes), tf.constant(labels), VOCAB, max_instances=5, eos_weight=0.1).items()}
  length = vocab_lib.sequence_length(5)
  assert all(v.shape == (length,) for v in out.values())
  target = out['target_tokens']
  assert target[15] == vocab_lib.EOS and (target[16:] == vocab_lib.PADDING).all()
  np.testing.assert_array_equal(target[4:15:5], labels + vocab_lib.CLASS_OFFSET)
  assert out['input_tokens'][0] == vocab_lib.START
  np.testing.assert_array_equal(out['input_tokens'][1:], target[:-1])
  np.testing.assert_allclose(out['loss_weights'], [1.0] * 15 + [0.1] + [0.0] * (length - 16))


def test_official_vocabulary_sequences_use_the_official_ids():
  """The official layout (vocab.py): prompt 10, class 100 + category id, coordinate
  1000 + bin, 0 ends and pads; noise objects say 30. Eagerly and inside tf.data."""
  official = vocab_lib.for_categories('official', (1, 18, 90), 1000)
  assert (official.size, official.start, official.eos, official.noise_class) == (3000, 10, 0, 30)
  boxes = tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
  labels = tf.constant([2, 1])

  def build(seed):
    return sequences.build_sequences(boxes, labels, official, max_instances=4, eos_weight=0.1,
                                     seed=seed, noise_objects=True, corrupt_classes=True)

  seed = tf.constant([3, 4], tf.int64)
  eager = {k: v.numpy() for k, v in build(seed).items()}
  in_dataset = next(tf.data.Dataset.from_tensors(seed).map(build).as_numpy_iterator())
  for key in eager:
    np.testing.assert_array_equal(eager[key], in_dataset[key])
  target = eager['target_tokens']
  np.testing.assert_array_equal(target[:10], [1100, 1200, 1500, 1599, 190,
                                              1000, 1000, 1999, 1999, 118])
  np.testing.assert_array_equal(target[14:20:5], 30)  # two noise objects, "n/a"
  assert (target[20:] == 0).all() and eager['input_tokens'][0] == 10
  inputs = eager['input_tokens'][1:]
  classes = inputs[4:20:5]
  assert (((classes >= 100) & (classes < 1000)) | (classes == 30)).all()
  found = detections.parse_tokens(target, official)
  np.testing.assert_array_equal(found.labels, [2, 1])


def test_objects_beyond_max_instances_are_dropped():
  boxes, labels = _objects(np.random.default_rng(1), 7)
  out = sequences.build_sequences(tf.constant(boxes), tf.constant(labels), VOCAB,
                                  max_instances=4, eos_weight=1.0)
  parsed = detections.parse_tokens(out['target_tokens'].numpy(), VOCAB)
  np.testing.assert_array_equal(parsed.labels, labels[:4])
  assert out['target_tokens'].numpy()[-1] == vocab_lib.EOS


def test_token_round_trip_within_half_a_bin():
  boxes, labels = _objects(np.random.default_rng(2), 20)
  out = sequences.build_sequences(tf.constant(boxes), tf.constant(labels), VOCAB,
                                  max_instances=20, eos_weight=0.1)
  parsed = detections.parse_tokens(out['target_tokens'].numpy(), VOCAB)
  half_bin = 0.5 / (VOCAB.num_bins - 1)
  assert np.abs(parsed.boxes - boxes).max() <= half_bin + 1e-6
  np.testing.assert_array_equal(parsed.labels, labels)


def _tokens(*objects, tail=(vocab_lib.EOS,)):
  """Objects as (y0, x0, y1, x1 bins, label) -> a token sequence."""
  out = []
  for y0, x0, y1, x1, label in objects:
    out += [VOCAB.coord_offset + b for b in (y0, x0, y1, x1)] + [label + vocab_lib.CLASS_OFFSET]
  return np.array(out + list(tail))


def test_parse_handles_malformed_sequences():
  good = (10, 20, 30, 40, 2)
  # Cut mid-box: the partial object is dropped.
  assert len(detections.parse_tokens(_tokens(good)[:-3], VOCAB).labels) == 0
  # EOS in the middle of the second box.
  cut = np.concatenate([_tokens(good, tail=()), _tokens(good, tail=())[:2], [vocab_lib.EOS]])
  assert len(detections.parse_tokens(cut, VOCAB).labels) == 1
  # A class token in a coordinate slot, a coordinate token in a class slot.
  bad = _tokens(good, good, good, tail=(vocab_lib.EOS,))
  bad[1] = vocab_lib.CLASS_OFFSET
  bad[9] = VOCAB.coord_offset + 5
  parsed = detections.parse_tokens(bad, VOCAB)
  assert len(parsed.labels) == 1 and parsed.labels[0] == 2
  # Reversed corners are swapped into a valid box.
  parsed = detections.parse_tokens(_tokens((30, 40, 10, 20, 1)), VOCAB)
  np.testing.assert_allclose(parsed.boxes[0] * (VOCAB.num_bins - 1), [10, 20, 30, 40], atol=1e-4)
  # The "n/a" class is dropped; an empty sequence gives nothing.
  noise = _tokens(good)
  noise[4] = vocab_lib.NOISE_CLASS
  assert len(detections.parse_tokens(noise, VOCAB).labels) == 0
  assert len(detections.parse_tokens(np.array([], np.int32), VOCAB).labels) == 0


@pytest.mark.parametrize('seed', range(5))
def test_parse_never_crashes_on_random_tokens(seed):
  rng = np.random.default_rng(seed)
  for _ in range(200):
    tokens = rng.integers(-5, VOCAB.size + 5, size=rng.integers(0, 60))
    parsed = detections.parse_tokens(tokens, VOCAB, rng.uniform(size=tokens.shape))
    assert parsed.boxes.shape == (len(parsed.labels), 4)
    assert (parsed.boxes[:, :2] <= parsed.boxes[:, 2:]).all()
    assert ((parsed.labels >= 0) & (parsed.labels < VOCAB.num_classes)).all()


def test_to_original_pixels():
  # A 200x100 (h x w) image on a 64 canvas: scale 0.32, content 64 x 32.
  boxes = np.array([[0.0, 0.0, 1.0, 0.5], [0.25, 0.25, 0.5, 0.75]], np.float32)
  xywh = detections.to_original_pixels(boxes, 64, 64 / 200, (200, 100))
  np.testing.assert_allclose(xywh[0], [0, 0, 100, 200], atol=1e-4)
  np.testing.assert_allclose(xywh[1], [50, 50, 50, 50], atol=1e-4)  # clipped at x=100
