"""The captioning task's text tokenizer: a SentencePiece model, used as the official
multi-task model uses it (its `tokenizer` config: no BOS, EOS appended).

The official model file is T5's `c4_en_32k_spm.model` (32000 pieces; pad 0, EOS 1, unk 2,
no BOS). In the 'official_multitask' vocabulary (vocab.py) a piece id p is the token
3000 + p, so a model here has at most 32000 pieces and keeps pad at 0 and EOS at 1.
`train_tokenizer` trains such a model (unigram, T5's nmt_nfkc normalisation) from
captions, e.g. for training from scratch on a small dataset.

Plain Python over the `sentencepiece` package: no TensorFlow and no JAX.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from pix2seq_jax.tasks import vocab as vocab_lib

# The piece ids the text tokens assume (vocab.py): pad 0 and EOS 1 (T5's layout), and at
# most MAX_VOCAB_SIZE pieces (text tokens 3000 .. 34999).
PAD_ID = vocab_lib.TEXT_PAD_PIECE
EOS_ID = vocab_lib.TEXT_EOS_PIECE
UNK_ID = 2
MAX_VOCAB_SIZE = vocab_lib.MAX_TEXT_PIECES
# pad, EOS and unk, and at least one piece of text.
MIN_VOCAB_SIZE = 4

_TOO_LARGE = re.compile(r'Please set it to a value <= (\d+)')
_TOO_SMALL = re.compile(r'smaller than required_chars\. \d+ vs (\d+)')


class TextTokenizer:
  """A SentencePiece model file: text <-> piece ids (ids 0 .. vocab_size - 1).

  `encode` appends EOS (the official `add_eos=True`); `decode` reads ids up to the first
  EOS or pad. Refuses (ValueError naming the file) a file that is not a SentencePiece
  model, or one whose pad / EOS ids are not 0 / 1 or with more than 32000 pieces.
  """

  def __init__(self, path: str):
    self._path = path
    model = _read_model_file(path)
    self._sha256 = hashlib.sha256(model).hexdigest()
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError:
      raise ValueError(f'{path} is not a SentencePiece model (it does not parse as one): give the '
                       '.model file that SentencePiece training wrote (e.g. T5\'s '
                       'c4_en_32k_spm.model, or one from `python -m '
                       'pix2seq_jax.data.train_tokenizer`).') from None
    problems = []
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
      problems.append(f'its pad / EOS ids are {self._sp.pad_id()} / {self._sp.eos_id()}, '
                      f'not {PAD_ID} / {EOS_ID}')
    if not MIN_VOCAB_SIZE <= self._sp.vocab_size() <= MAX_VOCAB_SIZE:
      problems.append(f'it has {self._sp.vocab_size()} pieces, not {MIN_VOCAB_SIZE} .. '
                      f'{MAX_VOCAB_SIZE} (the official_multitask vocabulary holds text tokens '
                      '3000 .. 34999)')
    if problems:
      raise ValueError(f'{path}: {"; ".join(problems)}. Use a model trained with pad_id=0, '
                       'eos_id=1 and vocab_size <= 32000, as T5\'s c4_en_32k_spm.model and '
                       '`python -m pix2seq_jax.data.train_tokenizer` are.')

  @classmethod
  def load(cls, path: str) -> TextTokenizer:
    """The tokenizer of the SentencePiece model file at `path`."""
    return cls(path)

  @property
  def path(self) -> str:
    return self._path

  @property
  def sha256(self) -> str:
    """The hex SHA-256 of the model file's bytes (as read when loading)."""
    return self._sha256

  @property
  def vocab_size(self) -> int:
    """The number of pieces, the special ones (pad, EOS, unk) included."""
    return self._sp.vocab_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  def encode(self, text: str) -> list[int]:
    """The piece ids of `text`, then EOS."""
    _check_text(text)
    return self._sp.encode(text, add_eos=True)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text."""
    texts = list(texts)
    for text in texts:
      _check_text(text)
    return self._sp.encode(texts, add_eos=True)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of piece ids, read up to the first EOS or pad (exclusive).

    Ids after the first EOS or pad are ignored. The official task detokenizes the whole row,
    where EOS and pad decode to nothing but the ids after them still count, and clips ids
    to 0 .. vocab_size - 1; here an id outside that range raises ValueError.
    """
    pieces = []
    for token in ids:
      token = int(token)
      if token in (EOS_ID, PAD_ID):
        break
      if not 0 <= token < self.vocab_size:
        raise ValueError(f'id {token} is not a piece of {self._path} (ids 0 .. '
                         f'{self.vocab_size - 1}): map the model\'s tokens back to piece ids '
                         'first (token - 3000 in the official_multitask vocabulary).')
      pieces.append(token)
    return self._sp.decode(pieces)

  def normalize(self, text: str) -> str:
    """`text` as the model normalises it (NFKC, whitespace runs collapsed, trimmed): what
    `decode(encode(text))` gives when every character of `text` is in the model."""
    _check_text(text)
    return self._sp.normalize(text).replace('\u2581', ' ').strip(' ')


def train_tokenizer(texts: Sequence[str], output_path: str, vocab_size: int, *,
                    character_coverage: float = 1.0) -> TextTokenizer:
  """Trains a SentencePiece unigram model on `texts`, writes it to `output_path` and
  returns its tokenizer.

  The model has the official layout (pad 0, EOS 1, unk 2, no BOS) and T5's normalisation
  (nmt_nfkc). Training runs on one thread over every text, so the same texts give the
  same file, byte for byte. A `vocab_size` the texts cannot fill (or too small for their
  characters) raises ValueError with the size that works.
  """
  texts = list(texts)
  for text in texts:
    _check_text(text)
  if not any(text.strip() for text in texts):
    raise ValueError(f'No text to train {output_path} on: every one of the {len(texts)} '
                     'texts is empty.')
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not (
      MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE):
    raise ValueError(f'vocab_size={vocab_size!r}: expected an integer in {MIN_VOCAB_SIZE} .. '
                     f'{MAX_VOCAB_SIZE} (the official_multitask vocabulary holds 32000 '
                     'pieces).')
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type='unigram', pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        character_coverage=character_coverage, normalization_rule_name='nmt_nfkc',
        input_sentence_size=0, num_threads=1, minloglevel=2)
  except RuntimeError as e:
    message = str(e)
    if match := _TOO_LARGE.search(message):
      raise ValueError(f'vocab_size={vocab_size} is too large for these {len(texts)} texts: '
                       f'the largest that works is {match.group(1)}. Lower vocab_size '
                       '(or train on more text).') from None
    if match := _TOO_SMALL.search(message):
      raise ValueError(f'vocab_size={vocab_size} is too small for these texts: their '
                       f'characters and the special pieces need at least {match.group(1)}. '
                       'Raise vocab_size.') from None
    raise ValueError(f'SentencePiece could not train {output_path}: {_first_line(e)}') from None
  _write_atomically(output_path, model.getvalue())
  return TextTokenizer(output_path)


def _read_model_file(path: str) -> bytes:
  if not os.path.isfile(path):
    what = 'is a folder, not a file' if os.path.isdir(path) else 'no such file'
    raise ValueError(f'{path}: {what}. Give the path of a SentencePiece '
                     '.model file (T5\'s c4_en_32k_spm.model, or train one with `python -m '
                     'pix2seq_jax.data.train_tokenizer`).')
  try:
    with open(path, 'rb') as f:
      model = f.read()
  except OSError as e:
    raise ValueError(f'{path}: cannot read the tokenizer file ({e.strerror}); check its '
                     'permissions.') from None
  if not model:
    raise ValueError(f'{path} is empty, not a SentencePiece model: train it again or give '
                     'another .model file.')
  return model


def _write_atomically(path: str, content: bytes) -> None:
  """Writes `path` whole or not at all (a temporary file beside it, then a rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:
      f.write(content)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _check_text(text: object) -> None:
  if not isinstance(text, str):
    raise TypeError(f'expected text (str), got {type(text).__name__}: {text!r:.80}')


def _first_line(error: Exception) -> str:
  return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
