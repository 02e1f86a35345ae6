"""Autoregressive decoding of token sequences: `lax.while_loop`s in one jitted program.

The image is encoded once, and what every step reads besides the parameters is computed
once before the loop (`Decoder.step_weights`: each layer's cross-attention keys/values,
its self-attention projections side by side, the output embedding transposed);
self-attention keys/values live in an explicit cache pytree that the loop carries in a
small `DecodeState`. The core loop, `sample`, only sees a
`logits_fn(last_token, position, cache) -> (logits, cache)`, so tests can drive it with
a fake model whose output is known.

A per-row grammar masks the logits so that every sequence parses: slot 0 of an object
takes a coordinate or EOS, slots 1 and 3 a coordinate, slot 2 (ymax) a coordinate not
below the object's ymin, slot 3 (xmax) one not below its xmin, slot 4 a class or "n/a";
the last position (after `max_objects` objects) can only be EOS. The loop stops as soon
as every row has emitted EOS.

Sampling: `temperature` 0 is greedy; otherwise tokens are drawn from
softmax(logits / temperature), restricted to the `top_k` most likely tokens (0: all)
and to the smallest set whose probability reaches `top_p` (nucleus; 1: all).

Scores (`detection_outputs`): an object's class is the most likely real class at its
class slot and its score that class's probability under the grammar-masked softmax
('class', as the official code), optionally times the probabilities of its four
coordinate tokens ('class_x_coords'). Objects whose class slot emitted "n/a" are kept
the same way, as the official code does: a model trained with noise objects says "n/a"
where it is unsure, and its best real class then comes with a low score.

`mode='official'` reproduces the official Pix2Seq inference instead: no grammar and no
stop at EOS (all `length` tokens are sampled from the unmasked logits), the official
nucleus rule (keep the tokens whose cumulative probability, their own included, stays
within top_p, and always the most likely one), and every 5-token slot is an object whose
class is the most likely class token at its class position under the full softmax,
scored by that probability (`detections.parse_official`).

The cached loop attends only over the filled prefix, in blocks: the self-attention cache
starts `prefix_block` positions long and the loop runs once per block, the cache growing
by a block between runs, so position t reads about t rounded up to the block, not all
`length` positions (cached == recompute within float rounding; tests/test_decode.py).

For tests and benchmarks, `step='recompute'` runs the full decoder over the whole
(causally masked) prefix at every step instead of using the cache.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from pix2seq_jax.config.default import DECODE_MODES as MODES
from pix2seq_jax.config.default import SCORE_MODES
from pix2seq_jax.models.pix2seq import Pix2Seq
from pix2seq_jax.tasks import vocab as vocab_lib

NEG_INF = -1e30
_SLOTS = vocab_lib.TOKENS_PER_OBJECT
# Positions per block of the self-attention cache (see the module docstring); 0: one loop
# over a cache of the full length.
PREFIX_BLOCK = 64

# (last token [B], position [], cache) -> (logits [B, V], cache)
LogitsFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


@struct.dataclass
class DecodeState:
  position: jax.Array  # [] int32: the position being generated
  tokens: jax.Array  # [B, L] int32: emitted tokens, PADDING where not yet generated
  token_probs: jax.Array  # [B, L] float32: probability of each emitted token (grammar-masked)
  class_tokens: jax.Array  # [B, L] int32: best real class token at class slots, else PADDING
  class_probs: jax.Array  # [B, L] float32: its probability at class slots, else 0
  done: jax.Array  # [B] bool: the row has emitted EOS
  cache: Any  # the logits function's cache (per-layer self-attention K/V)
  rng: jax.Array
  logits: jax.Array | None = None  # [B, L, V] float32, only when asked for


def grammar_mask(position: jax.Array, tokens: jax.Array, vocab: vocab_lib.Vocabulary,
                 length: int) -> jax.Array:
  """[B, V] bool: the tokens each row may take at `position`, given its `tokens` [B, L]."""
  ids = jnp.arange(vocab.size)
  slot = position % _SLOTS
  # ymax (slot 2) and xmax (slot 3) may not fall below ymin / xmin, two tokens back.
  lower = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(position - 2, 0), axis=1,
                                       keepdims=True)  # [B, 1]
  lower = jnp.where((slot == 2) | (slot == 3), lower, vocab.coord_offset)
  coord = vocab.is_coord(ids) & (ids >= lower)  # [B, V]
  label = vocab.is_class(ids) | (ids == vocab.noise_class)
  eos = ids == vocab.eos
  allowed = jnp.where(slot == 0, coord | eos, jnp.where(slot == 4, label, coord))
  return jnp.where(position == length - 1, eos, allowed)


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0,
                  nucleus: str = 'reach') -> jax.Array:
  """Sets logits [B, V] outside the top-k / nucleus(top-p) set to NEG_INF.

  top_k 0 and top_p 1 keep everything; the most likely token is always kept, so
  top_k 1 or top_p 0 leave only the argmax. nucleus 'reach' keeps the smallest set whose
  probability reaches top_p (the token that crosses it included); 'official' keeps the
  tokens whose cumulative probability, their own included, is at most top_p (the
  official Pix2Seq's `top_logits`). Ties with the last kept logit are kept in both.
  """
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
    probs = jax.nn.softmax(ordered, axis=-1)
    mass = jnp.cumsum(probs, axis=-1)
    within = (mass - probs < top_p) if nucleus == 'reach' else (mass <= top_p)
    keep = within | (jnp.arange(logits.shape[-1]) == 0)
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def choose_tokens(logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int,
                  top_p: float, nucleus: str = 'reach') -> jax.Array:
  """[B, V] (grammar-masked) logits -> [B] tokens: greedy or sampled."""
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1)
  filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p, nucleus=nucleus)
  return jax.random.categorical(rng, filtered, axis=-1)


def sample(logits_fn: LogitsFn, cache: Any, batch: int, vocab: vocab_lib.Vocabulary, *,
           length: int, rng: jax.Array, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, return_logits: bool = False,
           mode: str = 'grammar', block_ends: Sequence[int] = (),
           grow_cache: Callable[[Any, int], Any] | None = None) -> DecodeState:
  """The decoding loop: [B, length] response tokens from `logits_fn`.

  With `block_ends` (increasing positions < length), the loop stops at each of them and
  `grow_cache(cache, next_end)` enlarges the cache before it goes on (the last block
  ends at `length`).
  """
  if mode not in MODES:
    raise ValueError(f'decode.mode must be one of {MODES}, got {mode!r}.')
  official = mode == 'official'
  real_class = vocab.is_class(jnp.arange(vocab.size))  # [V]

  def body(state: DecodeState) -> DecodeState:
    last = jnp.where(state.position == 0, vocab.start,
                     jax.lax.dynamic_index_in_dim(state.tokens, state.position - 1, axis=1,
                                                  keepdims=False))
    logits, cache = logits_fn(last, state.position, state.cache)
    logits = logits.astype(jnp.float32)  # [B, V]
    masked = logits if official else jnp.where(
        grammar_mask(state.position, state.tokens, vocab, length), logits, NEG_INF)
    rng, sample_rng = jax.random.split(state.rng)
    token = choose_tokens(masked, sample_rng, temperature=temperature, top_k=top_k,
                          top_p=top_p, nucleus='official' if official else 'reach')
    token = jnp.where(state.done, vocab.padding, token).astype(jnp.int32)
    probs = jax.nn.softmax(masked, axis=-1)  # [B, V]
    pick = lambda t: jnp.take_along_axis(probs, t[:, None], axis=1)[:, 0]
    is_class_slot = (state.position % _SLOTS == 4) & ~state.done
    best_class = jnp.argmax(jnp.where(real_class, masked, NEG_INF), axis=-1).astype(jnp.int32)
    write = lambda array, value: jax.lax.dynamic_update_slice_in_dim(
        array, value[:, None], state.position, axis=1)
    new_logits = state.logits
    if return_logits:
      new_logits = write(state.logits, logits)
    return DecodeState(
        position=state.position + 1,
        tokens=write(state.tokens, token),
        token_probs=write(state.token_probs, jnp.where(state.done, 0.0, pick(token))),
        class_tokens=write(state.class_tokens,
                           jnp.where(is_class_slot, best_class, vocab.padding)),
        class_probs=write(state.class_probs, jnp.where(is_class_slot, pick(best_class), 0.0)),
        done=state.done if official else state.done | (token == vocab.eos),
        cache=cache, rng=rng, logits=new_logits)

  def cond(end: int) -> Callable[[DecodeState], jax.Array]:
    return lambda state: (state.position < end) & ~jnp.all(state.done)

  init = DecodeState(
      position=jnp.zeros((), jnp.int32),
      tokens=jnp.full((batch, length), vocab.padding, jnp.int32),
      token_probs=jnp.zeros((batch, length), jnp.float32),
      class_tokens=jnp.full((batch, length), vocab.padding, jnp.int32),
      class_probs=jnp.zeros((batch, length), jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=cache, rng=rng,
      logits=jnp.zeros((batch, length, vocab.size), jnp.float32) if return_logits else None)
  ends = [*block_ends, length]
  if ends != sorted(set(ends)) or ends[0] < 1:
    raise ValueError(f'block_ends {list(block_ends)} must increase within (0, {length}).')
  state = init
  for index, end in enumerate(ends):
    if index:
      state = state.replace(cache=grow_cache(state.cache, end))
    state = jax.lax.while_loop(cond(end), body, state)
  return state


def decode(model: Pix2Seq, images: jax.Array, vocab: vocab_lib.Vocabulary, *,
           length: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           rng: jax.Array | None = None, step: str = 'cached',
           return_logits: bool = False, mode: str = 'grammar',
           prefix_block: int = PREFIX_BLOCK) -> DecodeState:
  """Generates [B, length] response tokens for images [B, H, W, 3] (call inside jit).

  `length` is `vocab.sequence_length(max_objects)` and at most the decoder's
  `max_seq_len`. `prefix_block`: positions per block of the cache (0: one block).
  """
  if step not in ('cached', 'recompute'):
    raise ValueError(f'step must be "cached" or "recompute", got {step!r}.')
  if length > model.decoder.max_seq_len:
    raise ValueError(f'Cannot decode {length} tokens: the decoder has '
                     f'{model.decoder.max_seq_len} positions.')
  batch = images.shape[0]
  memory = model.encode(images, train=False)  # [B, N, D]

  block_ends, grow_cache = (), None
  if step == 'cached':
    weights = model.decoder.step_weights(memory)
    if prefix_block > 0:
      block_ends = tuple(range(prefix_block, length, prefix_block))
      grow_cache = model.decoder.grow_cache
    cache = model.decoder.init_cache(batch, (*block_ends, length)[0], memory.dtype)

    def logits_fn(last, position, cache):
      return model.decoder.step(last, position, cache, weights)
  else:
    cache = jnp.full((batch, length), vocab.start, jnp.int32)  # the input prefix

    def logits_fn(last, position, prefix):
      prefix = jax.lax.dynamic_update_slice_in_dim(prefix, last[:, None], position, axis=1)
      full = model.decoder(prefix, memory)  # [B, length, V]; later positions are masked
      return jax.lax.dynamic_index_in_dim(full, position, axis=1, keepdims=False), prefix

  return sample(logits_fn, cache, batch, vocab, length=length,
                rng=jax.random.key(0) if rng is None else rng, temperature=temperature,
                top_k=top_k, top_p=top_p, return_logits=return_logits, mode=mode,
                block_ends=block_ends, grow_cache=grow_cache)


def detection_outputs(state: DecodeState, vocab: vocab_lib.Vocabulary,
                      score: str = 'class', mode: str = 'grammar') -> tuple[jax.Array, jax.Array]:
  """(tokens [B, L], scores [B, L]) for `detections.parse_tokens` / `parse_official`.

  At each class slot where a real class or "n/a" was emitted (official mode: at every
  class slot), the token becomes the most likely real class and the score that object's
  score; EOS and padding stay as emitted.
  """
  if score not in SCORE_MODES:
    raise ValueError(f'decode.score must be one of {SCORE_MODES}, got {score!r}.')
  tokens = state.tokens
  batch, length = tokens.shape
  if mode == 'official':
    label_slot = (jnp.arange(length) % _SLOTS == 4)[None]
  else:
    label_slot = vocab.is_class(tokens) | (tokens == vocab.noise_class)
  tokens = jnp.where(label_slot, state.class_tokens, tokens)
  objects = length // _SLOTS  # length is 5 * objects + 1
  per_object = state.token_probs[:, :objects * _SLOTS].reshape(batch, objects, _SLOTS)
  object_scores = state.class_probs[:, 4:objects * _SLOTS:_SLOTS]  # [B, objects]
  if score == 'class_x_coords':
    object_scores = object_scores * jnp.prod(per_object[:, :, :4], axis=-1)
  scores = jnp.zeros((batch, length), jnp.float32)
  return tokens, scores.at[:, 4:objects * _SLOTS:_SLOTS].set(object_scores)
