"""Model shapes, parameter counts and batch-norm behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pix2seq_jax import train_step
from pix2seq_jax import vocab as vocab_lib
from pix2seq_jax.models import resnet, variants
from tests.conftest import tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)


def _param_count(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_tiny_model_output_shapes(shapes_dir):
  config = tiny_config(shapes_dir)
  model = train_step.build_model(config, VOCAB, nnx.Rngs(0))
  images = jnp.zeros((2, 64, 64, 3))
  memory = model.encode(images, train=False)
  assert memory.shape == (2, (64 // 16) ** 2, variants.VARIANTS['tiny'].decoder_dim)
  tokens = jnp.zeros((2, vocab_lib.sequence_length(8)), jnp.int32)
  logits = model(images, tokens, train=True, rngs=nnx.Rngs(dropout=1))
  assert logits.shape == (2, tokens.shape[1], VOCAB.size)
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('name', sorted(resnet.BACKBONES))
def test_backbone_strides_match_the_table(name):
  backbone = nnx.eval_shape(lambda: resnet.BACKBONES[name](rngs=nnx.Rngs(0)))
  assert backbone.stride == resnet.STRIDES[name]
  features = jax.eval_shape(
      lambda: resnet.BACKBONES[name](rngs=nnx.Rngs(0))(jnp.zeros((1, 64, 64, 3)), train=False))
  assert features.shape[1:3] == (64 // backbone.stride, 64 // backbone.stride)


def test_r50_has_the_official_parameter_count(shapes_dir):
  config = tiny_config(shapes_dir)
  config.model.variant = 'r50'
  config.data.max_instances = 100  # official: 512 positions; 501 here
  config.data.num_bins = 1000
  vocab = vocab_lib.Vocabulary(num_classes=80 + 16, num_bins=2900)  # official vocab: 3000
  model = nnx.eval_shape(lambda: train_step.build_model(config, vocab, nnx.Rngs(0)))
  assert abs(_param_count(model) - 36.6e6) / 36.6e6 < 0.03
  assert abs(_param_count(model.backbone) - 23.5e6) / 23.5e6 < 0.01  # ResNet-50 trunk


def test_batch_norm_statistics_update_only_in_training(shapes_dir):
  model = train_step.build_model(tiny_config(shapes_dir), VOCAB, nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  model.encode(images, train=False)
  after_eval = nnx.state(model, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)
  model.encode(images, train=True)
  after_train = nnx.state(model, nnx.BatchStat)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after_train)
  assert any(jax.tree.leaves(changed))


def test_pointwise_conv_equals_a_1x1_conv():
  from pix2seq_jax.models import resnet
  for stride, size in ((1, 8), (2, 8), (2, 7)):
    pointwise = resnet.PointwiseConv(6, 5, stride, rngs=nnx.Rngs(0))
    conv = nnx.Conv(6, 5, (1, 1), strides=stride, padding='SAME', use_bias=False,
                    rngs=nnx.Rngs(1))
    conv.kernel[...] = pointwise.kernel[...]
    x = jax.random.normal(jax.random.key(stride), (2, size, size, 6))
    np.testing.assert_allclose(pointwise(x), conv(x), rtol=1e-5, atol=1e-5)
