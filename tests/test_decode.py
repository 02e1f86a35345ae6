"""Decoding: cached == recompute, sampling filters, the grammar, early exit and scores.

Most tests drive `decoding.sample` with fake logits functions whose output is known; the
cache of those fakes counts the loop's iterations.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pix2seq_jax.inference import decoding, detections
from pix2seq_jax.models import build
from pix2seq_jax.tasks import detection
from pix2seq_jax.tasks import vocab as vocab_lib
from tests.tiny import tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)
LENGTH = vocab_lib.sequence_length(8)
EOS, NA, C0 = vocab_lib.EOS, vocab_lib.NOISE_CLASS, vocab_lib.CLASS_OFFSET


def coord(b):
  return VOCAB.coord_offset + b


def _model(shapes_dir, seed=0):
  return build.build_model(tiny_config(shapes_dir), VOCAB, nnx.Rngs(seed))


def _run(model, images, **kwargs):
  graphdef, state = nnx.split(model)

  @jax.jit
  def fn(state, images):
    return decoding.decode(nnx.merge(graphdef, state), images, VOCAB, length=LENGTH, **kwargs)

  return fn(state, images)


def _sample(logits_fn, batch, length=LENGTH, **kwargs):
  """Runs the loop with `logits_fn(position) -> [B, V]`; cache counts the iterations."""
  fn = lambda last, position, calls: (logits_fn(last, position), calls + 1)
  kwargs.setdefault('rng', jax.random.key(0))
  return jax.jit(lambda: decoding.sample(fn, jnp.int32(0), batch, VOCAB, length=length,
                                       **kwargs))()


def _assert_parses(tokens):
  """Whole objects, then one EOS at an object boundary, then padding; valid boxes."""
  end = np.flatnonzero(tokens == EOS)
  assert end.size == 1 and end[0] % vocab_lib.TOKENS_PER_OBJECT == 0
  body = tokens[:end[0]].reshape(-1, vocab_lib.TOKENS_PER_OBJECT)
  assert VOCAB.is_coord(body[:, :4]).all()
  assert (VOCAB.is_class(body[:, 4]) | (body[:, 4] == NA)).all()
  assert (body[:, 2] >= body[:, 0]).all() and (body[:, 3] >= body[:, 1]).all()
  assert (tokens[end[0] + 1:] == vocab_lib.PADDING).all()
  return body


def test_cached_equals_recompute_tokens_logits_and_probabilities(shapes_dir):
  model = _model(shapes_dir)
  images = jax.random.uniform(jax.random.key(1), (3, 64, 64, 3))
  cached = _run(model, images, step='cached', return_logits=True)
  full = _run(model, images, step='recompute', return_logits=True)
  np.testing.assert_array_equal(cached.tokens, full.tokens)
  steps = int(cached.position)
  assert steps == int(full.position) and steps > 5
  np.testing.assert_allclose(cached.logits[:, :steps], full.logits[:, :steps], atol=1e-5,
                             rtol=1e-5)
  np.testing.assert_allclose(cached.token_probs, full.token_probs, atol=1e-5)
  np.testing.assert_allclose(cached.task_state.class_probs, full.task_state.class_probs, atol=1e-5)


def test_step_weights_equal_the_projections_and_the_embedding_they_replace(shapes_dir):
  """The step's fused q/k/v product and transposed output embedding (StepWeights) give
  what the separate projections and the [V, D] embedding give."""
  decoder = _model(shapes_dir).decoder
  dim = decoder.embed.features
  x = jax.random.normal(jax.random.key(1), (3, 1, dim))
  memory = jax.random.normal(jax.random.key(2), (3, 5, dim))
  weights = decoder.step_weights(memory)
  for layer, (kernel, bias) in zip(decoder.layers, weights.self_qkv):
    attn = layer.self_attn
    fused = x @ kernel + bias  # [3, 1, 3D]
    for part, got in zip((attn.query, attn.key, attn.value), jnp.split(fused, 3, axis=-1)):
      np.testing.assert_allclose(got, part(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(decoder._logits(x, weights.output_kernel), decoder._logits(x),
                             rtol=1e-5, atol=1e-5)
  for (k, v), layer in zip(weights.memory_kv, decoder.layers):
    want_k, want_v = layer.cross_attn.project_kv(memory)
    np.testing.assert_array_equal(k, want_k)
    np.testing.assert_array_equal(v, want_v)


def test_the_cache_grows_by_blocks_and_equals_one_block_and_recompute(shapes_dir):
  """Attention over the filled prefix in blocks of 8 (6 loops for 41 positions) gives the
  tokens and logits of one loop over the whole cache and of full recomputation."""
  model = _model(shapes_dir)
  model.decoder.output_bias[...] = model.decoder.output_bias[...].at[EOS].set(-1e9)
  images = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3))
  blocked = _run(model, images, prefix_block=8, return_logits=True)
  assert int(blocked.position) == LENGTH  # every block ran
  for other in (_run(model, images, prefix_block=0, return_logits=True),
                _run(model, images, step='recompute', return_logits=True)):
    np.testing.assert_array_equal(blocked.tokens, other.tokens)
    np.testing.assert_allclose(blocked.logits, other.logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(blocked.task_state.class_probs, other.task_state.class_probs,
                               atol=1e-5)
  assert [c['k'].shape[1] for c in model.decoder.grow_cache(
      model.decoder.init_cache(2, 8), 16)] == [16] * len(model.decoder.layers)
  with pytest.raises(ValueError, match='must increase'):
    decoding.sample(lambda *a: None, None, 1, VOCAB, length=LENGTH, rng=jax.random.key(0),
                    block_ends=(16, 8))


@pytest.mark.xla_default
@pytest.mark.parametrize('batch,prefix_block', [(1, 0), (2, 0), (2, 8)])
def test_decode_loop_updates_the_cache_in_place(shapes_dir, batch, prefix_block):
  """The compiled loops never copy a self-attention cache (nor the memory's keys/values).

  With keys/values laid out [B, L, H, K], XLA copied every layer's cache at every step
  (at batch 1 through a reshape before the matmul): whole-cache traffic per token.
  """
  model = _model(shapes_dir)
  graphdef, state = nnx.split(model)
  images = jnp.zeros((batch, 64, 64, 3))
  fn = jax.jit(lambda state, images: decoding.decode(
      nnx.merge(graphdef, state), images, VOCAB, length=LENGTH,
      prefix_block=prefix_block).tokens)
  hlo = fn.lower(state, images).compile().as_text()
  rows = batch * model.decoder.heads
  head_dim = model.decoder.embed.features // model.decoder.heads
  copies = []  # (shape, computation) of [B*H, n, K] copies outside the entry computation
  for computation in re.split(r'\n(?=\S)', hlo):  # each starts unindented
    if computation.startswith('ENTRY'):
      continue  # each loop's initial state is made there once
    for dims in re.findall(r'= f32\[([\d,]+)\]\{[\d,]+\} copy\(', computation):
      shape = [int(d) for d in dims.split(',')]
      if len(shape) == 3 and shape[0] == rows and shape[2] == head_dim and shape[1] > 1:
        copies.append((shape, computation.split('\n')[0][:80]))
  assert re.search(rf'f32\[{rows},{LENGTH if not prefix_block else 8},', hlo)  # a cache
  assert not copies, copies


def test_model_samples_always_parse(shapes_dir):
  model = _model(shapes_dir)
  images = jax.random.uniform(jax.random.key(2), (4, 64, 64, 3))
  state = _run(model, images, temperature=1.0, top_p=0.9, rng=jax.random.key(3))
  for tokens in np.asarray(state.tokens):
    body = _assert_parses(tokens)
    parsed = detections.parse_tokens(tokens, VOCAB)
    assert len(parsed.labels) == (body[:, 4] != NA).sum()


def test_sequences_sampled_from_random_logits_all_parse():
  random_logits = lambda last, position: 3.0 * jax.random.normal(
      jax.random.fold_in(jax.random.key(7), position), (64, VOCAB.size))
  for kwargs in ({'temperature': 1.0}, {'temperature': 2.0, 'top_k': 50},
                 {'temperature': 1.0, 'top_p': 0.4}, {}):
    state = _sample(random_logits, 64, **kwargs)
    for tokens in np.asarray(state.tokens):
      _assert_parses(tokens)


def test_known_logits_give_the_known_sequence_and_scores():
  # Two objects then EOS; every position offers its target with probability 0.7.
  target = [coord(10), coord(20), coord(30), coord(40), C0 + 2,
            coord(5), coord(6), coord(7), coord(8), C0 + 0, EOS]

  def logits_fn(last, position):
    want = jnp.asarray(target + [EOS] * (LENGTH - len(target)))[position]
    runner_up = jnp.where(position % 5 == 4, NA, VOCAB.size - 1)  # a legal alternative
    logits = jnp.full((2, VOCAB.size), -1e9).at[:, runner_up].set(jnp.log(0.3))
    return logits.at[:, want].set(jnp.log(0.7))

  state = _sample(logits_fn, 2)
  expected = np.full(LENGTH, vocab_lib.PADDING)
  expected[:len(target)] = target
  np.testing.assert_array_equal(state.tokens, np.stack([expected] * 2))
  assert int(state.position) == len(target) == int(state.cache)  # stopped after EOS
  np.testing.assert_allclose(state.task_state.class_probs[0, [4, 9]], [0.7, 0.7], rtol=1e-5)
  tokens, scores = decoding.detection_outputs(state, VOCAB, 'class')
  found = detections.parse_tokens(np.asarray(tokens[0]), VOCAB, np.asarray(scores[0]))
  np.testing.assert_array_equal(found.labels, [2, 0])
  np.testing.assert_allclose(found.scores, [0.7, 0.7], rtol=1e-5)
  np.testing.assert_allclose(found.boxes[0], VOCAB.bin_to_coord(np.array([10, 20, 30, 40])))
  _, scores = decoding.detection_outputs(state, VOCAB, 'class_x_coords')
  np.testing.assert_allclose(scores[0, [4, 9]], [0.7 ** 5] * 2, rtol=1e-4)


def test_class_is_the_best_real_class_and_na_objects_are_kept():
  # Class slot: "n/a" 0.5, class 3 0.3, class 1 0.2. Greedy emits "n/a" for object 1;
  # object 2's slot prefers class 3 over "n/a".
  def logits_fn(last, position):
    logits = jnp.full((1, VOCAB.size), -1e9).at[:, coord(9)].set(0.0).at[:, EOS].set(
        jnp.where(position == 10, 1e3, -1e9))
    na = jnp.where(position == 4, jnp.log(0.5), jnp.log(0.1))
    return logits.at[:, NA].set(na).at[:, C0 + 3].set(jnp.log(0.3)).at[:, C0 + 1].set(
        jnp.log(0.2))

  state = _sample(logits_fn, 1)
  np.testing.assert_array_equal(state.tokens[0, [4, 9, 10]], [NA, C0 + 3, EOS])
  tokens, scores = decoding.detection_outputs(state, VOCAB)
  found = detections.parse_tokens(np.asarray(tokens[0]), VOCAB, np.asarray(scores[0]))
  # Both objects report class 3; the "n/a" one with its (lower) probability.
  np.testing.assert_array_equal(found.labels, [3, 3])
  np.testing.assert_allclose(found.scores, [0.3, 0.3 / 0.6], rtol=1e-5)


def test_grammar_orders_corners():
  # The model wants ymax and xmax below ymin and xmin: the grammar lifts them to >=.
  def logits_fn(last, position):
    want = jnp.asarray([coord(40), coord(50), coord(3), coord(4), C0])[position % 5]
    return jnp.zeros((1, VOCAB.size)).at[:, want].set(10.0).at[:, EOS].set(
        jnp.where(position == 5, 1e3, -1e9))

  state = _sample(logits_fn, 1)
  np.testing.assert_array_equal(state.tokens[0, :6], [coord(40), coord(50), coord(40),
                                                      coord(50), C0, EOS])


def test_max_objects_forces_eos_and_early_exit_stops_the_loop():
  never_eos = lambda last, position: jnp.zeros((3, VOCAB.size)).at[:, EOS].set(-1e9)
  length = vocab_lib.sequence_length(2)
  state = _sample(never_eos, 3, length=length, temperature=1.0)
  assert int(state.cache) == length
  for tokens in np.asarray(state.tokens):
    assert len(_assert_parses(tokens)) == 2

  # Row r ends after r objects: the loop runs until the longest row ends, no further.
  def eos_after_rows(last, position):
    ends = 5 * jnp.arange(3)[:, None]  # [B, 1]
    is_eos = jnp.arange(VOCAB.size) == EOS
    return jnp.where(is_eos, jnp.where(position == ends, 1e3, -1e9), 0.0)

  state = _sample(eos_after_rows, 3)
  assert int(state.cache) == int(state.position) == 11
  assert [list(t).index(EOS) for t in np.asarray(state.tokens)] == [0, 5, 10]


def test_model_stops_when_every_sequence_has_ended(shapes_dir):
  model = _model(shapes_dir)
  bias = np.zeros(VOCAB.size, np.float32)
  bias[EOS] = 1e4  # EOS wins wherever the grammar allows it: at position 0
  model.decoder.output_bias[...] = jnp.asarray(bias)
  state = _run(model, jnp.zeros((2, 64, 64, 3)))
  assert int(state.position) == 1
  np.testing.assert_array_equal(state.tokens[:, 0], EOS)
  assert (np.asarray(state.tokens)[:, 1:] == vocab_lib.PADDING).all()


@pytest.mark.parametrize('kwargs', [{'top_k': 1}, {'top_p': 0.0}, {'top_p': 1e-6}])
def test_top_k_one_and_top_p_zero_equal_greedy(kwargs):
  random_logits = lambda last, position: jax.random.normal(
      jax.random.fold_in(jax.random.key(1), position), (16, VOCAB.size))
  greedy = _sample(random_logits, 16)
  sampled = _sample(random_logits, 16, temperature=1.0, rng=jax.random.key(5), **kwargs)
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)


def test_sampling_is_deterministic_given_the_key():
  random_logits = lambda last, position: jax.random.normal(
      jax.random.fold_in(jax.random.key(1), position), (8, VOCAB.size))
  a = _sample(random_logits, 8, temperature=1.0, rng=jax.random.key(3))
  b = _sample(random_logits, 8, temperature=1.0, rng=jax.random.key(3))
  c = _sample(random_logits, 8, temperature=1.0, rng=jax.random.key(4))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def test_filters_keep_the_nucleus_and_the_top_k():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
  kept = lambda **kw: np.asarray(decoding.filter_logits(logits, **kw)[0] > decoding.NEG_INF)
  np.testing.assert_array_equal(kept(top_p=0.5), [0, 1, 0, 0])  # 0.5 reaches 0.5
  np.testing.assert_array_equal(kept(top_p=0.7), [0, 1, 0, 1])
  np.testing.assert_array_equal(kept(top_p=0.81), [0, 1, 1, 1])
  np.testing.assert_array_equal(kept(top_k=2), [0, 1, 0, 1])
  np.testing.assert_array_equal(kept(top_k=3, top_p=0.7), [0, 1, 0, 1])
  # Sampled frequencies follow the renormalised nucleus: 0.5/0.8 and 0.3/0.8.
  draws = decoding.choose_tokens(jnp.tile(logits, (20000, 1)), jax.random.key(0),
                               temperature=1.0, top_k=0, top_p=0.7)
  freq = np.bincount(np.asarray(draws), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0, 0.625, 0, 0.375], atol=0.015)


def test_grammar_mask_by_slot():
  tokens = jnp.full((1, LENGTH), vocab_lib.PADDING).at[0, :2].set(jnp.asarray([coord(7),
                                                                              coord(9)]))
  mask = lambda p: np.asarray(detection.grammar_mask(jnp.int32(p), tokens, VOCAB, LENGTH))[0]
  coords = np.zeros(VOCAB.size, bool)
  coords[VOCAB.coord_offset:] = True
  np.testing.assert_array_equal(mask(1), coords)
  above = lambda b: coords & (np.arange(VOCAB.size) >= coord(b))
  np.testing.assert_array_equal(mask(2), above(7))  # ymax >= ymin
  np.testing.assert_array_equal(mask(3), above(9))  # xmax >= xmin
  assert mask(0)[EOS] and mask(5)[EOS] and not mask(3)[EOS]
  assert mask(4)[NA] and mask(4)[C0] and not mask(4)[VOCAB.coord_offset]
  assert mask(LENGTH - 1).sum() == 1 and mask(LENGTH - 1)[EOS]


def test_the_official_nucleus_keeps_only_what_stays_within_top_p():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]))
  kept = lambda rule, p: np.asarray(decoding.filter_logits(logits, top_p=p, nucleus=rule)
                                    > decoding.NEG_INF / 2)
  # 'reach' takes the token that crosses top_p; 'official' (the official top_logits)
  # stops before it, but always keeps the most likely token.
  np.testing.assert_array_equal(kept('reach', 0.6), [[1, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(kept('official', 0.6), [[1, 0, 0], [0, 1, 0]])
  np.testing.assert_array_equal(kept('official', 0.8), [[1, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(kept('official', 0.4), [[1, 0, 0], [0, 1, 0]])


def test_official_mode_has_no_grammar_and_no_stop():
  """Logits that prefer EOS, then padding: grammar mode ends at once; official mode
  takes whatever is most likely at every one of the `length` positions."""
  def logits_fn(last, position):
    first = jnp.where(position == 0, EOS, vocab_lib.PADDING)
    return jnp.zeros((2, VOCAB.size)).at[:, first].set(5.0)

  grammar = _sample(logits_fn, 2)
  assert int(grammar.cache) == 1 and int(grammar.position) == 1
  official = _sample(logits_fn, 2, mode='official')
  assert int(official.cache) == LENGTH and int(official.position) == LENGTH
  np.testing.assert_array_equal(official.tokens[:, 0], EOS)
  np.testing.assert_array_equal(official.tokens[:, 1:], vocab_lib.PADDING)
  # Every class slot gets the best real class and its probability under the full softmax.
  tokens, scores = decoding.detection_outputs(official, VOCAB, mode='official')
  assert (np.asarray(tokens)[:, 4::5] == C0).all()
  probability = 1.0 / (VOCAB.size - 1 + np.exp(5.0))
  np.testing.assert_allclose(np.asarray(scores)[:, 4::5], probability, rtol=1e-5)


def test_official_parsing_keeps_every_slot_as_decoded():
  bins = VOCAB.num_bins - 1
  tokens = np.array([coord(40), coord(10), coord(20), coord(30), C0 + 2,  # reversed y
                     EOS, vocab_lib.PADDING, coord(63), coord(5), C0,  # non-coordinates
                     coord(1), coord(2), coord(3), coord(4), NA,  # no class: dropped
                     coord(1)])
  found = detections.parse_official(tokens, VOCAB, np.arange(16, dtype=np.float32))
  np.testing.assert_allclose(found.boxes, [[40 / bins, 10 / bins, 20 / bins, 30 / bins],
                                           [0.0, 0.0, 1.0, 5 / bins]], rtol=1e-6)
  np.testing.assert_array_equal(found.labels, [2, 0])
  np.testing.assert_array_equal(found.scores, [4, 9])
  grammar = detections.parse_tokens(tokens, VOCAB, np.arange(16, dtype=np.float32))
  assert len(grammar.labels) == 1 and grammar.boxes[0, 0] < grammar.boxes[0, 2]  # swapped
