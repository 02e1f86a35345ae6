"""The task interface, decoding side: what a task gives the shared decoding loop.

A task (object detection today; instance segmentation, keypoints and captioning to come)
owns what its token sequences mean. The decoding loop (`inference/decoding.py`) keeps only
what every task has (the position, the tokens, each token's probability, the rows' done
flags, the model's cache and the sampling key) and calls the task's hooks, as t5x's
`temperature_sample` calls its logits and state callbacks:

  1. before the loop   `state = task.init_state(batch, length)`, a pytree of [B, ...]
                       arrays the task carries through the loop (detection: the best real
                       class at each class slot and its probability);
  2. at each position  `allowed = task.allowed(position, tokens, state)`: [B, V] bool, the
                       tokens each row may take (its grammar), or None for no constraint;
                       the loop sets the logits of the others to NEG_INF and samples;
  3. after the choice  `state = task.update(state, position, logits, probs, token, done)`
                       with the constrained logits [B, V], their softmax [B, V], the
                       chosen tokens [B] and which rows had already ended before this step;
  4. after the loop    `task.outputs(tokens, token_probs, state)`: the task's outputs, in
                       the jitted program (detection: tokens and per-object scores that its
                       parsers read into boxes, classes and scores).

Three optional attributes (absent: detection's behaviour; `prompt_length`,
`suppress_tokens` and `stop_tokens` below read them):
  `prompt_length`    P, the tokens of each row's prompt (default 1: `prompt` alone); a
                     task with P > 1 is decoded with a prompt array [R, P] (the instance
                     tasks: `instance_prompts`, the object's box and class);
  `suppress_tokens`  token ids that, when drawn, the model still reads at the next
                     position but the output replaces by a second draw from the logits
                     without them (the official keypoint eval's
                     `eval_suppress_invisible_token`; default none);
  `stop_tokens`      token ids after whose emission a row is done: the loop writes
                     padding (probability 0) in its later positions and ends when every
                     row is done (default, detection's: `vocab.eos` under `decode.mode`
                     'grammar', none under 'official', where all `length` tokens are
                     sampled; segmentation: padding, in both modes, as its parser stops
                     there; keypoints: none, its 34 tokens are fixed).

The loop's sampler settings (temperature, top-k/top-p, `decode.mode`'s nucleus rule) are
the decoder's, not the task's; the instance tasks carry the official config's as
defaults (`sampling()`: `decode`'s keyword arguments).

The rest of a task's life is wired by its callers, so that this folder imports neither
TensorFlow nor the later stages: its tf.data sequence builder and loss weights live in
`data/sequences.py`, its metric in `evaluation/`, its drawing in `inference/drawing.py`.
The tasks: `detection.DetectionTask` (object detection), `segmentation.SegmentationTask`
(instance segmentation) and `keypoints.KeypointTask` (keypoint detection).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

from pix2seq_jax.tasks import vocab as vocab_lib

# The logit of a token a constraint rules out (t5x's NEG_INF: finite, so softmax is exact).
NEG_INF = -1e30
TaskState = Any  # a pytree of [B, ...] arrays


class Task(Protocol):
  """What the decoding loop needs of a task (see the module docstring)."""

  vocab: vocab_lib.Vocabulary  # the token ids; `vocab.padding` fills ended rows

  @property
  def prompt(self) -> int:
    """The start token the decoder is fed at position 0."""

  def init_state(self, batch: int, length: int) -> TaskState:
    """The task's per-row state before the first token ([B, ...] arrays)."""

  def allowed(self, position: jax.Array, tokens: jax.Array,
              state: TaskState) -> jax.Array | None:
    """[B, V] bool: the tokens each row may take at `position` [] given its `tokens`
    [B, L] (padding past `position`) and `state`; None: every token."""

  def update(self, state: TaskState, position: jax.Array, logits: jax.Array,
             probs: jax.Array, token: jax.Array, done: jax.Array) -> TaskState:
    """The state after `token` [B] was chosen at `position` from the constrained `logits`
    [B, V] (their softmax: `probs`); `done` [B]: rows that had ended before."""

  def outputs(self, tokens: jax.Array, token_probs: jax.Array, state: TaskState) -> Any:
    """The task's outputs from the final tokens [B, L], their probabilities [B, L] and
    state (inside the jitted program)."""



def prompt_length(task: Task) -> int:
  """The tokens of each row's prompt: the task's `prompt_length`, else 1 (`prompt`)."""
  return int(getattr(task, 'prompt_length', 1))


def suppress_tokens(task: Task) -> tuple[int, ...]:
  """The tokens the task has redrawn for the output (its `suppress_tokens`, else none)."""
  return tuple(int(t) for t in getattr(task, 'suppress_tokens', ()))


def stop_tokens(task: Task, mode: str) -> tuple[int, ...]:
  """The tokens after which a row is done: the task's `stop_tokens`, else detection's rule
  under `decode.mode` (`mode`): `task.vocab.eos` under 'grammar', none under 'official'."""
  if hasattr(task, 'stop_tokens'):
    return tuple(int(t) for t in task.stop_tokens)
  return (int(task.vocab.eos),) if mode == 'grammar' else ()


# An instance task's prompt: its task token, the object's 4 box tokens, its class token.
INSTANCE_PROMPT_LENGTH = 6


def instance_prompts(task_token: int, boxes: jax.Array, classes: jax.Array,
                     vocab: vocab_lib.Vocabulary) -> jax.Array:
  """The instance tasks' prompts (the official `task_utils.build_instance_prompt_seq`).

  boxes [..., 4] (ymin, xmin, ymax, xmax) normalised to the canvas; classes [...] the
  objects' category ids (the official label; 0: a padding object) -> [prod(...), 6] int32
  rows [task_token, q(ymin), q(xmin), q(ymax), q(xmax), 100 + class], q(v) =
  coord_offset + clip(round(v * (bins - 1)), 0, bins - 1); a padding object's row is 0s.
  """
  boxes = jnp.asarray(boxes, jnp.float32).reshape(-1, 4)  # [R, 4]
  classes = jnp.asarray(classes, jnp.int32).reshape(-1)  # [R]
  coords = vocab.coord_to_bin(boxes, jnp).astype(jnp.int32) + vocab.coord_offset
  rows = jnp.concatenate([jnp.full_like(classes[:, None], task_token), coords,
                          classes[:, None] + vocab_lib.OFFICIAL_CLASS_OFFSET], axis=1)
  return jnp.where(classes[:, None] == 0, 0, rows).astype(jnp.int32)  # [R, 6]


INSTANCE_MODES = ('grammar', 'official')


@dataclasses.dataclass(frozen=True)
class InstanceTask:
  """What the instance tasks (segmentation.py, keypoints.py) share: the official_multitask
  `vocab`, a prompt of INSTANCE_PROMPT_LENGTH tokens led by the task token of `name`, no
  per-row state, and the sampling settings they pass to `decode` (`sampling`). `mode`
  'official' samples unconstrained, as the official; 'grammar' uses the task's
  constraint. The subclasses set `name` and the official config's sampling defaults."""

  vocab: vocab_lib.Vocabulary
  mode: str = 'official'
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  name: ClassVar[str] = ''  # the official task name (vocab.OFFICIAL_PROMPTS)
  prompt_length: ClassVar[int] = INSTANCE_PROMPT_LENGTH

  def __post_init__(self):
    if self.mode not in INSTANCE_MODES:
      raise ValueError(f'The {self.name} mode must be one of {INSTANCE_MODES}, '
                       f'got {self.mode!r}.')
    self.vocab.prompt(self.name)  # raises unless official_multitask

  @property
  def prompt(self) -> int:
    """The task token, the first of each row's prompt."""
    return self.vocab.prompt(self.name)

  def sampling(self) -> dict[str, Any]:
    """`decode`'s sampling keyword arguments: the official config's, under `mode`."""
    return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                mode=self.mode)

  def init_state(self, batch: int, length: int) -> tuple:
    return ()

  def update(self, state: tuple, position: jax.Array, logits: jax.Array, probs: jax.Array,
             token: jax.Array, done: jax.Array) -> tuple:
    return state

