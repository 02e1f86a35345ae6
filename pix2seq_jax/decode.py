"""Autoregressive decoding of token sequences in one jit-compiled `lax.while_loop`.

The image is encoded once and every decoder layer's cross-attention keys/values are
projected once; self-attention keys/values live in an explicit cache pytree that the
loop carries. A per-slot grammar masks the logits so that every sequence parses:
slot 0 of an object takes a coordinate or EOS, slots 1-3 a coordinate, slot 4 a class
or "n/a"; the last position can only be EOS. The loop stops as soon as every
sequence in the batch has emitted EOS. `temperature` 0 is greedy; otherwise tokens
are sampled from softmax(logits / temperature).

For tests and benchmarks, `step='recompute'` runs the full decoder over the whole
(causally masked) prefix at every step instead of using the cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.models.pix2seq import Pix2Seq

NEG_INF = -1e30


@struct.dataclass
class DecodeState:
  position: jax.Array  # [] int32: the position being generated
  tokens: jax.Array  # [B, L] int32: generated tokens, PADDING where not yet generated
  scores: jax.Array  # [B, L] float32: probability of each chosen token (grammar-masked)
  done: jax.Array  # [B] bool: the sequence has emitted EOS
  cache: Any  # per-layer self-attention cache (None when recomputing)
  rng: jax.Array
  logits: jax.Array | None = None  # [B, L, V] float32, only when asked for


def grammar_mask(position: jax.Array, vocab: vocab_lib.Vocabulary, length: int) -> jax.Array:
  """[V] bool: the tokens allowed at `position` of a response sequence of `length`."""
  ids = jnp.arange(vocab.size)
  slot = position % vocab_lib.TOKENS_PER_OBJECT
  coord = (ids >= vocab.coord_offset) & (ids < vocab.size)
  label = ((ids >= vocab_lib.CLASS_OFFSET) & (ids < vocab.coord_offset)) | (
      ids == vocab_lib.NOISE_CLASS)
  eos = ids == vocab_lib.EOS
  allowed = jnp.where(slot == 0, coord | eos, jnp.where(slot == 4, label, coord))
  return jnp.where(position == length - 1, eos, allowed)


def decode(model: Pix2Seq, images: jax.Array, vocab: vocab_lib.Vocabulary, *,
           length: int, temperature: float = 0.0, rng: jax.Array | None = None,
           step: str = 'cached', return_logits: bool = False) -> DecodeState:
  """Generates [B, length] response tokens for images [B, S, S, 3] (call inside jit)."""
  if step not in ('cached', 'recompute'):
    raise ValueError(f'step must be "cached" or "recompute", got {step!r}.')
  batch = images.shape[0]
  memory = model.encode(images, train=False)  # [B, N, D]
  memory_kv = model.decoder.memory_kv(memory)

  def next_logits(state: DecodeState, last: jax.Array) -> tuple[jax.Array, Any]:
    if step == 'cached':
      return model.decoder.step(last, state.position, state.cache, memory_kv)
    prefix = jnp.concatenate(  # [B, length]: START + generated tokens; later ones masked
        [jnp.full((batch, 1), vocab_lib.START, jnp.int32), state.tokens[:, :-1]], axis=1)
    full = model.decoder(prefix, memory)
    return jax.lax.dynamic_index_in_dim(full, state.position, axis=1, keepdims=False), None

  def body(state: DecodeState) -> DecodeState:
    last = jnp.where(state.position == 0, vocab_lib.START,
                     jax.lax.dynamic_index_in_dim(state.tokens, state.position - 1, axis=1,
                                                  keepdims=False))
    logits, cache = next_logits(state, last)  # [B, V]
    logits = logits.astype(jnp.float32)
    masked = jnp.where(grammar_mask(state.position, vocab, length), logits, NEG_INF)
    rng, sample_rng = jax.random.split(state.rng)
    if temperature > 0:
      token = jax.random.categorical(sample_rng, masked / temperature, axis=-1)
    else:
      token = jnp.argmax(masked, axis=-1)
    token = jnp.where(state.done, vocab_lib.PADDING, token).astype(jnp.int32)
    prob = jnp.take_along_axis(jax.nn.softmax(masked, axis=-1), token[:, None], axis=1)[:, 0]
    new_logits = state.logits
    if return_logits:
      new_logits = jax.lax.dynamic_update_slice_in_dim(
          state.logits, logits[:, None], state.position, axis=1)
    return DecodeState(
        position=state.position + 1,
        tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None],
                                                   state.position, axis=1),
        scores=jax.lax.dynamic_update_slice_in_dim(
            state.scores, jnp.where(state.done, 0.0, prob)[:, None], state.position, axis=1),
        done=state.done | (token == vocab_lib.EOS),
        cache=cache, rng=rng, logits=new_logits)

  def cond(state: DecodeState) -> jax.Array:
    return (state.position < length) & ~jnp.all(state.done)

  init = DecodeState(
      position=jnp.zeros((), jnp.int32),
      tokens=jnp.full((batch, length), vocab_lib.PADDING, jnp.int32),
      scores=jnp.zeros((batch, length), jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=model.decoder.init_cache(batch, length, memory.dtype) if step == 'cached' else None,
      rng=jax.random.key(0) if rng is None else rng,
      logits=jnp.zeros((batch, length, vocab.size), jnp.float32) if return_logits else None)
  return jax.lax.while_loop(cond, body, init)
