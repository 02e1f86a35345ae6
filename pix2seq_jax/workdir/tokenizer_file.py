"""The captioning tokenizer a workdir was trained with: copied into it at the start of
training (`store`) and read back from it, checked, by every later run (`stored_path`).

A workdir pairs its weights with one SentencePiece model: a run that resumes it with
another file, or a workdir whose copy is missing or was replaced, is refused naming the
file, since other pieces would silently change what every text token means.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax

from pix2seq_jax.workdir import files as workdir_lib


def sha256_of(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def store(workdir: str, source: str) -> str:
  """Copies `source` into `workdir` (process 0) unless the workdir has it already; returns
  the workdir's copy. Refuses a source that differs from the workdir's tokenizer."""
  target = os.path.join(workdir, workdir_lib.TOKENIZER)
  if not os.path.isfile(source):
    raise FileNotFoundError(f'data.tokenizer={source!r}: no such file. Point it at a '
                            'SentencePiece model (python -m pix2seq_jax.data.train_tokenizer '
                            'trains one on the train captions).')
  digest = sha256_of(source)
  if os.path.exists(os.path.join(workdir, workdir_lib.TOKENIZER_INFO)):
    return check_same(workdir, source)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    if os.path.abspath(source) != os.path.abspath(target):
      shutil.copyfile(source, target)
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.TOKENIZER_INFO),
                           {'sha256': digest, 'source': os.path.abspath(source)})
  return target


def check_same(workdir: str, source: str) -> str:
  """The workdir's tokenizer (`stored_path`), after refusing a `source` file that differs
  from it (e.g. the data.tokenizer of --mode=eval)."""
  stored = stored_path(workdir)
  if sha256_of(source) != sha256_of(stored):
    raise ValueError(
        f'data.tokenizer={source} differs from {stored}, the tokenizer {workdir} was '
        'trained with: its text tokens would mean other pieces. Point data.tokenizer at '
        f'{stored}, or train into a new workdir.')
  return stored


def stored_path(workdir: str) -> str:
  """The workdir's tokenizer file, refused where it is missing or differs from the one
  the workdir was trained with."""
  target = os.path.join(workdir, workdir_lib.TOKENIZER)
  info_path = os.path.join(workdir, workdir_lib.TOKENIZER_INFO)
  if not os.path.isfile(target) or not os.path.isfile(info_path):
    missing = target if not os.path.isfile(target) else info_path
    raise FileNotFoundError(
        f'{missing} is missing: {workdir} was trained for captioning with the SentencePiece '
        'model it keeps there. Copy the training run\'s tokenizer.model and tokenizer.json '
        'back into the workdir.')
  with open(info_path) as f:
    expected = json.load(f)['sha256']
  if sha256_of(target) != expected:
    raise ValueError(
        f'{target} differs from the tokenizer {workdir} was trained with (sha256 '
        f'{expected[:12]}..., see {info_path}): its text tokens would mean other pieces. '
        'Put the training run\'s tokenizer.model back.')
  return target
