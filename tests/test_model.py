"""Model shapes, parameter counts and batch-norm behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pix2seq_jax.models import backbones, build, resnet, transformer, variants, vit
from pix2seq_jax.models.counted_rngs import CountedRngs
from pix2seq_jax.tasks import vocab as vocab_lib
from tests.tiny import tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)


def _param_count(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@nnx.jit(static_argnames='train')
def _encode(model, images, train):
  return model.encode(images, train=train)


def test_tiny_model_output_shapes(shapes_dir):
  config = tiny_config(shapes_dir)
  config.model.dropout = config.model.drop_path = 0.1
  model = build.build_model(config, VOCAB, nnx.Rngs(0))
  images = jnp.zeros((2, 64, 64, 3))
  memory = _encode(model, images, False)
  assert memory.shape == (2, (64 // 16) ** 2, variants.VARIANTS['tiny'].decoder_dim)
  tokens = jnp.zeros((2, vocab_lib.sequence_length(8)), jnp.int32)
  logits = nnx.jit(lambda model, images, tokens: model(images, tokens, train=True,
                                                      rngs=nnx.Rngs(dropout=1)))(
      model, images, tokens)
  assert logits.shape == (2, tokens.shape[1], VOCAB.size)
  assert np.isfinite(np.asarray(logits)).all()


def test_counted_rngs_give_the_parameters_and_dropout_of_nnx_rngs(shapes_dir):
  """Inside jax.jit, a model built with CountedRngs(key) has nnx.Rngs(key)'s parameters
  and runs with nnx.Rngs(dropout=key)'s dropout and DropPath masks."""
  config = tiny_config(shapes_dir)
  assert config.model.dropout == config.model.drop_path == 0.1
  key = jax.random.key(3)
  built = jax.jit(lambda k, make: nnx.state(build.build_model(config, VOCAB, make(k))),
                  static_argnums=1)
  reference, counted = built(key, nnx.Rngs), built(key, CountedRngs)
  assert len(jax.tree.leaves(reference)) == len(jax.tree.leaves(counted)) > 100
  jax.tree.map(np.testing.assert_array_equal, counted, reference)
  model = nnx.merge(nnx.graphdef(build.abstract_model(config, VOCAB)), reference)
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
  tokens = jax.random.randint(jax.random.key(2), (2, vocab_lib.sequence_length(8)), 0,
                              VOCAB.size)
  run = nnx.jit(lambda model, make: model(images, tokens, train=True, rngs=make(7)),
                static_argnums=1)
  dropped = run(model, CountedRngs)
  np.testing.assert_array_equal(dropped, run(model, lambda seed: nnx.Rngs(dropout=seed)))
  assert not np.array_equal(dropped, run(model, lambda seed: None))  # the masks drop


@pytest.mark.parametrize('name', sorted(backbones.BACKBONES))
def test_backbone_strides_match_the_table(name):
  backbone = backbones.abstract_backbone(name)
  assert backbone.stride == backbones.STRIDES[name]
  features = jax.eval_shape(lambda: backbones.BACKBONES[name](rngs=CountedRngs(0))(
      jnp.zeros((1, 64, 64, 3)), train=False))
  assert features.shape[1:3] == (64 // backbone.stride, 64 // backbone.stride)
  assert features.shape[3] == backbone.num_features


# Official totals (the official README, in millions of parameters, one decimal) and, where
# known, the backbone's share.
# (vit_l, 341.2M, takes longer to build abstractly: BENCHMARKS.md, "Official parity".)
OFFICIAL = {'r50': (36.6e6, 23.5e6), 'r50_c4': (84.7e6, 8.5e6), 'vit_b': (115.2e6, None)}


@pytest.mark.slow  # builds each full-size model abstractly
@pytest.mark.parametrize('variant', sorted(OFFICIAL))
def test_variants_have_the_official_parameter_counts(shapes_dir, variant):
  """With the official vocabulary (3000 tokens) and 512 positions the totals round to the
  official ones (the converter maps every array one to one: tests/test_official_parity.py)."""
  config = tiny_config(shapes_dir)
  config.model.variant = variant
  config.model.max_seq_len = 512
  config.data.max_instances = 100
  vocab = vocab_lib.for_categories('official', range(1, 81), 1000)
  model = build.abstract_model(config, vocab)
  total, trunk = OFFICIAL[variant]
  assert round(_param_count(model) / 1e5) == round(total / 1e5)
  if trunk:
    assert abs(_param_count(model.backbone) - trunk) / trunk < 0.01


def test_patchify_keeps_patches_whole():
  images = jnp.arange(2 * 16 * 24 * 3, dtype=jnp.float32).reshape(2, 16, 24, 3)
  patches = vit.Patchify(8)(images, train=False)
  assert patches.shape == (2, 2, 3, 8 * 8 * 3)
  np.testing.assert_array_equal(patches[1, 1, 2].reshape(8, 8, 3), images[1, 8:16, 16:24])


def test_drop_path_drops_whole_examples():
  x = jnp.ones((4000, 3, 5))
  out = transformer.DropPath(0.25)(x, nnx.Rngs(dropout=0))
  per_example = np.asarray(out).reshape(4000, -1)
  assert set(np.unique(per_example)) <= {np.float32(0.0), np.float32(1 / 0.75)}
  assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # all or nothing
  assert abs((per_example[:, 0] == 0).mean() - 0.25) < 0.03
  np.testing.assert_array_equal(transformer.DropPath(0.25)(x, None), x)


def test_batch_norm_statistics_update_only_in_training(shapes_dir):
  model = build.build_model(tiny_config(shapes_dir), VOCAB, nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  _encode(model, images, False)
  after_eval = nnx.state(model, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)
  _encode(model, images, True)
  after_train = nnx.state(model, nnx.BatchStat)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after_train)
  assert any(jax.tree.leaves(changed))


def test_frozen_batch_norm_is_the_running_average_norm_without_parameter_gradients():
  """DETR's FrozenBatchNorm2d: the running-statistics batch norm as one affine map, whose
  scale, bias and statistics get no gradient while the input's is unchanged."""
  norm = nnx.BatchNorm(6, rngs=nnx.Rngs(0))
  keys = jax.random.split(jax.random.key(3), 5)
  norm.scale[...] = jax.random.uniform(keys[0], (6,), minval=0.5, maxval=2.0)
  norm.bias[...] = jax.random.normal(keys[1], (6,))
  norm.mean[...] = jax.random.normal(keys[2], (6,))
  norm.var[...] = jax.random.uniform(keys[3], (6,), minval=0.1, maxval=3.0)
  x = 3.0 * jax.random.normal(keys[4], (2, 5, 5, 6))
  want = norm(x, use_running_average=True)
  np.testing.assert_allclose(resnet._normed(norm, x, 'frozen'), want, rtol=1e-5, atol=1e-5)
  loss = lambda module, x, mode: jnp.sum(jnp.sin(resnet._normed(module, x, mode)))
  params = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(norm, x, 'frozen')
  for leaf in jax.tree.leaves(params):
    np.testing.assert_array_equal(leaf, 0.0)
  np.testing.assert_allclose(jax.grad(loss, argnums=1)(norm, x, 'frozen'),
                             jax.grad(loss, argnums=1)(norm, x, 'running'), rtol=1e-5,
                             atol=1e-5)


def test_frozen_batch_norms_are_frozen_paths_of_the_resnet():
  model = backbones.abstract_backbone('resnet50')
  backbones.freeze(model, 0, True)
  paths = model.frozen_paths()
  assert ('stem_norm',) in paths and ('blocks', '0', 'shortcut', 'norm') in paths
  assert len(paths) == 1 + 16 * 3 + 4  # the stem's, 3 per block and 4 shortcut projections'
  assert all(path[-1].startswith('norm') or path[-1].endswith('_norm') for path in paths)
  backbones.freeze(model, 2, True)  # the stem and block 0-2 whole, the other blocks' norms
  paths = model.frozen_paths()
  assert ('blocks', '2') in paths and ('blocks', '2', 'norm1') not in paths
  assert ('blocks', '3', 'norm1') in paths and ('blocks', '3', 'conv1') not in paths


@pytest.mark.xla_default
def test_pointwise_conv_equals_a_1x1_conv():
  for stride, size in ((1, 8), (2, 8), (2, 7)):
    pointwise = resnet.PointwiseConv(6, 5, stride, rngs=nnx.Rngs(0))
    conv = nnx.Conv(6, 5, (1, 1), strides=stride, padding='SAME', use_bias=False,
                    rngs=nnx.Rngs(1))
    conv.kernel[...] = pointwise.kernel[...]
    x = jax.random.normal(jax.random.key(stride), (2, size, size, 6))
    np.testing.assert_allclose(pointwise(x), conv(x), rtol=1e-5, atol=1e-5)
    # Its hand-written backward equals differentiating the 1x1 convolution.
    loss = lambda module, x: jnp.sum(jnp.sin(module(x)))
    for argnums in (nnx.DiffState(0, nnx.Param), 1):
      ours = nnx.grad(loss, argnums=argnums)(pointwise, x)
      theirs = nnx.grad(loss, argnums=argnums)(conv, x)
      if argnums == 1:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
      else:
        np.testing.assert_allclose(ours['kernel'][...], theirs['kernel'][...], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.xla_default
@pytest.mark.parametrize('cin,kernel,stride,size,method', [
    (3, 7, 2, 16, 'patches'), (3, 7, 2, 13, 'patches'), (3, 3, 2, 9, 'patches'),
    (30, 3, 1, 7, 'offsets'), (30, 3, 1, 6, 'offsets'), (30, 3, 2, 7, 'patches')])
def test_matmul_grad_conv_equals_a_conv_with_its_gradients(cin, kernel, stride, size, method):
  ours = resnet.MatmulGradConv(cin, 5, kernel, stride, rngs=nnx.Rngs(0))
  assert ours.method == method
  pad = (kernel - 1) // 2
  conv = nnx.Conv(cin, 5, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                  use_bias=False, rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(conv.kernel.shape, ours.kernel.shape)
  conv.kernel[...] = ours.kernel[...]
  x = jax.random.normal(jax.random.key(kernel), (2, size, size + 1, cin))
  np.testing.assert_allclose(ours(x), conv(x), rtol=1e-5, atol=1e-5)
  # Its kernel gradient (matmuls) equals differentiating the convolution.
  loss = lambda module, x: jnp.sum(jnp.sin(module(x)))
  for argnums in (nnx.DiffState(0, nnx.Param), 1):
    got = nnx.grad(loss, argnums=argnums)(ours, x)
    want = nnx.grad(loss, argnums=argnums)(conv, x)
    if argnums != 1:
      got, want = got['kernel'][...], want['kernel'][...]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resnet_convs_pick_their_kernel_gradient():
  model = resnet.resnet_tiny(rngs=nnx.Rngs(0))  # 3x3 stems of 3 and 16 channels
  assert model.stem_pre.method == 'patches' and model.stem.method == 'patches'
  methods = {block.conv1.stride: block.conv1.method for block in model.blocks}  # 3x3 x 32+
  assert methods == {1: 'offsets', 2: 'patches'}


@pytest.mark.xla_default
@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (1, 7, 9, 2), (1, 1, 2, 1)])
def test_max_pool_equals_flax_max_pool_with_its_gradient(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  flax_pool = lambda x: nnx.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  np.testing.assert_array_equal(resnet.max_pool_same(x), flax_pool(x))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
  np.testing.assert_allclose(grad(resnet.max_pool_same), grad(flax_pool), rtol=1e-6)


def _convs(model) -> list:
  return [m for _, m in nnx.iter_graph(model)
          if isinstance(m, (resnet.PointwiseConv, resnet.MatmulGradConv))]


def test_xla_and_matmul_grad_convolutions_give_the_same_outputs_and_gradients():
  # 3x3 convs of both kernel-gradient methods, strided and not, and a strided 1x1.
  model = resnet.ResNet(resnet.BasicBlock, (1, 1), (32, 32), (1, 2), stem='small',
                        stem_width=32, rngs=nnx.Rngs(0))
  assert {conv.method for conv in _convs(model) if hasattr(conv, 'method')} == {
      'patches', 'offsets'}
  for _, norm in nnx.iter_graph(model):  # no zero-initialised scale hides a gradient
    if isinstance(norm, nnx.BatchNorm):
      norm.scale[...] = jnp.full_like(norm.scale[...], 1.5)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))

  @nnx.jit
  def loss_and_grads(model, x):
    loss = lambda model, x: jnp.sum(jnp.sin(model(x, train=True)))
    return nnx.value_and_grad(loss, argnums=(nnx.DiffState(0, nnx.Param), 1))(model, x)

  results = {}
  for impl in ('xla', 'matmul_grad'):
    resnet.use_conv_impl(model, impl, 'cpu')
    assert {conv.impl for conv in _convs(model)} == {impl}
    results[impl] = jax.tree.map(np.asarray, loss_and_grads(nnx.clone(model), x))
  flat_xla, flat_mm = (jax.tree.leaves(results[impl]) for impl in ('xla', 'matmul_grad'))
  assert len(flat_xla) == len(flat_mm) > 10
  for ours, theirs in zip(flat_mm, flat_xla):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_conv_impl_is_resolved_per_backend_and_set_by_the_config(shapes_dir):
  assert resnet.resolve_conv_impl('auto', 'cpu') == 'matmul_grad'
  assert resnet.resolve_conv_impl('auto', 'gpu') == 'xla'
  assert resnet.resolve_conv_impl('auto', 'tpu') == 'xla'
  assert resnet.resolve_conv_impl('matmul_grad', 'gpu') == 'matmul_grad'  # honoured
  assert resnet.resolve_conv_impl('xla', 'cpu') == 'xla'
  with pytest.raises(ValueError, match="conv_impl='cudnn'"):
    resnet.resolve_conv_impl('cudnn', 'gpu')
  config = tiny_config(shapes_dir)
  for impl, want in (('auto', 'matmul_grad'), ('xla', 'xla'), ('matmul_grad', 'matmul_grad')):
    config.model.conv_impl = impl
    model = build.abstract_model(config, VOCAB)  # on this CPU
    convs = _convs(model)
    assert len(convs) > 10 and {conv.impl for conv in convs} == {want}


def test_conv_impl_and_matmul_precision_are_checked(shapes_dir):
  from pix2seq_jax.config import checks
  config = tiny_config(shapes_dir)
  config.model.conv_impl = 'cudnn'
  with pytest.raises(checks.ConfigError, match=r"config.model.conv_impl='cudnn' is unknown"):
    checks.validate(config, mode='summary')
  config.model.variant, config.model.conv_impl = 'vit_tiny', 'xla'
  with pytest.raises(checks.ConfigError, match='conv_impl=auto'):
    checks.validate(config, mode='summary')
  config = tiny_config(shapes_dir)
  config.train.matmul_precision = 'fp32'
  with pytest.raises(checks.ConfigError, match=r"config.train.matmul_precision='fp32'"):
    checks.validate(config, mode='summary')


def test_a_workdir_written_before_conv_impl_and_matmul_precision_loads(shapes_dir, tmp_path):
  import json

  from pix2seq_jax.config import workdir_config
  saved = tiny_config(shapes_dir).to_dict()
  del saved['model']['conv_impl'], saved['train']['matmul_precision']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = workdir_config.load(str(tmp_path))
  assert config.model.conv_impl == 'auto' and config.train.matmul_precision == 'default'
