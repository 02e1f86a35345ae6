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

The loop's sampler settings (temperature, top-k/top-p, `decode.mode`'s nucleus rule and
whether a row stops at `task.vocab.eos`) are the decoder's, not the task's.

The rest of a task's life is wired by its callers, so that this folder imports neither
TensorFlow nor the later stages: its tf.data sequence builder and loss weights live in
`data/sequences.py`, its metric in `evaluation/`, its drawing in `inference/drawing.py`.
The tasks: `detection.DetectionTask` (object detection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pix2seq_jax.tasks import vocab as vocab_lib

if TYPE_CHECKING:
  import jax

# The logit of a token a constraint rules out (t5x's NEG_INF: finite, so softmax is exact).
NEG_INF = -1e30
TaskState = Any  # a pytree of [B, ...] arrays


class Task(Protocol):
  """What the decoding loop needs of a task (see the module docstring)."""

  vocab: vocab_lib.Vocabulary  # the token ids; `vocab.eos` ends a row, `vocab.padding` fills

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

