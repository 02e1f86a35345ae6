"""The optimizer against hand-computed values: the schedule, AdamW, weight decay, clipping.

Every expected number comes from a closed-form numpy formula written here, never from
optax, so that a schedule or masking bug in pix2seq_jax/train/optimizer.py shows (the
resume and determinism tests only compare the code with itself). One test compares with
optax, bit for bit: the host's table of learning rates against optax's schedule, which the
train step used to evaluate on the device every step.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
import optax
import pytest

from pix2seq_jax.config import default
from pix2seq_jax.train import optimizer

PEAK, END_FACTOR, STEPS, WARMUP = 0.1, 0.01, 110, 10
END = PEAK * END_FACTOR


def _config(**train) -> ml_collections.ConfigDict:
  """The default config (no epochs to resolve) with `train` fields overridden."""
  config = default.get_config()
  config.train.update({'learning_rate': PEAK, 'end_lr_factor': END_FACTOR, 'steps': STEPS,
                       'warmup_steps': WARMUP, **train})
  return config


def _lr(schedule: str, step: int, **train) -> float:
  return float(optimizer.HostHyperparams(_config(schedule=schedule, **train).train)(
      step)['learning_rate'])


# --- The learning-rate schedule -------------------------------------------------------

@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_warmup_rises_linearly_from_zero_to_the_peak(schedule):
  # lr(s) = PEAK * s / WARMUP for s < WARMUP; the decay starts at PEAK at s = WARMUP.
  for step, expected in [(0, 0.0), (1, PEAK / 10), (5, PEAK / 2), (9, PEAK * 0.9),
                         (WARMUP, PEAK)]:
    assert _lr(schedule, step) == pytest.approx(expected, rel=1e-6, abs=1e-9), step


def test_linear_decay_reaches_the_end_rate_at_train_steps():
  # After warmup: PEAK + (END - PEAK) * (s - WARMUP) / (STEPS - WARMUP), then END.
  decay = STEPS - WARMUP
  for step in [WARMUP, 35, 60, 85, STEPS - 1]:
    expected = PEAK + (END - PEAK) * (step - WARMUP) / decay
    assert _lr('linear', step) == pytest.approx(expected, rel=1e-6), step
  assert _lr('linear', 60) == pytest.approx((PEAK + END) / 2, rel=1e-6)  # the midpoint
  for step in [STEPS, STEPS + 1, 10 * STEPS]:
    assert _lr('linear', step) == pytest.approx(END, rel=1e-6), step


def test_cosine_decay_reaches_the_end_rate_at_train_steps():
  # After warmup: END + (PEAK - END) * 0.5 * (1 + cos(pi * (s - WARMUP) / decay)).
  decay = STEPS - WARMUP
  for step in [WARMUP, 20, 35, 60, 85, STEPS - 1]:
    expected = END + (PEAK - END) * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / decay))
    assert _lr('cosine', step) == pytest.approx(expected, rel=1e-5), step  # f32 cos
  # Midpoint: cos(pi/2) = 0, half-way between peak and end (0.0505), not PEAK / 2.
  assert _lr('cosine', 60) == pytest.approx(0.0505, rel=1e-6)
  # A quarter in: 0.001 + 0.099 * 0.5 * (1 + cos(pi/4)) = 0.0854999...
  assert _lr('cosine', 35) == pytest.approx(0.001 + 0.099 * (2 + math.sqrt(2)) / 4, rel=1e-6)
  for step in [STEPS, STEPS + 1, 10 * STEPS]:
    assert _lr('cosine', step) == pytest.approx(END, rel=1e-6), step


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_no_warmup_starts_at_the_peak_and_decays_over_all_steps(schedule):
  assert _lr(schedule, 0, warmup_steps=0) == pytest.approx(PEAK, rel=1e-6)
  # Half-way is now step STEPS / 2 = 55, where both schedules give (PEAK + END) / 2.
  assert _lr(schedule, STEPS // 2, warmup_steps=0) == pytest.approx((PEAK + END) / 2,
                                                                    rel=1e-6)
  assert _lr(schedule, STEPS, warmup_steps=0) == pytest.approx(END, rel=1e-6)


def test_end_lr_factor_zero_decays_to_zero():
  for schedule in ['linear', 'cosine']:
    assert _lr(schedule, STEPS, end_lr_factor=0.0) == pytest.approx(0.0, abs=1e-9)
    assert _lr(schedule, 60, end_lr_factor=0.0) == pytest.approx(PEAK / 2, rel=1e-6)


@pytest.mark.parametrize('schedule, warmup, end_factor, steps', [
    ('linear', 10, 0.01, 300), ('cosine', 10, 0.01, 300), ('cosine', 0, 0.0, 500),
    ('linear', 0, 0.1, 37), ('cosine', 40, 0.1, 30)])  # the last: warmup longer than the run
def test_the_host_table_equals_optax_to_the_last_bit(schedule, warmup, end_factor, steps):
  """`HostHyperparams` reads the learning rate from a table; optax's schedule evaluated
  per step in float32 (as the step's input was made before) gives the same bits at every
  step, past the end of the run too."""
  train = _config(schedule=schedule, warmup_steps=warmup, end_lr_factor=end_factor,
                  steps=steps).train
  optax_schedule = optimizer.learning_rate_schedule(train)
  expected = np.array([np.float32(optax_schedule(step)) for step in range(steps + 11)])
  host = optimizer.HostHyperparams(train)
  got = np.array([host(step)['learning_rate'] for step in range(steps + 11)])
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, expected)
  assert host(10 ** 9)['learning_rate'] == np.float32(optax_schedule(10 ** 9))


def test_an_unknown_schedule_is_refused():
  with pytest.raises(ValueError, match='schedule'):
    optimizer.learning_rate_schedule(_config(schedule='step').train)


def test_hyperparams_are_float32_scalars_of_the_config():
  train = _config(b1=0.8, b2=0.99, weight_decay=0.3, grad_clip_norm=2.5).train
  values = optimizer.HostHyperparams(train)(5)
  assert set(values) == {'learning_rate', 'b1', 'b2', 'weight_decay', 'clip_norm'}
  for name, value in values.items():
    assert value.dtype == np.float32 and np.ndim(value) == 0, name
  expected = {'learning_rate': PEAK / 2, 'b1': 0.8, 'b2': 0.99, 'weight_decay': 0.3,
              'clip_norm': 2.5}
  for name, value in expected.items():
    assert float(values[name]) == pytest.approx(value, rel=1e-6), name
  # grad_clip_norm 0 (the official fine-tuning config) means no clipping: an infinite norm.
  train.grad_clip_norm = 0.0
  assert np.isposinf(optimizer.HostHyperparams(train)(5)['clip_norm'])


# --- The update: AdamW, the weight-decay mask, clipping --------------------------------

def _params() -> dict:
  """A small tree: matrices (kernel, embedding) and vectors (bias, norm scale)."""
  rng = np.random.default_rng(0)
  return {'dense': {'kernel': rng.normal(size=(3, 2)).astype(np.float32),
                    'bias': rng.normal(size=(2,)).astype(np.float32)},
          'embed': {'embedding': rng.normal(size=(4, 2)).astype(np.float32)},
          'norm': {'scale': 1 + rng.normal(size=(2,)).astype(np.float32)}}


def _grads(seed: int, scale: float = 1.0) -> dict:
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: (scale * rng.normal(size=p.shape)).astype(np.float32),
                      _params())


def _optax_steps(config, grads_per_step):
  """The parameters and optimizer states after `make_optimizer(config)` steps, each with
  `HostHyperparams(config.train)(step)` as the train step passes them."""
  tx = optimizer.make_optimizer(config)
  params = _params()
  state = tx.init(params)
  states = []
  for step, grads in enumerate(grads_per_step):
    state = optimizer.with_hyperparams(state, optimizer.HostHyperparams(config.train)(step))
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    states.append(state)
  return params, states


def _numpy_adamw(train, grads_per_step, decayed: set[str]):
  """AdamW by hand, in float64: clip the gradients by their global norm, then
  m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, m^ = m / (1 - b1^t), v^ = v / (1 - b2^t),
  p -= lr_t * (m^ / (sqrt(v^) + 1e-8) + wd * p) with the wd term only on `decayed` leaves,
  lr_t of the linear schedule. Returns (parameters, the first step's clipped gradients)."""
  assert train.schedule == 'linear'
  flat = {'/'.join(k): v.astype(np.float64) for k, v in _flat(_params()).items()}
  m = {k: np.zeros_like(v) for k, v in flat.items()}
  v2 = {k: np.zeros_like(v) for k, v in flat.items()}
  b1, b2, wd, clip = train.b1, train.b2, train.weight_decay, train.grad_clip_norm
  clipped_first = None
  for step, grads in enumerate(grads_per_step):
    t = step + 1
    g = {'/'.join(k): x.astype(np.float64) for k, x in _flat(grads).items()}
    norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in g.values()))
    if clip > 0 and norm > clip:
      g = {k: x * clip / norm for k, x in g.items()}
    if clipped_first is None:
      clipped_first = g
    if step < train.warmup_steps:
      lr = train.learning_rate * step / train.warmup_steps
    else:
      frac = min(step - train.warmup_steps, train.steps - train.warmup_steps) / (
          train.steps - train.warmup_steps)
      end = train.learning_rate * train.end_lr_factor
      lr = train.learning_rate + (end - train.learning_rate) * frac  # 'linear'
    for k in flat:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
      adam = (m[k] / (1 - b1 ** t)) / (np.sqrt(v2[k] / (1 - b2 ** t)) + 1e-8)
      flat[k] = flat[k] - lr * (adam + (wd * flat[k] if k in decayed else 0.0))
  return flat, clipped_first


def _flat(tree: dict) -> dict[tuple[str, ...], np.ndarray]:
  return {tuple(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


MATRICES = {'dense/kernel', 'embed/embedding'}
ALL = MATRICES | {'dense/bias', 'norm/scale'}


@pytest.mark.parametrize('decay_all, decayed', [(False, MATRICES), (True, ALL)])
def test_two_adamw_steps_match_a_hand_computation(decay_all, decayed):
  # Big weight decay and learning rate so that the decay term is far above the tolerance;
  # no clipping; two steps with different gradients so the moments and bias corrections
  # matter (one step of Adam is only sign(g)).
  config = _config(schedule='linear', warmup_steps=0, steps=4, learning_rate=0.1,
                   end_lr_factor=0.5, b1=0.9, b2=0.95, weight_decay=0.5,
                   grad_clip_norm=0.0, decay_norms_and_biases=decay_all)
  grads = [_grads(1), _grads(2, scale=0.3)]
  params, _ = _optax_steps(config, grads)
  expected, _ = _numpy_adamw(config.train, grads, decayed)
  for key, value in _flat(params).items():
    np.testing.assert_allclose(value, expected['/'.join(key)], rtol=1e-5, atol=1e-6,
                               err_msg='/'.join(key))


def test_weight_decay_alone_follows_the_mask():
  # With zero gradients Adam's step is 0, so the update is -lr * wd * p exactly where the
  # mask decays: matrices by default, every parameter with decay_norms_and_biases.
  for decay_all, decayed in [(False, MATRICES), (True, ALL)]:
    config = _config(warmup_steps=0, learning_rate=0.1, weight_decay=0.5,
                     decay_norms_and_biases=decay_all)
    zeros = jax.tree.map(np.zeros_like, _params())
    params, _ = _optax_steps(config, [zeros])
    for key, value in _flat(params).items():
      before = _flat(_params())[key]
      factor = 1 - 0.1 * 0.5 if '/'.join(key) in decayed else 1.0
      np.testing.assert_allclose(value, before * factor, rtol=1e-6, err_msg=str(key))


def _first_moment(state) -> dict:
  """Adam's first moment m = (1 - b1) * g after one step: the gradient it saw."""
  return optax.tree_utils.tree_get(state, 'mu')


@pytest.mark.parametrize('clip, scale, clipped', [
    (1.0, 10.0, True),   # norm ~ 10 * sqrt(16) > 1: scaled down to norm 1
    (100.0, 10.0, False),  # below the norm: untouched
    (0.0, 1e4, False),   # 0 never clips, however large the gradient
])
def test_gradients_are_clipped_to_the_global_norm_before_adam(clip, scale, clipped):
  config = _config(warmup_steps=0, b1=0.9, grad_clip_norm=clip)
  grads = _grads(3, scale=scale)
  norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                       for g in jax.tree.leaves(grads)))
  assert (clip > 0 and norm > clip) == clipped  # the case is the one named
  factor = clip / norm if clipped else 1.0
  params, states = _optax_steps(config, [grads, _grads(4)])
  mu = _first_moment(states[0])
  for key, g in _flat(grads).items():
    np.testing.assert_allclose(_flat(mu)[key], (1 - 0.9) * g * factor, rtol=1e-5,
                               err_msg=str(key))
  # And the whole two-step update agrees with the hand computation, clipping included.
  expected, first = _numpy_adamw(config.train, [grads, _grads(4)], MATRICES)
  for key, g in _flat(grads).items():
    np.testing.assert_allclose(first['/'.join(key)], g * factor, rtol=1e-6)
  for key, value in _flat(params).items():
    np.testing.assert_allclose(value, expected['/'.join(key)], rtol=1e-5, atol=1e-6,
                               err_msg=str(key))


def test_with_hyperparams_sets_the_state_values_in_float32():
  config = _config(warmup_steps=0, grad_clip_norm=0.0)
  tx = optimizer.make_optimizer(config)
  state = optimizer.with_hyperparams(tx.init(_params()),
                                     optimizer.HostHyperparams(config.train)(0))
  stored = state[0].hyperparams
  assert float(stored['learning_rate']) == pytest.approx(PEAK, rel=1e-6)
  assert np.isposinf(float(stored['clip_norm']))
  assert all(np.asarray(v).dtype == np.float32 for v in stored.values())


def test_frozen_backbone_stem_gets_no_update():
  # tiny variant, frozen_backbone_stages=1 freezes the stem (and its norms); the rest,
  # e.g. block 0 and the decoder, still moves.
  config = _config(warmup_steps=0, learning_rate=0.1)
  config.model.variant = 'tiny'
  config.model.frozen_backbone_stages = 1
  assert ('backbone', 'stem') in optimizer.frozen_prefixes(config.model)
  params = {'backbone': {'stem': {'kernel': np.ones((2, 2), np.float32)},
                         'blocks': {'0': {'conv1': {'kernel': np.ones((2, 2), np.float32)}}}},
            'decoder': {'bias': np.ones((2,), np.float32)}}
  tx = optimizer.make_optimizer(config)
  state = optimizer.with_hyperparams(tx.init(params), optimizer.HostHyperparams(config.train)(0))
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), state, params)
  assert np.all(np.asarray(updates['backbone']['stem']['kernel']) == 0)
  assert np.all(np.asarray(updates['backbone']['blocks']['0']['conv1']['kernel']) != 0)
  assert np.all(np.asarray(updates['decoder']['bias']) != 0)
