"""A persistent XLA compilation cache, so that a second start does not compile again.

On by default for main.py (every mode), the Predictor and serving.load, in
`$XDG_CACHE_HOME/pix2seq_jax/xla` (`~/.cache/...`). The environment variable
PIX2SEQ_COMPILATION_CACHE moves it (a folder) or turns it off ('off'). A cache folder
the user already gave JAX (`jax_compilation_cache_dir`, JAX_COMPILATION_CACHE_DIR) is
kept as it is. Entries are keyed by the compiled program, its options and the JAX
version, so a stale entry is never used; the folder is capped at MAX_BYTES (least
recently used entries go first).
"""

from __future__ import annotations

import os

import jax

ENV = 'PIX2SEQ_COMPILATION_CACHE'
MAX_BYTES = 4 * 2 ** 30


def default_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'pix2seq_jax', 'xla')


def chosen_dir(path: str | None = None) -> str | None:
  """The folder `enable` would use, or None for off: `path` wins over
  PIX2SEQ_COMPILATION_CACHE, which wins over the default folder."""
  chosen = path if path is not None else os.environ.get(ENV, default_dir())
  return None if chosen.strip().lower() in ('', 'off', '0', 'false', 'none') else chosen


def enable(path: str | None = None) -> str | None:
  """Turns the cache on; returns its folder, or None when it is off (`chosen_dir`)."""
  if jax.config.jax_compilation_cache_dir:  # the user's own choice
    return jax.config.jax_compilation_cache_dir
  chosen = chosen_dir(path)
  if chosen is None:
    return None
  os.makedirs(chosen, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', chosen)
  jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  return chosen
