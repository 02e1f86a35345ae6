"""The precision of float32 matmuls and convolutions in a run (`train.matmul_precision`).

JAX computes float32 dots and convolutions at a backend-dependent precision unless told
otherwise: on recent NVIDIA GPUs (A100, H100) as TF32, whose inputs keep 10 mantissa
bits; on TPUs as one bfloat16 pass; on the CPU as float32. The config names it:
  'default'  the process's setting (jax_default_matmul_precision; JAX's default unless
             set, e.g. by JAX_DEFAULT_MATMUL_PRECISION): the backend's fast mode;
  'high'     TF32 on those GPUs, three bfloat16 passes on TPUs;
  'highest'  true float32 on every backend.
The CPU computes float32 at all three. `traced` binds it into a function at trace time,
so the jitted train step, validation loss, decoding and teacher-forced logits compile at
the run's precision whatever the caller's setting; nothing global changes.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import jax

PRECISIONS = ('default', 'high', 'highest')
F = TypeVar('F', bound=Callable)


def traced(fn: F, matmul_precision: str) -> F:
  """`fn` traced (and so compiled) at `matmul_precision`, one of PRECISIONS; 'default'
  leaves `fn` as it is."""
  if matmul_precision not in PRECISIONS:
    raise ValueError(f'matmul_precision={matmul_precision!r}: use one of {PRECISIONS}.')
  if matmul_precision == 'default':
    return fn

  @functools.wraps(fn)
  def at_precision(*args, **kwargs):
    with jax.default_matmul_precision(matmul_precision):
      return fn(*args, **kwargs)

  return at_precision
