"""Autoregressive decoding of token sequences: `lax.while_loop`s in one jitted program.

The image is encoded once, and what every step reads besides the parameters is computed
once before the loop (`Decoder.step_weights`: each layer's cross-attention keys/values,
its self-attention projections side by side, the output embedding transposed);
self-attention keys/values live in an explicit cache pytree that the loop carries in a
small `DecodeState`. The core loop, `sample`, only sees a
`logits_fn(last_token, position, cache) -> (logits, cache)`, so tests can drive it with
a fake model whose output is known, and a task (`tasks/task.py`): the loop keeps the
tokens, their probabilities, the done flags and the cache, and leaves to the task's hooks
what the tokens mean: its constraint on the logits at each position (detection: a
grammar under which every sequence parses), its own per-row state (detection: the best
real class at each class slot and its probability) and its outputs (detection:
`DetectionTask.outputs`, the tokens and per-object scores its parsers read).
Functions that take a `Vocabulary` in place of a task decode detection
(`tasks/detection.py`). The loop stops as soon as every row has emitted the EOS token.

Sampling: `temperature` 0 is greedy; otherwise tokens are drawn from
softmax(logits / temperature), restricted to the `top_k` most likely tokens (0: all)
and to the smallest set whose probability reaches `top_p` (nucleus; 1: all).

`mode='official'` reproduces the official Pix2Seq inference instead: no stop at EOS (all
`length` tokens are sampled), the official nucleus rule (keep the tokens whose cumulative
probability, their own included, stays within top_p, and always the most likely one),
and, for detection, no grammar and every 5-token slot an object whose class is the most
likely class token at its class position under the full softmax, scored by that
probability (`detection.parse_official`).

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
from pix2seq_jax.models.pix2seq import Pix2Seq
from pix2seq_jax.tasks import detection
from pix2seq_jax.tasks import task as task_lib
from pix2seq_jax.tasks import vocab as vocab_lib

NEG_INF = task_lib.NEG_INF
# Positions per block of the self-attention cache (see the module docstring); 0: one loop
# over a cache of the full length.
PREFIX_BLOCK = 64
grammar_mask = detection.grammar_mask  # detection's constraint (tasks/detection.py)

# (last token [B], position [], cache) -> (logits [B, V], cache)
LogitsFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


@struct.dataclass
class DecodeState:
  position: jax.Array  # [] int32: the position being generated
  tokens: jax.Array  # [B, L] int32: emitted tokens, PADDING where not yet generated
  token_probs: jax.Array  # [B, L] float32: probability of each emitted token (constrained)
  done: jax.Array  # [B] bool: the row has emitted EOS
  cache: Any  # the logits function's cache (per-layer self-attention K/V)
  rng: jax.Array
  task_state: Any  # the task's per-row state (`Task.init_state`, `Task.update`)
  logits: jax.Array | None = None  # [B, L, V] float32, only when asked for

  @property
  def class_tokens(self) -> jax.Array:
    """[B, L] detection's best real class token at class slots (its task state)."""
    return self.task_state.class_tokens

  @property
  def class_probs(self) -> jax.Array:
    """[B, L] detection's best real class probability at class slots (its task state)."""
    return self.task_state.class_probs


def as_task(task: task_lib.Task | vocab_lib.Vocabulary, mode: str = 'grammar') -> task_lib.Task:
  """`task`, or for a vocabulary the detection task of `mode`."""
  if isinstance(task, vocab_lib.Vocabulary):
    return detection.DetectionTask(task, mode)
  return task


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


def sample(logits_fn: LogitsFn, cache: Any, batch: int,
           task: task_lib.Task | vocab_lib.Vocabulary, *, length: int, rng: jax.Array,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           return_logits: bool = False, mode: str = 'grammar', block_ends: Sequence[int] = (),
           grow_cache: Callable[[Any, int], Any] | None = None) -> DecodeState:
  """The decoding loop: [B, length] response tokens from `logits_fn` under `task`'s hooks.

  With `block_ends` (increasing positions < length), the loop stops at each of them and
  `grow_cache(cache, next_end)` enlarges the cache before it goes on (the last block
  ends at `length`).
  """
  if mode not in MODES:
    raise ValueError(f'decode.mode must be one of {MODES}, got {mode!r}.')
  official = mode == 'official'
  task = as_task(task, mode)
  vocab = task.vocab

  def body(state: DecodeState) -> DecodeState:
    last = jnp.where(state.position == 0, task.prompt,
                     jax.lax.dynamic_index_in_dim(state.tokens, state.position - 1, axis=1,
                                                  keepdims=False))
    logits, cache = logits_fn(last, state.position, state.cache)
    logits = logits.astype(jnp.float32)  # [B, V]
    allowed = task.allowed(state.position, state.tokens, state.task_state)  # [B, V] | None
    masked = logits if allowed is None else jnp.where(allowed, logits, NEG_INF)
    rng, sample_rng = jax.random.split(state.rng)
    token = choose_tokens(masked, sample_rng, temperature=temperature, top_k=top_k,
                          top_p=top_p, nucleus='official' if official else 'reach')
    token = jnp.where(state.done, vocab.padding, token).astype(jnp.int32)
    probs = jax.nn.softmax(masked, axis=-1)  # [B, V]
    token_prob = jnp.take_along_axis(probs, token[:, None], axis=1)[:, 0]  # [B]
    write = lambda array, value: jax.lax.dynamic_update_slice_in_dim(
        array, value[:, None], state.position, axis=1)
    new_logits = state.logits
    if return_logits:
      new_logits = write(state.logits, logits)
    return DecodeState(
        position=state.position + 1,
        tokens=write(state.tokens, token),
        token_probs=write(state.token_probs, jnp.where(state.done, 0.0, token_prob)),
        done=state.done if official else state.done | (token == vocab.eos),
        cache=cache, rng=rng,
        task_state=task.update(state.task_state, state.position, masked, probs, token,
                               state.done),
        logits=new_logits)

  def cond(end: int) -> Callable[[DecodeState], jax.Array]:
    return lambda state: (state.position < end) & ~jnp.all(state.done)

  init = DecodeState(
      position=jnp.zeros((), jnp.int32),
      tokens=jnp.full((batch, length), vocab.padding, jnp.int32),
      token_probs=jnp.zeros((batch, length), jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=cache, rng=rng, task_state=task.init_state(batch, length),
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


def decode(model: Pix2Seq, images: jax.Array, task: task_lib.Task | vocab_lib.Vocabulary, *,
           length: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           rng: jax.Array | None = None, step: str = 'cached',
           return_logits: bool = False, mode: str = 'grammar',
           prefix_block: int = PREFIX_BLOCK) -> DecodeState:
  """Generates [B, length] response tokens for images [B, H, W, 3] (call inside jit).

  `task`: the task's hooks, or a vocabulary for detection under `mode`. `length` is
  `vocab.sequence_length(max_objects)` for detection and at most the decoder's
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
    cache = jnp.full((batch, length), as_task(task, mode).prompt, jnp.int32)  # input prefix

    def logits_fn(last, position, prefix):
      prefix = jax.lax.dynamic_update_slice_in_dim(prefix, last[:, None], position, axis=1)
      full = model.decoder(prefix, memory)  # [B, length, V]; later positions are masked
      return jax.lax.dynamic_index_in_dim(full, position, axis=1, keepdims=False), prefix

  return sample(logits_fn, cache, batch, task, length=length,
                rng=jax.random.key(0) if rng is None else rng, temperature=temperature,
                top_k=top_k, top_p=top_p, return_logits=return_logits, mode=mode,
                block_ends=block_ends, grow_cache=grow_cache)


def detection_outputs(state: DecodeState, vocab: vocab_lib.Vocabulary,
                      score: str = 'class', mode: str = 'grammar') -> tuple[jax.Array, jax.Array]:
  """(tokens [B, L], scores [B, L]) of a detection decode: `DetectionTask.outputs`."""
  task = detection.DetectionTask(vocab, mode, score)
  return task.outputs(state.tokens, state.token_probs, state.task_state)
