"""Jitted functions kept per process, keyed by the structure they compile.

Building a train step, an initialiser or a decoder twice in one process (a resumed run,
an evaluation after training, a notebook making a second Predictor, the tests) would
otherwise trace it again, and tracing a model costs seconds. Keys hold only what shapes
the program (graphdef, mesh, dtypes, decode settings); values such as the learning rate
or the seed are inputs of the programs, not part of the key. The tf.data pipelines keep
their traced per-example function here too (`pipeline.preprocess_fn`, keyed by the whole
data config and the vocabulary).
"""

from __future__ import annotations

import collections
from typing import Callable, Hashable, TypeVar

T = TypeVar('T')
MAX_ENTRIES = 32
_entries: 'collections.OrderedDict[Hashable, object]' = collections.OrderedDict()


def cached(key: Hashable, build: Callable[[], T]) -> T:
  """The value `build()` made for `key` in this process (made now on first use).

  The least recently used of more than MAX_ENTRIES values is dropped.
  """
  if key in _entries:
    _entries.move_to_end(key)
    return _entries[key]
  value = build()
  _entries[key] = value
  if len(_entries) > MAX_ENTRIES:
    _entries.popitem(last=False)
  return value
