"""The config a workdir was trained with (`<workdir>/config.json`), ready for inference."""

from __future__ import annotations

import json
import os

import ml_collections

from pix2seq_jax.config import checks, default, multitask, resolve
from pix2seq_jax.workdir import files as workdir_lib
from pix2seq_jax.workdir import tokenizer_file


def load(workdir: str, decode_overrides: dict | None = None) -> ml_collections.FrozenConfigDict:
  """The workdir's config, frozen, with `decode` fields optionally replaced.

  Fields added to the defaults after the workdir was written take their defaults. A
  captioning workdir reads its own copy of its tokenizer (`workdir/tokenizer_file`),
  refused where missing or changed.
  Raises FileNotFoundError without config.json, KeyError for an unknown decode field and
  ConfigError for a bad value, or for a changed one where the workdir's task is an
  instance task (it reads no decode setting).
  """
  path = os.path.join(workdir, workdir_lib.CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: is {workdir!r} a training workdir?')
  with open(path) as f:
    saved = json.load(f)
  config = default.get_config()
  config.update(saved)
  for steps, epochs in (('steps', 'epochs'), ('warmup_steps', 'warmup_epochs')):
    if config.train[steps] > 0:  # resolved from epochs by an earlier version, which kept both
      config.train[epochs] = 0.0
  if 'captioning' in multitask.task_names(config):  # the workdir's own tokenizer, checked
    data = (config.tasks.captioning.data if multitask.is_multitask(config) else config.data)
    data.tokenizer = tokenizer_file.stored_path(workdir)
  for key, value in (decode_overrides or {}).items():
    if key not in config.decode:
      raise KeyError(f'decode.{key} is not a decode setting; have {sorted(config.decode)}.')
    if 'object_detection' not in multitask.task_names(config) and value != config.decode[key]:
      raise checks.ConfigError(
          f'decode.{key}={value!r}: {workdir} was trained for {config.task}, which samples '
          'as the official multi-task config and reads no decode setting (docs/tasks.md); '
          'leave the decode settings (and --config) out.')
    config.decode[key] = value
  checks.validate(config, mode='predict')
  return resolve.resolve(config)
