"""Captioning's outputs as text, on the host: decoded rows -> COCO caption results.

A captioning row (`tasks/captioning.CaptioningTask`) holds text tokens up to its EOS; its
pieces (`captioning.caption_pieces`) become text with the run's SentencePiece model
(`tasks/tokenizer.py`: the workdir's copy for a trained workdir, `workdir/tokenizer_file`),
and each image's caption is one COCO caption result {"image_id", "caption"}.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from pix2seq_jax.tasks import captioning
from pix2seq_jax.tasks import tokenizer as tokenizer_lib
from pix2seq_jax.tasks import vocab as vocab_lib


def load_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.TextTokenizer:
  """The SentencePiece model of a captioning config (`data.tokenizer`)."""
  if not config.data.tokenizer:
    raise ValueError('config.data.tokenizer is empty: captioning needs the SentencePiece '
                     'model its captions were cut into pieces with.')
  return tokenizer_lib.TextTokenizer(config.data.tokenizer)


def caption_task(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                 tokenizer: tokenizer_lib.TextTokenizer) -> captioning.CaptioningTask:
  """The decoding task of captioning: the official sampling, `data.max_text_len` tokens at
  most, the tokenizer's pieces."""
  return captioning.CaptioningTask(vocab, length=config.data.max_text_len,
                                   num_pieces=tokenizer.vocab_size)


def caption_texts(tokens: np.ndarray, tokenizer: tokenizer_lib.TextTokenizer,
                  vocab: vocab_lib.Vocabulary) -> list[str]:
  """Decoded rows [R, L] -> their captions."""
  return [tokenizer.decode(captioning.caption_pieces(row, vocab.text_offset,
                                                     tokenizer.vocab_size))
          for row in np.asarray(tokens)]


def caption_results(tokens: np.ndarray, image_ids: np.ndarray,
                    tokenizer: tokenizer_lib.TextTokenizer,
                    vocab: vocab_lib.Vocabulary) -> list[dict]:
  """Decoded rows [R, L] of the images `image_ids` [R] -> COCO caption results."""
  return [{'image_id': int(image_id), 'caption': text}
          for image_id, text in zip(image_ids, caption_texts(tokens, tokenizer, vocab))]
