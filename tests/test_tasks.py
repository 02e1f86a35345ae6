"""The task interface: the decoding loop driven by a task's hooks (fake logits, as in
tests/test_decode.py), detection on it, and the official multi-task vocabulary's ids."""

import dataclasses
import functools
from typing import ClassVar, NamedTuple

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
    np.testing.assert_array_equal(by_task.task_state.class_probs, by_vocab.task_state.class_probs)
    outputs = task.outputs(by_task.tokens, by_task.token_probs, by_task.task_state)
    for a, b in zip(outputs, decoding.detection_outputs(by_vocab, VOCAB, 'class_x_coords',
                                                       mode)):
      np.testing.assert_array_equal(a, b)


@dataclasses.dataclass(frozen=True)
class _DetectionWithStops(detection.DetectionTask):
  """Detection with stop tokens of its own (`DetectionTask` has none: the loop's default)."""

  stop_tokens: tuple[int, ...] = ()


def _assert_same_states(a, b):
  keys = jax.random.key_data
  for x, y in zip(jax.tree.leaves(a.replace(rng=keys(a.rng))),
                  jax.tree.leaves(b.replace(rng=keys(b.rng))), strict=True):
    np.testing.assert_array_equal(x, y)


def test_detection_stops_at_eos_under_grammar_and_never_under_official():
  """Detection has no `stop_tokens`; the loop's default is decode.mode's rule: EOS under
  'grammar', nothing under 'official'. The loop with those stop tokens spelled out gives
  the same state bit for bit, greedy and sampled; EOS is likely, so grammar rows end at
  different positions and official rows go on past it."""
  def logits_fn(last, position):
    logits = 3.0 * jax.random.normal(jax.random.fold_in(jax.random.key(9), position),
                                     (16, VOCAB.size))
    return logits.at[:, EOS].add(4.0)

  for mode, stops in (('grammar', (EOS,)), ('official', ())):
    task = detection.DetectionTask(VOCAB, mode)
    assert not hasattr(task, 'stop_tokens') and task_lib.stop_tokens(task, mode) == stops
    explicit = _DetectionWithStops(VOCAB, mode, stop_tokens=stops)
    for kwargs in ({}, {'temperature': 1.0, 'top_p': 0.9}):
      state = _sample(logits_fn, 16, task, mode=mode, **kwargs)
      _assert_same_states(state, _sample(logits_fn, 16, explicit, mode=mode, **kwargs))
      tokens = np.asarray(state.tokens)
      ends = [list(row).index(EOS) if EOS in row else LENGTH for row in tokens]
      if mode == 'grammar':
        assert len(set(ends)) > 1 and int(state.position) == max(ends) + 1
        for row, end in zip(tokens, ends):
          assert (row[end + 1:] == vocab_lib.PADDING).all()
      else:
        assert int(state.position) == LENGTH and min(ends) < LENGTH - 1
        assert all((row[end + 1:] != vocab_lib.PADDING).any()
                   for row, end in zip(tokens, ends) if end < LENGTH - 1)


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
  np.testing.assert_array_equal(mask, detection.grammar_mask(jnp.int32(4), tokens, VOCAB,
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


# The instance tasks (prompts [R, 6], official_multitask ids) through the same loop.
MULTI = vocab_lib.for_categories('official_multitask', (1, 2, 90), 1000)
SEP, INVISIBLE, PAD = vocab_lib.OFFICIAL_SEPARATOR, vocab_lib.OFFICIAL_INVISIBLE, 0


@dataclasses.dataclass(frozen=True)
class _InstanceIds(vocab_lib.Vocabulary):
  """MULTI's ids up to its last coordinate token (1999): all the instance tasks emit,
  without the 33,000 text tokens, so that fake logits [R, V] (and their sort under
  top-p) stay small; the loop's tests of those tasks run on it."""

  @property
  def size(self) -> int:
    return self.coord_offset + self.num_bins


FEW = _InstanceIds(MULTI.num_classes, MULTI.num_bins, MULTI.layout, MULTI.category_ids)


def test_the_small_instance_vocabulary_has_the_multitask_ids():
  assert FEW.size == 2000 and MULTI.size == 35000
  ids = np.arange(FEW.size)
  np.testing.assert_array_equal(FEW.is_coord(ids), MULTI.is_coord(ids))
  for name in ('padding', 'eos', 'separator', 'invisible', 'coord_offset', 'num_bins'):
    assert getattr(FEW, name) == getattr(MULTI, name), name
  assert [FEW.prompt(t) for t in ('instance_segmentation', 'keypoint_detection')] == [11, 12]


def _recorded_sample(logits_fn, task, prompt, length, **kwargs):
  """`_sample` with a prompt; also returns the (decoder position, the rows' tokens read)
  pairs that `logits_fn(last, position) -> [R, V]` saw, in order. The fake's cache
  records them (no host callback, so the program can come from the compilation cache);
  the state's cache is the number of calls."""
  calls = prompt.shape[1] - 1 + length  # at most

  def fn(last, position, record):
    count, positions, reads = record
    return logits_fn(last, position), (count + 1, positions.at[count].set(position),
                                       reads.at[count].set(last))

  record = (jnp.int32(0), jnp.zeros((calls,), jnp.int32),
            jnp.zeros((calls, prompt.shape[0]), jnp.int32))
  kwargs.setdefault('rng', jax.random.key(0))
  state = jax.jit(lambda: decoding.sample(fn, record, prompt.shape[0], task, length=length,
                                          prompt=prompt, **kwargs))()
  count, positions, reads = (np.asarray(x) for x in state.cache)
  seen = [(int(p), [int(x) for x in r]) for p, r in zip(positions[:count], reads[:count])]
  return state.replace(cache=int(count)), seen


def test_instance_prompts_are_the_official_box_and_class_tokens():
  from pix2seq_jax.tasks import segmentation
  task = segmentation.SegmentationTask(MULTI, num_samples=2)
  boxes = jnp.asarray([[[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]]])  # [1, 2, 4]
  rows = np.asarray(task.prompts(boxes, jnp.asarray([[90, 0]])))
  # round(v * 999), half to even (0.5 * 999 = 499.5 -> 500); class 100 + category id; a
  # padding object (class 0) all zeros; each object's row twice (its samples, adjacent).
  np.testing.assert_array_equal(rows, [[11, 1100, 1200, 1500, 1899, 190]] * 2
                                + [[0] * 6] * 2)
  assert task.prompt_length == 6 == task_lib.prompt_length(task)
  assert task_lib.prompt_length(detection.DetectionTask(VOCAB)) == 1
  with pytest.raises(ValueError, match='6-token prompt'):
    decoding.sample(lambda *a: None, None, 2, task, length=8, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r'must be \[2, 6\]'):
    decoding.sample(lambda *a: None, None, 2, task, length=8, rng=jax.random.key(0),
                    prompt=jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(ValueError, match='official_multitask'):
    segmentation.SegmentationTask(vocab_lib.for_categories('official', (1,), 1000))


def test_segmentation_task_reads_its_prompt_then_samples_polygons_under_its_grammar():
  """Known logits (greedy): the 6-token prompt is fed at decoder positions 0..5, response
  position t at t + 5; row r's polygon then separator, then padding (the end). The
  padding token is the most likely at every x slot: 'grammar' keeps the pairs whole,
  'official' (unconstrained, as the official) takes it and samples every position."""
  from pix2seq_jax.tasks import segmentation
  c = lambda *bins: [FEW.coord_offset + b for b in bins]
  targets = np.array([c(100, 200, 100, 600, 500, 600) + [SEP, SEP]
                      + c(700, 700, 700, 900, 900, 900) + [PAD] * 2,
                      c(600, 100, 600, 400, 900, 400) + [PAD] * 10])  # [2 samples, 16]
  task = segmentation.SegmentationTask(FEW, mode='grammar', max_points=8, num_samples=2)
  prompt = task.prompts(jnp.asarray([[0.1, 0.2, 0.3, 0.4]]), jnp.asarray([1]))  # [2, 6]

  def logits_fn(last, position):
    want = jnp.asarray(targets)[:, jnp.clip(position - 5, 0, 15)]  # [2]
    x_slot = position % 2 == 0  # odd response positions
    logits = jnp.zeros((2, FEW.size)).at[:, PAD].set(jnp.where(x_slot, 6.0, 0.0))
    return logits.at[jnp.arange(2), want].set(5.0)

  state, seen = _recorded_sample(logits_fn, task, prompt, task.length, mode='grammar')
  assert [p for p, _ in seen] == list(range(5 + 15))  # stopped after row 0's end
  np.testing.assert_array_equal([t[0] for _, t in seen[:7]],
                                list(np.asarray(prompt[0])) + [targets[0, 0]])
  assert int(state.position) == 15
  np.testing.assert_array_equal(state.tokens, targets)
  points = np.asarray(task.outputs(state.tokens, state.token_probs, state.task_state))
  np.testing.assert_array_equal(points, segmentation.tokens_to_points(state.tokens))
  # Host: the two samples -> one mask (mean >= 0.5 of 2: their union), the official way.
  hw = (20, 20)
  mask, = segmentation.instance_masks(points, hw, hw, hw, num_samples=2)
  singles = [segmentation.instance_masks(p[None], hw, hw, hw, num_samples=1)[0]
             for p in points]
  np.testing.assert_array_equal(mask, singles[0] | singles[1])
  assert mask.sum() > singles[0].sum() > 0

  official = segmentation.SegmentationTask(FEW, max_points=8, num_samples=2)
  assert official.sampling() == dict(temperature=1.0, top_k=0, top_p=0.8, mode='official')
  state, _ = _recorded_sample(logits_fn, official, prompt, official.length, mode='official')
  # The x slot is unconstrained: padding at position 1 ends both rows (`stop_tokens`).
  assert int(state.position) == 2 and int(state.cache) == 5 + 2
  np.testing.assert_array_equal(state.tokens[:, 0], targets[:, 0])
  assert (np.asarray(state.tokens)[:, 1:] == PAD).all()


@functools.partial(jax.jit, static_argnames='task')
def _segmentation_sample(task, prompt, stop_at):
  """`task`'s loop (its sampling settings) on fake logits over [R, V]: coordinates and
  separators at random, and padding (certain) where the response position is stop_at
  [R] (-1: nowhere)."""
  ids = jnp.arange(task.vocab.size)
  drawable = task.vocab.is_coord(ids) | (ids == SEP)

  def logits_fn(last, position, calls):
    noise = 3.0 * jax.random.normal(jax.random.fold_in(jax.random.key(5), position),
                                    (prompt.shape[0], task.vocab.size))
    pad = (position - 5 == stop_at)[:, None] & (ids == PAD)  # [R, V]
    return jnp.where(pad, 1e3, jnp.where(drawable, noise, -1e9)), calls + 1

  return decoding.sample(logits_fn, jnp.int32(0), prompt.shape[0], task,
                         length=task.length, rng=jax.random.key(0), prompt=prompt,
                         **task.sampling())


@pytest.mark.parametrize('mode', ['official', 'grammar'])
def test_segmentation_rows_end_at_their_first_padding_with_the_same_masks(mode):
  """Segmentation stops a row at its first padding token in both modes (`stop_tokens`):
  its later tokens are padding, while the loop without the stop samples on; the tokens
  agree up to and including that padding (the other rows entirely), and so do the parsed
  points' masks, each sample's and the ensembles'. Once every row has stopped the loop
  ends. 'official' ends a row at an x slot too (its pair holds -1: the parse stops)."""
  from pix2seq_jax.tasks import segmentation

  @dataclasses.dataclass(frozen=True)
  class NoStop(segmentation.SegmentationTask):
    stop_tokens: ClassVar[tuple[int, ...]] = ()

  task = segmentation.SegmentationTask(FEW, mode=mode, max_points=8, num_samples=2)
  free = NoStop(FEW, mode=mode, max_points=8, num_samples=2)
  assert task_lib.stop_tokens(task, mode) == (PAD,) and task_lib.stop_tokens(free, mode) == ()
  boxes = jnp.asarray([[0.1, 0.2, 0.6, 0.7], [0.3, 0.3, 0.9, 0.8]])
  prompt = task.prompts(boxes, jnp.asarray([1, 2]))  # [4, 6]: 2 objects, 2 samples each
  hw = (32, 32)
  some = [7 if mode == 'official' else 6, -1, 12, -1]
  for stop_at, steps in ((some, 16), ([6, 4, 10, 2], 11)):
    stopped, sampled = (_segmentation_sample(t, prompt, jnp.asarray(stop_at, jnp.int32))
                        for t in (task, free))
    assert int(sampled.position) == 16 and int(sampled.cache) == 5 + 16
    assert int(stopped.position) == steps and int(stopped.cache) == 5 + steps
    tokens, free_tokens = np.asarray(stopped.tokens), np.asarray(sampled.tokens)
    for row, end in enumerate(stop_at):
      if end < 0:  # never stopped: the same draws
        assert (tokens[row] != PAD).all()
        np.testing.assert_array_equal(tokens[row], free_tokens[row])
        continue
      assert list(tokens[row]).index(PAD) == end
      np.testing.assert_array_equal(tokens[row, :end + 1], free_tokens[row, :end + 1])
      assert (tokens[row, end:] == PAD).all() and (free_tokens[row, end + 1:] != PAD).all()
      assert (np.asarray(stopped.token_probs)[row, end + 1:] == 0).all()
    points = [np.asarray(task.outputs(s.tokens, s.token_probs, s.task_state))
              for s in (stopped, sampled)]
    for samples in (1, 2):
      masks = [segmentation.instance_masks(p, hw, hw, hw, num_samples=samples)
               for p in points]
      assert len(masks[0]) == 4 // samples and any(m.any() for m in masks[0])
      for a, b in zip(*masks, strict=True):
        np.testing.assert_array_equal(a, b)


def test_keypoint_task_redraws_the_invisible_token_as_the_official_eval():
  """41 is the most likely token everywhere (0.6, then the target 0.3): with the official
  settings (top_p 0.1: only the top token), the model reads the drawn 41 but the output
  is the redraw without it (the target, probability 0.3 / 0.4), as the official eval's
  `eval_suppress_invisible_token`; 'grammar' masks 41 before the draw."""
  from pix2seq_jax.tasks import keypoints
  target = np.arange(34) * 20 + FEW.coord_offset + 5  # [34]
  boxes = jnp.asarray([[0.2, 0.2, 0.6, 0.8], [0.1, 0.1, 0.3, 0.3]])
  task = keypoints.KeypointTask(FEW)
  prompt = task.prompts(boxes, jnp.asarray([1, 2]))  # [2, 6]: a person, a bicycle

  def logits_fn(last, position):
    want = jnp.asarray(target)[jnp.clip(position - 5, 0, 33)]
    logits = jnp.full((2, FEW.size), -1e9).at[:, FEW.coord_offset].set(jnp.log(0.1))
    return logits.at[:, want].set(jnp.log(0.3)).at[:, INVISIBLE].set(jnp.log(0.6))

  assert task.sampling() == dict(temperature=1.0, top_k=0, top_p=0.1, mode='official')
  assert task.suppress_tokens == (INVISIBLE,)
  state, seen = _recorded_sample(logits_fn, task, prompt, task.length, **task.sampling())
  np.testing.assert_array_equal(state.tokens, np.stack([target] * 2))
  assert [t[0] for _, t in seen[6:]] == [INVISIBLE] * 33  # the model read the 41s
  np.testing.assert_allclose(state.token_probs, 0.75, rtol=1e-5)
  out = task.outputs(state.tokens, state.token_probs, state.task_state)
  np.testing.assert_allclose(out.points_score, [0.75, 0.75], rtol=1e-5)
  np.testing.assert_allclose(out.points, np.stack([(target - 1000) / np.float32(999)] * 2),
                             rtol=1e-6)
  scores = keypoints.combine_scores(out.points_score, np.array([0.9, 0.9]), np.array([1, 2]))
  np.testing.assert_allclose(scores, [0.75, 0.0], rtol=1e-5)
  # Host: [17, 3] (x, y, v) in original pixels (canvas 640 holding a 320x480 image).
  kps = keypoints.decode_keypoints(np.asarray(out.tokens), np.asarray(boxes), (640, 640),
                                   (320, 480), (320, 480))
  assert kps.shape == (2, 17, 3) and (kps[..., 2] == 1).all()
  np.testing.assert_allclose(kps[0, 0, :2], [(25 - 0) / 999 * 640 / 480 * 480,
                                             5 / 999 * 640], rtol=1e-5)

  grammar, seen = _recorded_sample(logits_fn, keypoints.KeypointTask(FEW, mode='grammar'),
                                   prompt, 34, temperature=1.0, top_p=0.1, mode='grammar')
  np.testing.assert_array_equal(grammar.tokens, state.tokens)
  assert [t[0] for _, t in seen[6:]] == list(target[:33])  # it read what it emitted
  kept = keypoints.KeypointTask(FEW, suppress_invisible=False)
  state, _ = _recorded_sample(logits_fn, kept, prompt, 34, **kept.sampling())
  assert (np.asarray(state.tokens) == INVISIBLE).all()
  kps = keypoints.decode_keypoints(np.asarray(state.tokens), np.asarray(boxes), (640, 640),
                                   (640, 640), (640, 640))
  np.testing.assert_allclose(kps[0, :, :2], [[0.5 * 640, 0.4 * 640]] * 17, rtol=1e-6)
  # No stop token in either mode: rows that draw padding still run all 34 positions.
  for mode in ('official', 'grammar'):
    assert task_lib.stop_tokens(keypoints.KeypointTask(FEW, mode=mode), mode) == ()
  padding_first = lambda last, position: logits_fn(last, position).at[:, PAD].set(0.0)
  state = _sample(padding_first, 2, task, length=34, prompt=prompt, **task.sampling())
  assert int(state.position) == 34 == int(state.cache) - 5
  assert (np.asarray(state.tokens) == PAD).all()


def test_a_prompt_fills_the_cache_as_teacher_forcing():
  """A tiny random model: after a 6-token prompt, every response position's logits equal
  one teacher-forced forward over prompt + response (cached in blocks of 8, which grow
  by the prompt's offset, and recomputed); 2 images with 2 objects each (4 rows)."""
  from flax import nnx

  from pix2seq_jax.models import pix2seq, variants
  from pix2seq_jax.tasks import keypoints
  model = pix2seq.Pix2Seq(variants.get_spec('vit_nano'), FEW.size, 40, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  task = keypoints.KeypointTask(FEW, mode='grammar')
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
  boxes = jax.random.uniform(jax.random.key(2), (2, 2, 4))
  prompt = task.prompts(boxes, jnp.asarray([[1, 1], [1, 2]]))  # [4, 6]

  @jax.jit
  def run(params, images, prompt):
    model = nnx.merge(graphdef, params)
    states = [decoding.decode(model, images, task, length=34, rng=jax.random.key(3),
                              return_logits=True, prompt=prompt, step=step, prefix_block=8,
                              **dict(task.sampling(), temperature=0.0))
              for step in ('cached', 'recompute')]
    seq = jnp.concatenate([prompt, states[0].tokens[:, :-1]], axis=1)  # [4, 39]
    forced = model(jnp.repeat(images, 2, axis=0), seq, train=False)[:, 5:]  # [4, 34, V]
    return states, forced

  (cached, recomputed), forced = run(params, images, prompt)
  assert int(cached.position) == 34
  np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
  for state in (cached, recomputed):
    np.testing.assert_allclose(state.logits, forced, atol=2e-5, rtol=2e-5)
  with pytest.raises(ValueError, match='40 positions'):
    decoding.decode(model, images, task, length=36, prompt=prompt)
