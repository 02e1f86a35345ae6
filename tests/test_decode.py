"""Cached decoding equals full-prefix recomputation; the grammar makes every sequence parse."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pix2seq_jax import decode, detections, train_step
from pix2seq_jax import vocab as vocab_lib
from tests.conftest import tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)
LENGTH = vocab_lib.sequence_length(8)


def _model(shapes_dir, seed=0):
  return train_step.build_model(tiny_config(shapes_dir), VOCAB, nnx.Rngs(seed))


def _run(model, images, **kwargs):
  graphdef, state = nnx.split(model)

  @jax.jit
  def fn(state, images):
    return decode.decode(nnx.merge(graphdef, state), images, VOCAB, length=LENGTH, **kwargs)

  return fn(state, images)


def test_cached_equals_recompute_tokens_and_logits(shapes_dir):
  model = _model(shapes_dir)
  images = jax.random.uniform(jax.random.key(1), (3, 64, 64, 3))
  cached = _run(model, images, step='cached', return_logits=True)
  full = _run(model, images, step='recompute', return_logits=True)
  np.testing.assert_array_equal(cached.tokens, full.tokens)
  steps = int(cached.position)
  assert steps == int(full.position) and steps > 5
  np.testing.assert_allclose(cached.logits[:, :steps], full.logits[:, :steps], atol=1e-5,
                             rtol=1e-5)
  np.testing.assert_allclose(cached.scores, full.scores, atol=1e-5)


def test_every_decoded_sequence_parses_into_whole_objects(shapes_dir):
  for seed in range(3):
    model = _model(shapes_dir, seed)
    images = jax.random.uniform(jax.random.key(seed), (4, 64, 64, 3))
    state = _run(model, images, temperature=1.0, rng=jax.random.key(seed))
    for tokens in np.asarray(state.tokens):
      end = np.flatnonzero(tokens == vocab_lib.EOS)
      assert end.size == 1 and end[0] % vocab_lib.TOKENS_PER_OBJECT == 0
      body = tokens[:end[0]].reshape(-1, vocab_lib.TOKENS_PER_OBJECT)
      assert VOCAB.is_coord(body[:, :4]).all()
      assert (VOCAB.is_class(body[:, 4]) | (body[:, 4] == vocab_lib.NOISE_CLASS)).all()
      assert (tokens[end[0] + 1:] == vocab_lib.PADDING).all()
      parsed = detections.parse_tokens(tokens, VOCAB)
      assert len(parsed.labels) == (body[:, 4] != vocab_lib.NOISE_CLASS).sum()


def test_decoding_stops_when_every_sequence_has_ended(shapes_dir):
  model = _model(shapes_dir)
  bias = np.zeros(VOCAB.size, np.float32)
  bias[vocab_lib.EOS] = 1e4  # EOS wins wherever the grammar allows it: at position 0
  model.decoder.output_bias[...] = jnp.asarray(bias)
  state = _run(model, jnp.zeros((2, 64, 64, 3)))
  assert int(state.position) == 1
  np.testing.assert_array_equal(state.tokens[:, 0], vocab_lib.EOS)
  assert (np.asarray(state.tokens)[:, 1:] == vocab_lib.PADDING).all()


def test_grammar_mask_by_slot():
  mask = lambda p: np.asarray(decode.grammar_mask(jnp.int32(p), VOCAB, LENGTH))
  coords = np.zeros(VOCAB.size, bool)
  coords[VOCAB.coord_offset:] = True
  np.testing.assert_array_equal(mask(1), coords)
  assert mask(0)[vocab_lib.EOS] and mask(5)[vocab_lib.EOS] and not mask(3)[vocab_lib.EOS]
  assert mask(4)[vocab_lib.NOISE_CLASS] and mask(4)[vocab_lib.CLASS_OFFSET]
  assert not mask(4)[VOCAB.coord_offset]
  assert mask(LENGTH - 1).sum() == 1 and mask(LENGTH - 1)[vocab_lib.EOS]
