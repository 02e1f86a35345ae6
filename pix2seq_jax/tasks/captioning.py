"""Captioning (Pix2Seq-v2): the decoding hooks of the text task and its parser.

A caption is decoded from the captioning prompt (13) alone, one row per image: the
response is text tokens (`vocab.text_offset` + SentencePiece piece id) up to the caption's
EOS token (`vocab.text_eos`, the EOS piece's token), at most `length` of them (the
official `max_seq_len` 128 of captioning). The official multi-task config samples at
temperature 1 with no top-k or top-p limit (`configs/config_multi_task.py`); those are
the defaults here (`sampling()`), and `mode='grammar'` restricts the draws to the text
tokens of the tokenizer's pieces.

Parsing (on the host, `caption_pieces`): the official post-processing maps each token to a
piece id (`token - text_offset`, padding 0 kept as the padding piece) clipped into
[0, num_pieces - 1] and detokenizes the whole row, the padding and EOS pieces being
control symbols that decode to nothing. Here a row ends at its EOS (the loop stops a row
there, `stop_tokens`) and the pieces before it are the caption; the two agree unless the
official row holds text after its EOS, which a trained model follows with padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from pix2seq_jax.tasks import task as task_lib
from pix2seq_jax.tasks import vocab as vocab_lib

# The official multi-task config's captioning settings (config_multi_task.py:144-155).
TEMPERATURE = 1.0
TOP_K = 0
TOP_P = 1.0
MAX_TEXT_LEN = 128
MODES = task_lib.INSTANCE_MODES


def official_pieces(tokens: np.ndarray, text_offset: int, num_pieces: int) -> np.ndarray:
  """The official captioning post-processing of tokens [..., L] -> piece ids [..., L]:
  padding stays 0, every other token becomes token - text_offset, clipped into
  [0, num_pieces - 1]."""
  tokens = np.asarray(tokens, np.int64)
  pieces = np.where(tokens == vocab_lib.PADDING, 0, tokens - text_offset)
  return np.clip(pieces, 0, num_pieces - 1).astype(np.int32)


def caption_pieces(tokens: np.ndarray, text_offset: int, num_pieces: int) -> list[int]:
  """The caption of one decoded row [L]: its pieces (`official_pieces`) before the first
  EOS piece, the padding pieces left out."""
  pieces = official_pieces(tokens, text_offset, num_pieces)
  ends = np.flatnonzero(pieces == vocab_lib.TEXT_EOS_PIECE)
  if ends.size:
    pieces = pieces[:ends[0]]
  return [int(p) for p in pieces if p != vocab_lib.TEXT_PAD_PIECE]


def caption_score(token_probs: np.ndarray) -> float:
  """A caption's score from its row's token probabilities [L]: the mean probability of its
  emitted tokens (those before the EOS and the EOS; done rows hold 0), 0 without any."""
  token_probs = np.asarray(token_probs)
  emitted = token_probs > 0
  return float(token_probs[emitted].mean()) if emitted.any() else 0.0


@dataclasses.dataclass(frozen=True)
class CaptioningTask:
  """Captioning's decoding hooks (`task.Task`) for the official_multitask `vocab`:
  prompt 13, `length` response tokens at most, ending at the text EOS; `num_pieces` is
  the tokenizer's vocabulary size ('grammar' draws only its pieces' tokens)."""

  vocab: vocab_lib.Vocabulary
  mode: str = 'official'
  temperature: float = TEMPERATURE
  top_k: int = TOP_K
  top_p: float = TOP_P
  length: int = MAX_TEXT_LEN
  num_pieces: int = vocab_lib.MAX_TEXT_PIECES
  name: ClassVar[str] = 'captioning'

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'The captioning mode must be one of {MODES}, got {self.mode!r}.')
    self.vocab.prompt(self.name)  # raises unless official_multitask
    if not 2 <= self.num_pieces <= vocab_lib.MAX_TEXT_PIECES:
      raise ValueError(f'num_pieces={self.num_pieces}: a tokenizer of 2 to '
                       f'{vocab_lib.MAX_TEXT_PIECES} pieces.')

  @property
  def prompt(self) -> int:
    return self.vocab.prompt(self.name)

  @property
  def stop_tokens(self) -> tuple[int, ...]:
    """A caption ends at its EOS, in both modes."""
    return (self.vocab.text_eos,)

  def sampling(self) -> dict[str, Any]:
    """`decode`'s sampling keyword arguments (the official config's by default)."""
    return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                mode=self.mode)

  def init_state(self, batch: int, length: int) -> tuple:
    return ()

  def allowed(self, position: jax.Array, tokens: jax.Array, state: tuple) -> jax.Array | None:
    if self.mode == 'official':
      return None
    ids = jnp.arange(self.vocab.size)
    text = (ids >= self.vocab.text_offset) & (ids < self.vocab.text_offset + self.num_pieces)
    return jnp.broadcast_to(text[None], (tokens.shape[0], self.vocab.size))

  def update(self, state: tuple, position: jax.Array, logits: jax.Array, probs: jax.Array,
             token: jax.Array, done: jax.Array) -> tuple:
    return state

  def outputs(self, tokens: jax.Array, token_probs: jax.Array,
              state: tuple) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, L], token_probs [B, L]): `caption_pieces` reads each row."""
    return tokens, token_probs
