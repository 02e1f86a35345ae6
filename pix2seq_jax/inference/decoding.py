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
(`tasks/detection.py`). A row is done once it has emitted one of the task's stop tokens
(`task.stop_tokens`: detection's EOS under 'grammar', none under 'official';
segmentation's padding in both modes; none for keypoints): its later positions hold
padding with probability 0, the model reads padding there, and the loop stops as soon as
every row is done.

The prompt: detection's is its one start token (`task.prompt`); the instance tasks give
each row a multi-token prompt (`prompt` [R, P], their box and class: `task.instance_prompts`).
The loop feeds the first P - 1 prompt tokens teacher-forced at decoder positions 0 .. P-2
(filling the cache, their logits unused), then the last one at P - 1, whose logits give
response token 0; response position t is the decoder's position t + P - 1 (the official
`infer` likewise). `decode` encodes each image once and repeats its memory for the rows of
its prompts (R a multiple of the images' B, an image's rows adjacent, as the official
`tile_along_batch`).

Sampling: `temperature` 0 is greedy; otherwise tokens are drawn from
softmax(logits / temperature), restricted to the `top_k` most likely tokens (0: all)
and to the smallest set whose probability reaches `top_p` (nucleus; 1: all).

`mode='official'` reproduces the official Pix2Seq inference instead: the official nucleus
rule (keep the tokens whose cumulative probability, their own included, stays within
top_p, and always the most likely one), and, for detection, no grammar, no stop at EOS
(all `length` tokens are sampled) and every 5-token slot an object whose class is the
most likely class token at its class position under the full softmax, scored by that
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

# (last token [B], position [], cache) -> (logits [B, V], cache)
LogitsFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


@struct.dataclass
class DecodeState:
  """The loop's state: the response position, tokens, their probabilities, the done flags,
  the cache, the key, the task's state; position t of the response is the decoder's
  t + P - 1 for a P-token prompt."""

  position: jax.Array  # [] int32: the response position being generated
  tokens: jax.Array  # [B, L] int32: emitted tokens, PADDING where not yet generated
  token_probs: jax.Array  # [B, L] float32: probability of each emitted token (constrained)
  done: jax.Array  # [B] bool: the row has emitted one of the task's stop tokens
  cache: Any  # the logits function's cache (per-layer self-attention K/V)
  rng: jax.Array
  task_state: Any  # the task's per-row state (`Task.init_state`, `Task.update`)
  # [B] int32: the token the model reads at `position`: the prompt's last, then the token
  # drawn before (the draw itself where the task redraws a suppressed token for the output)
  last: jax.Array
  logits: jax.Array | None = None  # [B, L, V] float32, only when asked for


def as_task(task: task_lib.Task | vocab_lib.Vocabulary, mode: str = 'grammar') -> task_lib.Task:
  """`task`, or for a vocabulary the detection task of `mode`."""
  if isinstance(task, vocab_lib.Vocabulary):
    return detection.DetectionTask(task, mode)
  return task


# The most likely tokens `filter_logits` looks at first for the nucleus (`lax.top_k`);
# the full sort of the vocabulary runs only where they hold at most top_p of the mass.
NUCLEUS_CANDIDATES = 64


def _nucleus_threshold(ordered: jax.Array, log_total: jax.Array, top_p: float,
                       nucleus: str) -> tuple[jax.Array, jax.Array]:
  """The nucleus of descending logits `ordered` [B, K] (the K largest of a row whose
  logsumexp is `log_total` [B, 1]) -> (its smallest logit [B, 1], the mass of the K)."""
  probs = jnp.exp(ordered - log_total)  # [B, K]
  mass = jnp.cumsum(probs, axis=-1)
  within = (mass - probs < top_p) if nucleus == 'reach' else (mass <= top_p)
  keep = within | (jnp.arange(ordered.shape[-1]) == 0)
  return jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True), mass[:, -1]


def nucleus_threshold(logits: jax.Array, top_p: float, nucleus: str = 'reach',
                      candidates: int = NUCLEUS_CANDIDATES) -> jax.Array:
  """[B, 1]: the smallest logit of each row's nucleus (see `filter_logits`).

  The `candidates` most likely tokens decide it when they hold more than top_p of the
  probability: no token past them can then be in the nucleus under either rule. Else
  (a flat distribution: an untrained model) the whole vocabulary is sorted, as
  `candidates=0` always does; the two give the same threshold (tests/test_nucleus.py).
  """
  log_total = jax.nn.logsumexp(logits, axis=-1, keepdims=True)  # [B, 1]

  def by_sort():  # top_k of all V: the descending sort, faster than jnp.sort on XLA:CPU
    ordered = jax.lax.top_k(logits, logits.shape[-1])[0]  # [B, V] descending
    return _nucleus_threshold(ordered, log_total, top_p, nucleus)[0]

  if not 0 < candidates < logits.shape[-1]:
    return by_sort()
  top = jax.lax.top_k(logits, candidates)[0]  # [B, K] descending
  threshold, mass = _nucleus_threshold(top, log_total, top_p, nucleus)
  return jax.lax.cond(jnp.all(mass > top_p), lambda: threshold, by_sort)


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
    logits = jnp.where(logits < nucleus_threshold(logits, top_p, nucleus), NEG_INF, logits)
  return logits


def choose_tokens(logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int,
                  top_p: float, nucleus: str = 'reach') -> jax.Array:
  """[B, V] (grammar-masked) logits -> [B] tokens: greedy or sampled."""
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1)
  filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p, nucleus=nucleus)
  return jax.random.categorical(rng, filtered, axis=-1)


def prompt_array(task: task_lib.Task, batch: int, prompt: jax.Array | None) -> jax.Array:
  """[B, P] int32: `prompt`, checked against the task's prompt length, or for None the
  task's one start token in every row."""
  need = task_lib.prompt_length(task)
  if prompt is None:
    if need != 1:
      raise ValueError(f'The task reads a {need}-token prompt per row: pass '
                       f'prompt=[rows, {need}] (e.g. task.instance_prompts(boxes, classes)).')
    return jnp.full((batch, 1), task.prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape != (batch, need):
    raise ValueError(f'The prompt must be [{batch}, {need}] (rows, the task\'s prompt '
                     f'length), got {tuple(prompt.shape)}.')
  return prompt.astype(jnp.int32)


def prefill(logits_fn: LogitsFn, prompt: jax.Array, cache: Any) -> Any:
  """The cache after the model read prompt [B, P]'s first P - 1 tokens at positions
  0 .. P-2 (teacher-forced, their logits unused)."""
  if prompt.shape[1] == 1:
    return cache

  def feed(position, cache):
    token = jax.lax.dynamic_index_in_dim(prompt, position, axis=1, keepdims=False)  # [B]
    return logits_fn(token, position, cache)[1]

  return jax.lax.fori_loop(0, prompt.shape[1] - 1, feed, cache)


def sample(logits_fn: LogitsFn, cache: Any, batch: int,
           task: task_lib.Task | vocab_lib.Vocabulary, *, length: int, rng: jax.Array,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           return_logits: bool = False, mode: str = 'grammar', block_ends: Sequence[int] = (),
           grow_cache: Callable[[Any, int], Any] | None = None,
           prompt: jax.Array | None = None) -> DecodeState:
  """The decoding loop: [B, length] response tokens from `logits_fn` under `task`'s hooks.

  `prompt` [B, P] int32: each row's prompt (None: the task's one start token); the first
  P - 1 tokens fill the cache before the loop (`prefill`) and `logits_fn` sees the
  decoder's positions (response position + P - 1). With `block_ends` (increasing
  response positions < length), the loop stops at each of them and
  `grow_cache(cache, next_end + P - 1)` gives the cache room for the decoder positions
  of the next block (the last block ends at `length`).

  A task with `suppress_tokens` (`task.py`) has them redrawn for the output: where one is
  drawn, the model reads it at the next position, but the emitted token is a second draw
  from the logits without them, and every emitted token's probability is taken under
  those logits (the official keypoint eval's `eval_suppress_invisible_token`).

  A row is done after it emits one of the task's stop tokens (`task.stop_tokens` under
  `mode`); done rows emit padding with probability 0, and the loop ends once all are.
  """
  if mode not in MODES:
    raise ValueError(f'decode.mode must be one of {MODES}, got {mode!r}.')
  official = mode == 'official'
  task = as_task(task, mode)
  vocab = task.vocab
  prompt = prompt_array(task, batch, prompt)  # [B, P]
  offset = prompt.shape[1] - 1  # the decoder's position of response position 0
  suppress = task_lib.suppress_tokens(task)
  stops = task_lib.stop_tokens(task, mode)
  nucleus = 'official' if official else 'reach'

  def body(state: DecodeState) -> DecodeState:
    logits, cache = logits_fn(state.last, state.position + offset, state.cache)
    logits = logits.astype(jnp.float32)  # [B, V]
    allowed = task.allowed(state.position, state.tokens, state.task_state)  # [B, V] | None
    masked = logits if allowed is None else jnp.where(allowed, logits, NEG_INF)
    rng, sample_rng = jax.random.split(state.rng)
    drawn = choose_tokens(masked, sample_rng, temperature=temperature, top_k=top_k,
                          top_p=top_p, nucleus=nucleus)
    token = drawn
    if suppress:  # redraw suppressed tokens from the logits without them
      hidden = jnp.isin(jnp.arange(vocab.size), jnp.asarray(suppress))  # [V]
      masked = jnp.where(hidden, NEG_INF, masked)
      redrawn = choose_tokens(masked, jax.random.fold_in(sample_rng, 1),
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              nucleus=nucleus)
      token = jnp.where(hidden[drawn], redrawn, drawn)
    token = jnp.where(state.done, vocab.padding, token).astype(jnp.int32)
    drawn = jnp.where(state.done, vocab.padding, drawn).astype(jnp.int32)
    probs = jax.nn.softmax(masked, axis=-1)  # [B, V]
    token_prob = jnp.take_along_axis(probs, token[:, None], axis=1)[:, 0]  # [B]
    write = lambda array, value: jax.lax.dynamic_update_slice_in_dim(
        array, value[:, None], state.position, axis=1)
    done = state.done
    for stop in stops:
      done = done | (token == stop)
    new_logits = state.logits
    if return_logits:
      new_logits = write(state.logits, logits)
    return DecodeState(
        position=state.position + 1,
        tokens=write(state.tokens, token),
        token_probs=write(state.token_probs, jnp.where(state.done, 0.0, token_prob)),
        done=done,
        cache=cache, rng=rng,
        task_state=task.update(state.task_state, state.position, masked, probs, token,
                               state.done),
        last=drawn, logits=new_logits)

  def cond(end: int) -> Callable[[DecodeState], jax.Array]:
    return lambda state: (state.position < end) & ~jnp.all(state.done)

  ends = [*block_ends, length]
  if ends != sorted(set(ends)) or ends[0] < 1:
    raise ValueError(f'block_ends {list(block_ends)} must increase within (0, {length}).')
  init = DecodeState(
      position=jnp.zeros((), jnp.int32),
      tokens=jnp.full((batch, length), vocab.padding, jnp.int32),
      token_probs=jnp.zeros((batch, length), jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=prefill(logits_fn, prompt, cache), rng=rng,
      task_state=task.init_state(batch, length), last=prompt[:, -1],
      logits=jnp.zeros((batch, length, vocab.size), jnp.float32) if return_logits else None)
  state = init
  for index, end in enumerate(ends):
    if index:
      state = state.replace(cache=grow_cache(state.cache, end + offset))
    state = jax.lax.while_loop(cond(end), body, state)
  return state


def decode(model: Pix2Seq, images: jax.Array, task: task_lib.Task | vocab_lib.Vocabulary, *,
           length: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           rng: jax.Array | None = None, step: str = 'cached',
           return_logits: bool = False, mode: str = 'grammar',
           prefix_block: int = PREFIX_BLOCK, prompt: jax.Array | None = None) -> DecodeState:
  """Generates [R, length] response tokens for images [B, H, W, 3] (call inside jit).

  `task`: the task's hooks, or a vocabulary for detection under `mode`. `length` is
  `vocab.sequence_length(max_objects)` for detection; length + P - 1 is at most the
  decoder's `max_seq_len`. `prompt` [R, P] int32: each row's prompt, R a
  multiple of B (an image's rows adjacent; None: R = B rows of the task's start token).
  `prefix_block`: positions per block of the cache (0: one block).
  """
  if step not in ('cached', 'recompute'):
    raise ValueError(f'step must be "cached" or "recompute", got {step!r}.')
  batch = images.shape[0]
  rows = batch if prompt is None else prompt.shape[0]
  task = as_task(task, mode)
  prompt = prompt_array(task, rows, prompt)  # [R, P]
  offset = prompt.shape[1] - 1
  if length + offset > model.decoder.max_seq_len:
    raise ValueError(f'Cannot decode {length} tokens after a {offset + 1}-token prompt: the '
                     f'decoder has {model.decoder.max_seq_len} positions.')
  if rows % batch:
    raise ValueError(f'{rows} prompt rows for {batch} images: give each image as many.')
  memory = model.encode(images, train=False)  # [B, N, D]
  if rows != batch:
    memory = jnp.repeat(memory, rows // batch, axis=0)  # [R, N, D]

  block_ends, grow_cache = (), None
  if step == 'cached':
    weights = model.decoder.step_weights(memory)
    if prefix_block > 0:
      block_ends = tuple(range(prefix_block, length, prefix_block))
      grow_cache = model.decoder.grow_cache
    cache = model.decoder.init_cache(rows, (*block_ends, length)[0] + offset, memory.dtype)

    def logits_fn(last, position, cache):
      return model.decoder.step(last, position, cache, weights)
  else:
    cache = jnp.full((rows, length + offset), task.prompt, jnp.int32)  # the input prefix
    cache = cache.at[:, :offset + 1].set(prompt)

    def logits_fn(last, position, prefix):
      prefix = jax.lax.dynamic_update_slice_in_dim(prefix, last[:, None], position, axis=1)
      full = model.decoder(prefix, memory)  # [R, length + offset, V]; later ones masked
      return jax.lax.dynamic_index_in_dim(full, position, axis=1, keepdims=False), prefix

  return sample(logits_fn, cache, rows, task, length=length,
                rng=jax.random.key(0) if rng is None else rng, temperature=temperature,
                top_k=top_k, top_p=top_p, return_logits=return_logits, mode=mode,
                block_ends=block_ends, grow_cache=grow_cache, prompt=prompt)


def detection_outputs(state: DecodeState, vocab: vocab_lib.Vocabulary,
                      score: str = 'class', mode: str = 'grammar') -> tuple[jax.Array, jax.Array]:
  """(tokens [B, L], scores [B, L]) of a detection decode: `DetectionTask.outputs`."""
  task = detection.DetectionTask(vocab, mode, score)
  return task.outputs(state.tokens, state.token_probs, state.task_state)
