"""train.matmul_precision: the jitted functions are traced at the run's precision, whatever
the caller's setting, and 'default' follows the process's (the suite runs at 'highest')."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pix2seq_jax.evaluation import val_loss
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.runtime import precision
from pix2seq_jax.tasks import vocab as vocab_lib
from tests.tiny import tiny_config


def _dot_and_conv(x, w):
  conv = jax.lax.conv_general_dilated(x[None, None], w[None, None, :3, :3], (1, 1), 'SAME')
  return x @ w, conv


def _precisions(lowered_text: str) -> set[str]:
  """The precisions the dots (`precision = [HIGH, HIGH]`) and convolutions
  (`#stablehlo<precision HIGH>`) of a lowered program name."""
  lines = [line for line in lowered_text.splitlines() if 'precision' in line]
  return {word for line in lines for word in re.findall(r'\b(DEFAULT|HIGHEST|HIGH)\b', line)}


def test_traced_functions_compile_at_their_precision():
  x = jnp.ones((4, 4))
  assert jax.config.jax_default_matmul_precision == 'highest'  # conftest.py
  for name, want in (('high', {'HIGH'}), ('highest', {'HIGHEST'}), ('default', {'HIGHEST'})):
    text = jax.jit(precision.traced(_dot_and_conv, name)).lower(x, x).as_text()
    assert _precisions(text) == want, name
    assert len([line for line in text.splitlines() if 'precision' in line]) == 2  # both ops
  with jax.default_matmul_precision('highest'):  # the caller's setting does not leak in
    text = jax.jit(precision.traced(_dot_and_conv, 'high')).lower(x, x).as_text()
  assert _precisions(text) == {'HIGH'}
  with pytest.raises(ValueError, match="matmul_precision='fp32'"):
    precision.traced(_dot_and_conv, 'fp32')


def test_the_validation_loss_is_traced_at_the_configured_precision(shapes_dir):
  config = tiny_config(shapes_dir)
  vocab = vocab_lib.Vocabulary(num_classes=9, num_bins=config.data.num_bins)
  model = build.abstract_model(config, vocab)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  mesh = mesh_lib.make_mesh()
  size, length = config.data.image_size, vocab_lib.sequence_length(config.data.max_instances)
  batch = {'image': jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32),
           'input_tokens': jax.ShapeDtypeStruct((2, length), jnp.int32),
           'target_tokens': jax.ShapeDtypeStruct((2, length), jnp.int32),
           'loss_weights': jax.ShapeDtypeStruct((2, length), jnp.float32),
           'mask': jax.ShapeDtypeStruct((2,), jnp.float32)}
  fn = val_loss.make_val_loss_fn(graphdef, vocab, mesh, 'high')
  assert _precisions(fn.lower(params, batch_stats, batch).as_text()) == {'HIGH'}
