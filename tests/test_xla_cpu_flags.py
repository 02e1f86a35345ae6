"""The XLA:CPU flags are added to XLA_FLAGS keeping the user's, and the inference compile
options apply on the CPU only (when a run applies the flags: test_cpu_runtime.py)."""

import pytest

from pix2seq_jax.runtime import xla_cpu_flags


def test_flags_are_added_once_and_a_user_value_is_kept():
  environ = {}
  assert xla_cpu_flags.apply_defaults(environ) == ['--xla_cpu_multi_thread_eigen=false']
  assert environ['XLA_FLAGS'] == '--xla_cpu_multi_thread_eigen=false'
  assert xla_cpu_flags.apply_defaults(environ) == []  # already there
  assert environ['XLA_FLAGS'] == '--xla_cpu_multi_thread_eigen=false'

  environ = {'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=true --xla_dump_to=/tmp/d'}
  assert xla_cpu_flags.apply_defaults(environ) == []
  assert environ['XLA_FLAGS'] == '--xla_cpu_multi_thread_eigen=true --xla_dump_to=/tmp/d'


def test_inference_options_apply_on_cpu_unless_xla_flags_sets_them():
  assert xla_cpu_flags.inference_compiler_options('cpu', {}) == xla_cpu_flags.INFERENCE_OPTIONS
  assert xla_cpu_flags.inference_compiler_options('gpu', {}) == {}
  user = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=individual_dot'}
  assert xla_cpu_flags.inference_compiler_options('cpu', user) == {}


@pytest.mark.xla_default
def test_the_inference_options_turn_off_the_ynnpack_dot_fusion_of_xlas_default():
  """A dot that XLA:CPU hands to YNNPACK by default (as the train step's are) is left to
  XLA's own emitter under the inference options (the Predictor's use: test_predict)."""
  import jax
  import jax.numpy as jnp

  x, w = jnp.ones((8, 256)), jnp.ones((256, 256))
  lowered = jax.jit(jnp.matmul).lower(x, w)
  assert 'ynn_fusion' in lowered.compile().as_text()  # XLA's default on this jax
  options = xla_cpu_flags.inference_compiler_options('cpu', {})
  assert 'ynn_fusion' not in lowered.compile(compiler_options=options).as_text()
