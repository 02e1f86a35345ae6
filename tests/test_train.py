"""The train step: it fits, round-trips through checkpoints, runs in bfloat16, accumulates
gradients exactly, freezes stages; and gives the same losses on 1, 4 and 8 devices."""

import os
import signal

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from pix2seq_jax.config import checks as config_checks
from pix2seq_jax.data import synthetic
from pix2seq_jax.evaluation import val_loss
from pix2seq_jax.models import build, tree_paths
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import optimizer, preemption
from pix2seq_jax.train import state as state_lib
from pix2seq_jax.train import step as step_lib
from pix2seq_jax.workdir import checkpoints
from tests import multi_device_run as multi_device_run_lib
from tests.tiny import frozen, tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=9, num_bins=64)  # the shapes dataset's


def _batch(config, rng):
  return synthetic.random_batch(rng, config.train.batch_size, config.data.image_size,
                                vocab_lib.sequence_length(config.data.max_instances), VOCAB.size,
                                uniform_weights=True)


def _trainer(config):
  """(frozen config, mesh, optimizer, jitted step, initial state) of a tiny config."""
  config = frozen(config)
  mesh = mesh_lib.make_mesh()
  tx = optimizer.make_optimizer(config)
  step = step_lib.train_step_for(config, build.model_graphdef(config, VOCAB), mesh, tx)
  return config, mesh, tx, step, state_lib.create_train_state(config, VOCAB, mesh, tx)


@pytest.fixture(scope='module')
def no_dropout(shapes_dir):
  """The tiny model without dropout, so that a fixed batch gives a fixed loss."""
  config = tiny_config(shapes_dir)
  config.model.dropout = config.model.drop_path = 0.0
  config.train.warmup_steps = 0  # the first step already moves the parameters
  return _trainer(config)


def _fit(trainer, batch, steps):
  config, mesh, _, step, state = trainer
  state = jax.tree.map(lambda x: x.copy(), state)  # the step donates its input
  placed = mesh_lib.put_batch(batch, mesh)
  losses = []
  for index in range(steps):
    state, metrics = step(state, placed, index)
    losses.append(float(metrics['loss']))
  return losses, state, metrics


def test_train_step_fits_a_fixed_batch(no_dropout):
  config = no_dropout[0]
  assert config.model.dropout == config.model.drop_path == 0.0  # bound before it was built
  losses, state, metrics = _fit(no_dropout, _batch(config, np.random.default_rng(0)), 4)
  assert int(state.step) == 4
  # Without dropout the same batch gives the same loss unless the parameters moved: the
  # updates alone must lower it (with dropout, its noise could too).
  assert losses[-1] < losses[1] < losses[0], losses
  assert np.isfinite(float(metrics['grad_norm']))


def test_the_step_inputs_are_host_values_made_without_device_work(no_dropout):
  """Besides state and batch, the jitted step takes numpy values, so the host never waits
  for the device to make them: the learning rate from the host's table, the seed as key
  data (the key the step derives its draws from, with the state's step counter)."""
  config, _, _, step, _ = no_dropout
  for index in (0, 1, config.train.steps, 10 ** 6):
    with jax.transfer_guard('disallow'):  # no array is put on a device
      inputs = step.inputs(index)
    for leaf in jax.tree.leaves(inputs):
      assert isinstance(leaf, (np.ndarray, np.generic)), (index, type(leaf))
    hyperparams, key_data = inputs
    assert hyperparams['learning_rate'] == np.float32(
        optimizer.learning_rate_schedule(config.train)(index))
  np.testing.assert_array_equal(key_data, jax.random.key_data(jax.random.key(config.seed)))


def test_batches_are_placed_on_the_mesh_ahead_of_their_step():
  mesh, pulled = mesh_lib.make_mesh(), []

  def source():
    for index in range(5):
      pulled.append(index)
      yield {'image': np.full((8, 2), index, np.uint8)}

  placed = mesh_lib.placed_batches(source(), mesh, ahead=2)
  first = next(placed)
  assert pulled == [0, 1, 2]  # the next two are on their way to the devices
  assert isinstance(first['image'], jax.Array)
  assert first['image'].sharding == mesh_lib.batch_sharded(mesh)
  assert [int(b['image'][0, 0]) for b in [first, *placed]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize('processes, expected', [
    (1, list(range(1, 11))),  # one process: every step, alone (no collective)
    (2, [3, 4, 6, 8, 9])])  # several: every 3 steps, and at saves (4, 8) and the last (9)
def test_processes_agree_on_signals_every_n_steps_and_at_saves(processes, expected):
  agree = preemption.SignalAgreement(3, processes)
  due = [step for step in range(1, 11)
         if processes == 1 or agree.due(step, saving=step in (4, 8, 9))]
  assert due == [s for s in expected if s <= 10]
  assert agree(signal.SIGTERM, 5, saving=False) == (signal.SIGTERM if processes == 1 else None)
  assert agree.collectives == 0


def test_checkpoint_round_trip(no_dropout, tmp_path):
  config, mesh, tx, step, _ = no_dropout
  batch = _batch(config, np.random.default_rng(1))
  _, state, _ = _fit(no_dropout, batch, 1)
  manager = checkpoints.make_manager(str(tmp_path))
  checkpoints.save(manager, 1, state)
  assert os.path.isdir(os.path.join(tmp_path, 'checkpoints', '1'))
  abstract = state_lib.abstract_train_state(config, VOCAB, mesh, tx)
  restored = checkpoints.restore(checkpoints.make_manager(str(tmp_path)), abstract)
  assert int(restored.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))
  # Inference reads only the parameters and batch statistics, with no optimizer built.
  model = checkpoints.restore_model(checkpoints.make_manager(str(tmp_path)),
                                    checkpoints.model_template(config, VOCAB, mesh))
  assert set(model) == {'step', 'params', 'batch_stats'} and int(model['step']) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(model['params']))
  placed = mesh_lib.put_batch(batch, mesh)
  _, expected = step(jax.tree.map(lambda x: x.copy(), state), placed, 1)
  _, got = step(restored, placed, 1)
  assert float(got['loss']) == float(expected['loss'])
  assert checkpoints.restore(checkpoints.make_manager(str(tmp_path / 'empty')), abstract) is None


def _first_moments(state) -> list[np.ndarray]:
  """AdamW's first moments after one step: (1 - b1) times the clipped gradient."""
  return jax.tree.leaves(jax.device_get(optax.tree_utils.tree_get(state.opt_state, 'mu')))


def test_bfloat16_step_computes_the_float32_gradient_and_update(no_dropout, shapes_dir):
  """The bfloat16 step's loss, gradients (AdamW's first moments) and parameter updates
  against the float32 step's on the same batch: every leaf's gradient within bfloat16's
  rounding, in direction and size; updates in the same direction."""
  config32 = no_dropout[0]
  initial = jax.device_get(no_dropout[4].params)
  batch = _batch(config32, np.random.default_rng(2))
  (loss32,), state32, _ = _fit(no_dropout, batch, 1)
  config = tiny_config(shapes_dir)
  config.model.dropout = config.model.drop_path = 0.0
  config.train.warmup_steps = 0
  config.train.compute_dtype = 'bfloat16'
  (loss16,), state16, _ = _fit(_trainer(config), batch, 1)
  assert np.isfinite(loss16)
  assert abs(loss16 - loss32) / loss32 < 0.02
  assert loss16 != loss32  # it really ran in bfloat16
  state16, state32 = jax.device_get((state16, state32))
  # Parameters, batch statistics and optimizer state stay float32.
  for leaf in jax.tree.leaves((state16.params, state16.batch_stats, state16.opt_state)):
    assert leaf.dtype in (np.float32, np.int32), leaf.dtype
  moments16, moments32 = _first_moments(state16), _first_moments(state32)
  assert len(moments16) == len(moments32) == len(jax.tree.leaves(initial))
  difference = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
  whole16, whole32 = (np.concatenate([m.ravel() for m in ms]) for ms in (moments16, moments32))
  assert difference(whole16, whole32) < 0.05
  largest = max(np.linalg.norm(m) for m in moments32)
  compared = 0
  for m16, m32 in zip(moments16, moments32):
    # Each leaf, the backbone's (bfloat16 batch norm, the largest errors) included; leaves
    # whose float32 gradient is zero or rounding noise (attention key biases: softmax
    # ignores them) have no direction to compare.
    if np.linalg.norm(m32) > 1e-6 * largest:
      assert difference(m16, m32) < 0.35, (m32.shape, difference(m16, m32))
      compared += 1
  assert compared > 0.75 * len(moments32)
  # Adam's first update is about the learning rate times the gradient's sign: the bfloat16
  # step moves the parameters the same way wherever the gradient is not near zero.
  moved16, moved32 = (np.concatenate([(a - b).ravel() for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(initial))]) for state in (state16, state32))
  clear = np.abs(whole32) > 1e-3 * np.abs(whole32).max()
  assert clear.mean() > 0.3
  assert (np.sign(moved16[clear]) == np.sign(moved32[clear])).mean() > 0.99
  # Activations are bfloat16 all the way (batch norm and embeddings keep the dtype);
  # logits come out float32 for the loss (dtypes by abstract evaluation).
  graphdef = build.model_graphdef(config32, VOCAB)
  params16 = step_lib.cast_floats(state16.params, np.dtype('bfloat16'))
  images, tokens = batch['image'][:2], batch['input_tokens'][:2]
  dtype = lambda fn: jax.eval_shape(lambda p, s: fn(nnx.merge(graphdef, p, s)), params16,
                                    state16.batch_stats).dtype
  assert dtype(lambda model: model.backbone(images.astype('bfloat16'), train=True)) == 'bfloat16'
  assert dtype(lambda model: model.encode(images, train=False)) == 'bfloat16'
  assert dtype(lambda model: model(images, tokens, train=False)) == np.float32


def test_grad_accumulation_equals_one_step_on_the_whole_batch(shapes_dir):
  # A ViT backbone: no batch norm, whose per-micro-batch statistics would differ.
  config = tiny_config(shapes_dir)
  config.model.variant = 'vit_tiny'
  config.model.dropout = config.model.drop_path = 0.0
  batch = _batch(config, np.random.default_rng(3))
  batch['loss_weights'] = np.random.default_rng(4).uniform(
      size=batch['loss_weights'].shape).astype(np.float32)  # unequal micro-batch weights
  (loss1,), state1, _ = _fit(_trainer(config), batch, 1)
  config.train.grad_accum_steps = 4
  (loss4,), state4, _ = _fit(_trainer(config), batch, 1)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state4.params, state1.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               state4.opt_state, state1.opt_state)


def test_val_loss_and_perplexities_match_a_direct_computation(no_dropout):
  config, mesh, _, _, state = no_dropout
  graphdef = build.model_graphdef(config, VOCAB)
  rng = np.random.default_rng(5)
  batch = _batch(config, rng)
  batch['loss_weights'] = rng.choice([0.0, 0.1, 1.0], size=batch['loss_weights'].shape)
  batch['loss_weights'] = batch['loss_weights'].astype(np.float32)
  batch['mask'] = np.arange(config.train.batch_size) < config.train.batch_size - 1
  sums = val_loss.make_val_loss_fn(graphdef, VOCAB, mesh)(
      state.params, state.batch_stats, mesh_lib.put_batch(batch, mesh))
  # Twice the same batch: the ratios do not change.
  accumulated = val_loss.ValLoss()
  accumulated.add(sums)
  accumulated.add(sums)
  got = accumulated.metrics()

  forward = jax.jit(lambda params, stats, images, tokens: nnx.merge(graphdef, params, stats)(
      images, tokens, train=False))  # one compilation, not one per operation
  logits = np.asarray(forward(state.params, state.batch_stats, batch['image'],
                              batch['input_tokens']), np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
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
  norm statistic, scale or bias moves (FrozenBatchNorm2d); everything else trains."""
  config = tiny_config(shapes_dir)
  config.model.frozen_backbone_stages = 2
  config.model.frozen_batch_norm = True
  config.train.weight_decay = 0.5  # decay alone would move a frozen matrix
  config.train.warmup_steps = 0
  config, mesh, _, step, state = _trainer(config)
  initial = jax.device_get((state.params, state.batch_stats))
  for index in range(2):  # the second step reaches the branches behind zero-initialised norms
    batch = mesh_lib.put_batch(_batch(config, np.random.default_rng(index)), mesh)
    state, _ = step(state, batch, index)
  params, stats = jax.device_get((state.params, state.batch_stats))
  frozen_params = optimizer.frozen_mask(params, optimizer.frozen_prefixes(config.model))
  flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
  names = {'/'.join(tree_paths.path_names(path)): bool(is_frozen)
           for path, is_frozen in flat(frozen_params)}
  assert names['backbone/stem/kernel/value'] and names['backbone/blocks/0/conv1/kernel/value']
  assert not names['backbone/blocks/1/conv1/kernel/value']
  assert names['backbone/blocks/1/norm1/scale/value']
  # stem_pre, stem (+ norms) and block 0 (2 convs, 2 norms): 12; the scale and bias of
  # the 9 norms of blocks 1-3 (two each and a shortcut's): 18.
  assert sum(names.values()) == 12 + 18
  assert all(frozen for name, frozen in names.items()
             if name.startswith('backbone/') and ('_norm/' in name or '/norm' in name))
  for (path, old), (_, new), (_, is_frozen) in zip(flat(initial[0]), flat(params),
                                                   flat(frozen_params)):
    changed = not np.array_equal(old, new)
    assert changed != is_frozen, (tree_paths.path_names(path), changed)
  jax.tree.map(np.testing.assert_array_equal, initial[1], stats)


def test_frozen_stages_are_refused_for_a_vit(shapes_dir):
  config = tiny_config(shapes_dir)
  config.model.variant = 'vit_tiny'
  config.model.frozen_backbone_stages = 1
  with pytest.raises(config_checks.ConfigError, match='frozen_backbone_stages'):
    config_checks.validate(config)


@pytest.fixture(scope='module')
def one_device_losses():
  """tests/multi_device_run.py's steps on this process's one device."""
  return multi_device_run_lib.losses(1, shard=False)[0]


@pytest.mark.slow
@pytest.mark.xdist_group('multi_device')
def test_one_and_eight_devices_give_the_same_losses(multi_device_run, one_device_losses):
  """The same batches on one device here, and on a mesh of 8 of a process with 8 (the
  sharded test below runs on a mesh of 4 of them)."""
  one = one_device_losses
  np.testing.assert_allclose(multi_device_run['losses']['8'], one, rtol=1e-4)
  assert one[2] != one[0]  # the steps really trained


@pytest.mark.slow
@pytest.mark.xdist_group('multi_device')
def test_sharded_parameters_give_the_same_losses_with_a_shard_per_device(multi_device_run,
                                                                        one_device_losses):
  np.testing.assert_allclose(multi_device_run['losses']['4_sharded'], one_device_losses,
                             rtol=1e-4)
  full = multi_device_run['largest_param']
  shards = multi_device_run['largest_param_shard_shapes']
  assert len(shards) == 1  # every device holds a quarter of the largest parameter
  assert np.prod(shards[0]) * 4 == np.prod(full)
