"""The config a run reads: epochs turned into steps, then frozen.

`train.epochs` and `train.warmup_epochs` count passes over the train split's examples
(its images; for keypoint_detection its persons, `pipeline.num_train_examples`), whose
number is known only once the split is read. `resolve` turns them into `train.steps` and
`train.warmup_steps` (zeroing the epoch fields, so the result passes the checks again;
a multi-task config counts the examples of `config.task`, and gets the decoder positions
of its longest task sequence, `multitask.shared_max_seq_len`)
and returns a FrozenConfigDict: nothing downstream can change a field after the jitted
functions have read it.
"""

from __future__ import annotations

import math

import ml_collections

from pix2seq_jax.config import multitask


def resolve(config: ml_collections.ConfigDict,
            num_train_examples: int | None = None) -> ml_collections.FrozenConfigDict:
  """A frozen copy of a validated `config` with epochs resolved to steps.

  steps = ceil(epochs * examples / batch_size); warmup_steps = round(warmup_epochs *
  examples / batch_size). `num_train_examples` (images, or persons for keypoints) is
  needed only when an epoch field is set.
  """
  resolved = ml_collections.ConfigDict(config.to_dict())
  if multitask.is_multitask(resolved):  # one decoder for every task's sequences
    resolved.model.max_seq_len = multitask.shared_max_seq_len(resolved)
  train = resolved.train
  if train.epochs > 0 or train.warmup_epochs > 0:
    if not num_train_examples:
      raise ValueError('train.epochs / train.warmup_epochs need the number of train images '
                       '(of train examples: persons for keypoint_detection).')
    steps_per_epoch = num_train_examples / train.batch_size
    if train.epochs > 0:
      train.steps = max(1, math.ceil(train.epochs * steps_per_epoch))
      train.epochs = 0.0
    if train.warmup_epochs > 0:
      train.warmup_steps = round(train.warmup_epochs * steps_per_epoch)
      train.warmup_epochs = 0.0
  return ml_collections.FrozenConfigDict(resolved)


def thaw(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A mutable copy (of a frozen or mutable config), e.g. to derive another run's config."""
  return ml_collections.ConfigDict(config.to_dict())


def require_frozen(config: ml_collections.ConfigDict, user: str) -> None:
  """Refuses a mutable config where `user` binds its fields into jitted code.

  A field changed after binding would silently do nothing; `resolve` freezes a config.
  """
  if not isinstance(config, ml_collections.FrozenConfigDict):
    raise TypeError(f'{user} binds config fields when it is built: pass the frozen config '
                    'from pix2seq_jax.config.resolve.resolve(config), so that no field can '
                    'change afterwards.')
