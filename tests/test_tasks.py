"""The task interface: the decoding loop driven by a task's hooks (fake logits, as in
tests/test_decode.py), detection on it, and the official multi-task vocabulary's ids."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_jax.config import checks as config_checks
from pix2seq_jax.config import default
from pix2seq_jax.inference import decoding
from pix2seq_jax.tasks import detection
from pix2seq_jax.tasks import task as task_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from tests.tiny import tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)
LENGTH = vocab_lib.sequence_length(8)
EOS, NA, C0 = vocab_lib.EOS, vocab_lib.NOISE_CLASS, vocab_lib.CLASS_OFFSET


def coord(b):
  return VOCAB.coord_offset + b


def _sample(logits_fn, batch, task, length=LENGTH, **kwargs):
  """Runs the loop with `logits_fn(last, position) -> [B, V]`; cache counts iterations."""
  fn = lambda last, position, calls: (logits_fn(last, position), calls + 1)
  kwargs.setdefault('rng', jax.random.key(0))
  return jax.jit(lambda: decoding.sample(fn, jnp.int32(0), batch, task, length=length,
                                         **kwargs))()


def test_detection_task_hooks_give_what_the_vocabulary_gives():
  """Passing the detection task or its vocabulary: the same tokens, state and outputs."""
  random_logits = lambda last, position: 3.0 * jax.random.normal(
      jax.random.fold_in(jax.random.key(7), position), (16, VOCAB.size))
  for mode, kwargs in (('grammar', {}), ('grammar', {'temperature': 1.0, 'top_p': 0.8}),
                       ('official', {'temperature': 1.0, 'top_p': 0.4})):
    task = detection.DetectionTask(VOCAB, mode, 'class_x_coords')
    by_task = _sample(random_logits, 16, task, mode=mode, **kwargs)
    by_vocab = _sample(random_logits, 16, VOCAB, mode=mode, **kwargs)
    keys = jax.random.key_data
    for a, b in zip(jax.tree.leaves(by_task.replace(rng=keys(by_task.rng))),
                    jax.tree.leaves(by_vocab.replace(rng=keys(by_vocab.rng)))):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(by_task.task_state.class_probs, by_vocab.class_probs)
    outputs = task.outputs(by_task.tokens, by_task.token_probs, by_task.task_state)
    for a, b in zip(outputs, decoding.detection_outputs(by_vocab, VOCAB, 'class_x_coords',
                                                       mode)):
      np.testing.assert_array_equal(a, b)


def test_known_logits_through_the_detection_hooks_give_boxes_classes_and_scores():
  # One object, then EOS; the class slot offers "n/a" 0.5, class 2 0.3, class 4 0.2.
  target = [coord(10), coord(20), coord(30), coord(40), NA, EOS]

  def logits_fn(last, position):
    want = jnp.asarray(target + [EOS] * (LENGTH - len(target)))[position]
    logits = jnp.full((1, VOCAB.size), -1e9).at[:, want].set(0.0)
    return jnp.where(position == 4, logits.at[:, NA].set(jnp.log(0.5)).at[:, C0 + 2].set(
        jnp.log(0.3)).at[:, C0 + 4].set(jnp.log(0.2)), logits)

  task = detection.DetectionTask(VOCAB)
  state = _sample(logits_fn, 1, task)
  assert task.prompt == vocab_lib.START and int(state.position) == 6 == int(state.cache)
  np.testing.assert_array_equal(state.tokens[0, :6], target)
  assert int(state.task_state.class_tokens[0, 4]) == C0 + 2
  np.testing.assert_allclose(state.task_state.class_probs[0], np.eye(LENGTH)[4] * 0.3,
                             rtol=1e-6)
  tokens, scores = task.outputs(state.tokens, state.token_probs, state.task_state)
  found = detection.parse(np.asarray(tokens[0]), VOCAB, np.asarray(scores[0]))
  np.testing.assert_array_equal(found.labels, [2])
  np.testing.assert_allclose(found.scores, [0.3], rtol=1e-6)
  np.testing.assert_allclose(found.boxes[0], VOCAB.bin_to_coord(np.array([10, 20, 30, 40])))
  boxes, labels, object_scores, valid = detection.read_objects(tokens, scores, VOCAB)
  np.testing.assert_array_equal(valid[0], np.eye(8)[0])
  assert int(labels[0, 0]) == 2 and np.isclose(float(object_scores[0, 0]), 0.3)
  np.testing.assert_allclose(boxes[0, 0], found.boxes[0])


def test_official_detection_task_has_no_constraint():
  tokens = jnp.zeros((2, LENGTH), jnp.int32)
  official = detection.DetectionTask(VOCAB, 'official')
  assert official.allowed(jnp.int32(3), tokens, official.init_state(2, LENGTH)) is None
  grammar = detection.DetectionTask(VOCAB)
  mask = grammar.allowed(jnp.int32(4), tokens, grammar.init_state(2, LENGTH))
  np.testing.assert_array_equal(mask, decoding.grammar_mask(jnp.int32(4), tokens, VOCAB,
                                                            LENGTH))
  with pytest.raises(ValueError, match='decode.score'):
    detection.DetectionTask(VOCAB, 'grammar', 'coords')
  with pytest.raises(ValueError, match='decode.mode'):
    detection.DetectionTask(VOCAB, 'beam')
  assert detection.MODES == default.DECODE_MODES
  assert detection.SCORE_MODES == default.SCORE_MODES


class _Counts(NamedTuple):
  evens: jax.Array  # [B] int32: even tokens chosen so far
  seen: jax.Array  # [B, L] float32: the chosen token's probability, as the hook saw it


@dataclasses.dataclass(frozen=True)
class _EvenTokensTask:
  """A toy task: its own prompt, even tokens only, counting them in its state."""

  vocab: vocab_lib.Vocabulary
  prompt: int = 7

  def init_state(self, batch, length):
    return _Counts(jnp.zeros((batch,), jnp.int32), jnp.zeros((batch, length)))

  def allowed(self, position, tokens, state):
    return jnp.broadcast_to(jnp.arange(self.vocab.size) % 2 == 0,
                            (tokens.shape[0], self.vocab.size))

  def update(self, state, position, logits, probs, token, done):
    prob = jnp.take_along_axis(probs, token[:, None], axis=1)[:, 0]
    return _Counts(state.evens + (~done & (token % 2 == 0)),
                   state.seen.at[:, position].set(jnp.where(done, 0.0, prob)))

  def outputs(self, tokens, token_probs, state):
    return state.evens


def test_the_loop_knows_nothing_of_detection():
  """Another task's prompt, constraint and state go through the loop unchanged; EOS (1, odd)
  is never allowed, so every position is sampled."""
  task: task_lib.Task = _EvenTokensTask(VOCAB)
  lasts = []

  def logits_fn(last, position):
    jax.debug.callback(lambda p, t: lasts.append((int(p), int(t[0]))), position, last)
    return 2.0 * jax.random.normal(jax.random.fold_in(jax.random.key(3), position),
                                   (4, VOCAB.size))

  state = _sample(logits_fn, 4, task, temperature=1.0)
  assert int(state.position) == LENGTH == int(state.cache)
  assert (np.asarray(state.tokens) % 2 == 0).all()
  np.testing.assert_array_equal(task.outputs(state.tokens, state.token_probs,
                                             state.task_state), [LENGTH] * 4)
  np.testing.assert_array_equal(state.task_state.seen, state.token_probs)
  assert sorted(lasts)[0] == (0, 7)  # the task's prompt at position 0
  assert (np.asarray(state.token_probs) > 0).all()


def test_official_multitask_vocabulary_ids():
  """The official multi-task model's ids (its vocab.py and configs/config_multi_task.py)."""
  vocab = vocab_lib.for_categories('official_multitask', (1, 2, 90), 1000)
  assert vocab.size == 35000 and vocab.official and vocab.multitask
  assert [vocab.prompt(t) for t in ('object_detection', 'instance_segmentation',
                                    'keypoint_detection', 'captioning')] == [10, 11, 12, 13]
  assert vocab.start == 10 and vocab.eos == vocab.padding == 0
  assert vocab.noise_class == 30 and vocab.separator == 40 and vocab.invisible == 41
  np.testing.assert_array_equal(vocab.class_tokens, [101, 102, 190])
  assert vocab.coord_offset == 1000 and vocab.text_offset == 3000
  assert vocab.is_coord(np.array([999, 1000, 1999, 2000])).tolist() == [0, 1, 1, 0]
  # The ids below 3000 mean what they mean in the official (detection) layout.
  official = vocab_lib.for_categories('official', (1, 2, 90), 1000)
  for name in ('start', 'eos', 'padding', 'noise_class', 'class_offset', 'coord_offset'):
    assert getattr(vocab, name) == getattr(official, name), name
  assert official.size == 3000 and official.prompt('object_detection') == 10
  with pytest.raises(ValueError, match='official_multitask'):
    official.prompt('captioning')
  with pytest.raises(ValueError, match='official_multitask'):
    _ = official.separator
  with pytest.raises(ValueError, match='Unknown task'):
    vocab.prompt('depth')
  compact = vocab_lib.for_categories('compact', (1, 2, 90), 1000)
  assert compact.prompt('object_detection') == vocab_lib.START
  with pytest.raises(ValueError, match='at most 2000 bins'):
    vocab_lib.for_categories('official_multitask', (1,), 2001)


def test_the_config_accepts_the_official_multitask_vocabulary(shapes_dir):
  config = tiny_config(shapes_dir)
  config.model.vocabulary = 'official_multitask'
  config_checks.validate(config, mode='train')
  config.data.num_bins = 2001
  with pytest.raises(config_checks.ConfigError, match='official_multitask vocabulary holds'):
    config_checks.validate(config, mode='train')
