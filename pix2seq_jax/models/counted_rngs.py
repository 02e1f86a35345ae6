"""Random keys for building and running a model inside a trace, counted in Python.

`CountedRngs(key)` returns fold_in(key, i) on its i-th call of `params()` or `dropout()`:
the keys `nnx.Rngs(key)` gives (its default stream serves every name) and those of
`nnx.Rngs(dropout=key).dropout()`, so a model built or run with either has the same
parameters and dropout masks (tests/test_model.py). The model modules only call
`rngs.params()` while they are built and `rngs.dropout()` while they run, so they take
either.

Why not nnx.Rngs inside jax.jit or nnx.eval_shape: its counter is an nnx Variable, and each
update of a traced Variable asks the new value for its `sharding`; a tracer answers with an
error message that JAX builds from every operation traced so far, which makes building a
model, or tracing a train step with dropout, quadratic in its size. A Python counter stages
no update at all.
"""

from __future__ import annotations

import jax


class CountedRngs:
  """fold_in(key, 0), fold_in(key, 1), ... from successive `params()` / `dropout()` calls
  (one stream: as nnx.Rngs(key), or nnx.Rngs(dropout=key) asked for dropout keys only)."""

  def __init__(self, key: int | jax.Array):
    self._key = jax.random.key(key) if isinstance(key, int) else key
    self._count = 0

  def _next(self) -> jax.Array:
    key = jax.random.fold_in(self._key, self._count)
    self._count += 1
    return key

  def params(self) -> jax.Array:
    return self._next()

  def dropout(self) -> jax.Array:
    return self._next()
