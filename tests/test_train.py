"""The sharded train step: same losses on 1 and 4 devices; checkpoints round-trip."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pix2seq_jax import checkpoint, config_checks, optim, sharding, synthetic, train_step
from pix2seq_jax import tree_paths
from pix2seq_jax import vocab as vocab_lib
from tests.conftest import ROOT, tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)


def _losses_on(devices: int, *flags: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'multi_device_losses.py'),
                        ROOT, *flags], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['devices'] == devices
  return result


@pytest.fixture(scope='module')
def one_device_losses():
  return _losses_on(1)['losses']


def test_one_four_and_eight_devices_give_the_same_losses(one_device_losses):
  one = one_device_losses
  for devices in (4, 8):
    np.testing.assert_allclose(_losses_on(devices)['losses'], one, rtol=1e-4)
  assert one[2] != one[0]  # the steps really trained


def test_sharded_parameters_give_the_same_losses_with_a_shard_per_device(one_device_losses):
  one = one_device_losses
  sharded = _losses_on(4, '--shard_params')
  np.testing.assert_allclose(sharded['losses'], one, rtol=1e-4)
  full, shards = sharded['largest_param'], sharded['largest_param_shard_shapes']
  assert len(shards) == 1  # every device holds a quarter of the largest parameter
  assert np.prod(shards[0]) * 4 == np.prod(full)


def _batch(config, rng):
  return synthetic.random_batch(rng, config.train.batch_size, config.data.image_size,
                                vocab_lib.sequence_length(config.data.max_instances), VOCAB.size,
                                uniform_weights=True)


@pytest.fixture
def trainer(shapes_dir):
  config = tiny_config(shapes_dir)
  mesh = sharding.make_mesh()
  tx = optim.make_optimizer(config)
  step = train_step.make_train_step(config, train_step.model_graphdef(config, VOCAB), mesh, tx)
  return config, mesh, tx, step


def test_train_step_fits_a_fixed_batch(trainer):
  config, mesh, tx, step = trainer
  config.model.dropout = 0.0
  state = train_step.create_train_state(config, VOCAB, mesh, tx)
  batch = sharding.put_batch(_batch(config, np.random.default_rng(0)), mesh)
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert int(state.step) == 4 and losses[-1] < losses[0]
  assert np.isfinite(float(metrics['grad_norm']))


def test_checkpoint_round_trip(trainer, tmp_path):
  config, mesh, tx, step = trainer
  state = train_step.create_train_state(config, VOCAB, mesh, tx)
  batch = sharding.put_batch(_batch(config, np.random.default_rng(1)), mesh)
  state, _ = step(state, batch)
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, 1, state)
  assert os.path.isdir(os.path.join(tmp_path, 'checkpoints', '1'))
  abstract = train_step.abstract_train_state(config, VOCAB, mesh, tx)
  restored = checkpoint.restore(checkpoint.make_manager(str(tmp_path)), abstract)
  assert int(restored.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))
  _, expected = step(state, batch)
  _, got = step(restored, batch)
  assert float(got['loss']) == float(expected['loss'])
  assert checkpoint.restore(checkpoint.make_manager(str(tmp_path / 'empty')), abstract) is None


def _one_step(config, batch, mesh=None):
  """(loss, params) after one step from the seed's initial state."""
  mesh = mesh or sharding.make_mesh()
  tx = optim.make_optimizer(config)
  step = train_step.make_train_step(config, train_step.model_graphdef(config, VOCAB), mesh, tx)
  state = train_step.create_train_state(config, VOCAB, mesh, tx)
  state, metrics = step(state, sharding.put_batch(batch, mesh))
  return float(metrics['loss']), jax.device_get(state)


def test_bfloat16_step_is_finite_and_close_to_float32(shapes_dir):
  config = tiny_config(shapes_dir)
  config.model.dropout = config.model.drop_path = 0.0
  batch = _batch(config, np.random.default_rng(2))
  loss32, state32 = _one_step(config, batch)
  config.train.compute_dtype = 'bfloat16'
  loss16, state16 = _one_step(config, batch)
  assert np.isfinite(loss16)
  assert abs(loss16 - loss32) / loss32 < 0.02
  assert loss16 != loss32  # it really ran in bfloat16
  # Parameters, batch statistics and optimizer state stay float32.
  for leaf in jax.tree.leaves((state16.params, state16.batch_stats, state16.opt_state)):
    assert leaf.dtype in (np.float32, np.int32), leaf.dtype
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-3), state16.params,
               state32.params)
  # Activations are bfloat16 all the way (batch norm and embeddings keep the dtype);
  # logits come out float32 for the loss.
  from flax import nnx
  model = nnx.merge(train_step.model_graphdef(config, VOCAB),
                    train_step.cast_floats(state16.params, np.dtype('bfloat16')),
                    jax.tree.map(jax.numpy.asarray, state16.batch_stats))
  images = batch['image'][:2]
  assert model.backbone(images.astype('bfloat16'), train=True).dtype == 'bfloat16'
  assert model.encode(images, train=False).dtype == 'bfloat16'
  assert model(images, batch['input_tokens'][:2], train=False).dtype == np.float32


def test_grad_accumulation_equals_one_step_on_the_whole_batch(shapes_dir):
  # A ViT backbone: no batch norm, whose per-micro-batch statistics would differ.
  config = tiny_config(shapes_dir)
  config.model.variant = 'vit_tiny'
  config.model.dropout = config.model.drop_path = 0.0
  config.train.batch_size = 8
  batch = _batch(config, np.random.default_rng(3))
  batch['loss_weights'] = np.random.default_rng(4).uniform(
      size=batch['loss_weights'].shape).astype(np.float32)  # unequal micro-batch weights
  loss1, state1 = _one_step(config, batch)
  config.train.grad_accum_steps = 4
  loss4, state4 = _one_step(config, batch)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state4.params, state1.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               state4.opt_state, state1.opt_state)


def test_epochs_resolve_to_steps(shapes_dir):
  config = tiny_config(shapes_dir)
  config.train.batch_size = 128
  config.train.epochs, config.train.warmup_epochs = 80, 2
  resolved = optim.resolve_epochs(config, 118_287)
  assert resolved.train.steps == 73_930  # ceil(80 * 118287 / 128)
  assert resolved.train.warmup_steps == 1848
  assert config.train.steps == 4  # the original is left alone
  schedule = optim.learning_rate_schedule(resolved.train)
  assert float(schedule(1848)) == pytest.approx(config.train.learning_rate)
  config.train.epochs = 0
  assert optim.resolve_epochs(config, 118_287) is config


def test_val_loss_and_perplexities_match_a_direct_computation(shapes_dir):
  from flax import nnx
  from pix2seq_jax import val_loss
  config = tiny_config(shapes_dir)
  mesh = sharding.make_mesh()
  graphdef = train_step.model_graphdef(config, VOCAB)
  state = train_step.create_train_state(config, VOCAB, mesh, optim.make_optimizer(config))
  rng = np.random.default_rng(5)
  batch = _batch(config, rng)
  batch['loss_weights'] = rng.choice([0.0, 0.1, 1.0], size=batch['loss_weights'].shape)
  batch['loss_weights'] = batch['loss_weights'].astype(np.float32)
  batch['mask'] = np.array([True, True, True, False])
  sums = val_loss.make_val_loss_fn(graphdef, VOCAB, mesh)(
      state.params, state.batch_stats, sharding.put_batch(batch, mesh))
  # Twice the same batch: the ratios do not change.
  accumulated = val_loss.ValLoss()
  accumulated.add(sums)
  accumulated.add(sums)
  got = accumulated.metrics()

  model = nnx.merge(graphdef, *jax.device_get((state.params, state.batch_stats)))
  logits = np.asarray(model(batch['image'], batch['input_tokens'], train=False), np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                               keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(log_probs, batch['target_tokens'][..., None], -1)[..., 0]
  w = batch['loss_weights'] * batch['mask'][:, None]
  counted = w > 0
  coord = counted & VOCAB.is_coord(batch['target_tokens'])
  label = counted & VOCAB.is_class(batch['target_tokens'])
  assert coord.sum() > 0 and label.sum() > 0
  np.testing.assert_allclose(got['val_loss'], (nll * w).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(got['val_perplexity'], np.exp(nll[counted].mean()), rtol=1e-5)
  np.testing.assert_allclose(got['val_perplexity_coord'], np.exp(nll[coord].mean()), rtol=1e-5)
  np.testing.assert_allclose(got['val_perplexity_class'], np.exp(nll[label].mean()), rtol=1e-5)


def test_frozen_stages_and_batch_norm_stay_as_they_were(shapes_dir):
  """DETR-style fine-tuning: the stem and stage 1 neither learn nor decay; no batch
  norm statistic moves; everything else trains."""
  config = tiny_config(shapes_dir)
  config.model.frozen_backbone_stages = 2
  config.model.frozen_batch_norm = True
  config.train.weight_decay = 0.5  # decay alone would move a frozen matrix
  config.train.warmup_steps = 0
  mesh = sharding.make_mesh()
  tx = optim.make_optimizer(config)
  step = train_step.make_train_step(config, train_step.model_graphdef(config, VOCAB), mesh, tx)
  before = train_step.create_train_state(config, VOCAB, mesh, tx)
  initial = jax.device_get((before.params, before.batch_stats))
  state = before
  for seed in range(2):  # the second step reaches the branches behind zero-initialised norms
    state, _ = step(state, sharding.put_batch(_batch(config, np.random.default_rng(seed)), mesh))
  params, stats = jax.device_get((state.params, state.batch_stats))
  frozen = optim.frozen_mask(params, optim.frozen_prefixes(config.model))
  flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
  names = {'/'.join(tree_paths.path_names(path)): bool(is_frozen)
           for path, is_frozen in flat(frozen)}
  assert names['backbone/stem/kernel/value'] and names['backbone/blocks/0/conv1/kernel/value']
  assert not names['backbone/blocks/1/conv1/kernel/value']
  assert sum(names.values()) == 12  # stem_pre, stem (+ norms) and block 0 (2 convs, 2 norms)
  for (path, old), (_, new), (_, is_frozen) in zip(flat(initial[0]), flat(params),
                                                   flat(frozen)):
    changed = not np.array_equal(old, new)
    assert changed != is_frozen, (tree_paths.path_names(path), changed)
  jax.tree.map(np.testing.assert_array_equal, initial[1], stats)


def test_frozen_stages_are_refused_for_a_vit(shapes_dir):
  config = tiny_config(shapes_dir)
  config.model.variant = 'vit_tiny'
  config.model.frozen_backbone_stages = 1
  with pytest.raises(config_checks.ConfigError, match='frozen_backbone_stages'):
    config_checks.validate(config)
