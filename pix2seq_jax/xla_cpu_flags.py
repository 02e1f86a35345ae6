"""The XLA:CPU settings this project runs with, applied when `pix2seq_jax` is imported.

`--xla_cpu_multi_thread_eigen=false`: XLA:CPU does not hand dots and convolutions to
Eigen's own intra-op thread pool. The small matrix-vector products of cached decoding
then skip a thread hand-off per product, and the train step runs faster too
(BENCHMARKS.md, "XLA:CPU threads": measured side by side, with the commands).

XLA reads XLA_FLAGS once, when JAX starts its CPU backend, so the flag is added to the
environment at import, before any backend starts; a process that started one earlier
keeps its settings. A value the user set in XLA_FLAGS is kept as it is. GPU and TPU
backends ignore these flags; child processes inherit them (TensorFlow's XLA knows them).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {'--xla_cpu_multi_thread_eigen': 'false'}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Adds each of DEFAULTS that XLA_FLAGS does not set already; returns the added flags."""
  flags = environ.get('XLA_FLAGS', '')
  added = [f'{name}={value}' for name, value in DEFAULTS.items() if name not in flags]
  if added:
    environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()
  return added
