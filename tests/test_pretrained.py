"""ImageNet ResNet-50 weights load from torchvision/timm layouts, and wrong files are named."""

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from pix2seq_jax.models import build, pretrained
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import optimizer
from pix2seq_jax.train import state as state_lib
from tests.tiny import frozen, tiny_config

VOCAB = vocab_lib.Vocabulary(num_classes=5, num_bins=64)


def torchvision_resnet50_state_dict(seed: int = 0, stages: int = 4) -> dict[str, np.ndarray]:
  """The 320 tensors of torchvision's resnet50().state_dict(), random, written out by hand."""
  rng = np.random.default_rng(seed)
  state = {}

  def conv(name, cout, cin, k):
    state[f'{name}.weight'] = rng.normal(size=(cout, cin, k, k)).astype(np.float32)

  def bn(name, channels):
    state[f'{name}.weight'] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    state[f'{name}.bias'] = rng.normal(size=channels).astype(np.float32)
    state[f'{name}.running_mean'] = rng.normal(size=channels).astype(np.float32)
    state[f'{name}.running_var'] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    state[f'{name}.num_batches_tracked'] = np.array(1000, np.int64)

  conv('conv1', 64, 3, 7)
  bn('bn1', 64)
  cin = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3)[:stages], (64, 128, 256, 512)), 1):
    for j in range(blocks):
      prefix = f'layer{stage}.{j}'
      conv(f'{prefix}.conv1', width, cin, 1)
      bn(f'{prefix}.bn1', width)
      conv(f'{prefix}.conv2', width, width, 3)
      bn(f'{prefix}.bn2', width)
      conv(f'{prefix}.conv3', width * 4, width, 1)
      bn(f'{prefix}.bn3', width * 4)
      if j == 0:
        conv(f'{prefix}.downsample.0', width * 4, cin, 1)
        bn(f'{prefix}.downsample.1', width * 4)
      cin = width * 4
  state['fc.weight'] = rng.normal(size=(1000, 2048)).astype(np.float32)
  state['fc.bias'] = np.zeros(1000, np.float32)
  return state


def _backbone_state(variant):
  config = tiny_config('unused')
  config.model.variant = variant
  from flax import nnx
  model = build.abstract_model(config, VOCAB)
  params = nnx.state(model, nnx.Param).to_pure_dict()['backbone']
  stats = nnx.state(model, nnx.BatchStat).to_pure_dict()['backbone']
  zeros = lambda tree: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
  return zeros(params), zeros(stats), model.backbone


def test_torchvision_npz_into_r50(tmp_path):
  state = torchvision_resnet50_state_dict()
  assert len(state) == 320
  path = str(tmp_path / 'resnet50.npz')
  np.savez(path, **state)
  params, stats, backbone = _backbone_state('r50')
  params, stats, ignored = pretrained.load_resnet(path, params, stats, backbone.stage_sizes,
                                                  backbone.stem_kind)
  assert sorted(ignored) == sorted(['fc.weight', 'fc.bias'] +
                                   [k for k in state if k.endswith('num_batches_tracked')])
  np.testing.assert_array_equal(params['stem']['kernel'],
                                state['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats['stem_norm']['mean'], state['bn1.running_mean'])
  # Block 4 is layer2.1; block 3 (layer2.0) has the strided projection shortcut.
  np.testing.assert_array_equal(params['blocks'][4]['conv2']['kernel'],
                                state['layer2.1.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['blocks'][3]['shortcut']['conv']['kernel'][0, 0],
                                state['layer2.0.downsample.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(params['blocks'][15]['norm3']['scale'],
                                state['layer4.2.bn3.weight'])
  np.testing.assert_array_equal(stats['blocks'][15]['norm3']['var'],
                                state['layer4.2.bn3.running_var'])


def test_timm_safetensors_with_a_prefix_into_r50_c4(tmp_path):
  # timm's resnet50 uses the same names; checkpoints saved from DDP carry `module.`.
  state = {f'module.{k}': v for k, v in torchvision_resnet50_state_dict(1).items()
           if not k.endswith('num_batches_tracked')}
  path = str(tmp_path / 'model.safetensors')
  save_file(state, path)
  params, stats, backbone = _backbone_state('r50_c4')
  params, stats, ignored = pretrained.load_resnet(path, params, stats, backbone.stage_sizes,
                                                  backbone.stem_kind)
  assert all(k.startswith(('layer4.', 'fc.')) for k in ignored) and len(ignored) == 50 + 2
  np.testing.assert_array_equal(params['blocks'][12]['conv3']['kernel'][0, 0],
                                state['module.layer3.5.conv3.weight'][:, :, 0, 0].T)


def test_a_wrong_file_lists_missing_unexpected_and_misshaped_keys(tmp_path):
  state = torchvision_resnet50_state_dict()
  del state['layer3.2.conv2.weight']
  state['layer2.0.se.fc1.weight'] = np.zeros((8, 512), np.float32)
  state['layer1.1.bn2.running_mean'] = np.zeros(65, np.float32)
  path = str(tmp_path / 'wrong.npz')
  np.savez(path, **state)
  params, stats, backbone = _backbone_state('r50')
  with pytest.raises(pretrained.PretrainedWeightsError) as error:
    pretrained.load_resnet(path, params, stats, backbone.stage_sizes, backbone.stem_kind)
  message = str(error.value)
  assert path in message
  assert 'missing (1): layer3.2.conv2.weight' in message
  assert 'unexpected (1): layer2.0.se.fc1.weight' in message
  assert 'mis-shaped (1): layer1.1.bn2.running_mean (65,)' in message
  with pytest.raises(pretrained.PretrainedWeightsError, match='no ResNet weights'):
    np.savez(str(tmp_path / 'other.npz'), weight=np.zeros(3))
    pretrained.load_resnet(str(tmp_path / 'other.npz'), params, stats, backbone.stage_sizes,
                           backbone.stem_kind)
  with pytest.raises(pretrained.PretrainedWeightsError, match='safetensors.torch.save_file'):
    (tmp_path / 'r50.pth').write_bytes(b'x')
    pretrained.read_weights(str(tmp_path / 'r50.pth'))


def test_train_state_starts_from_the_file(tmp_path):
  state_dict = torchvision_resnet50_state_dict(2)
  path = str(tmp_path / 'resnet50.safetensors')
  save_file(state_dict, path)
  config = tiny_config('unused')
  config.model.variant = 'r50'
  config.model.pretrained_backbone = path
  config.model.image_normalization = 'imagenet'
  config = frozen(config)
  mesh = mesh_lib.make_mesh()
  abstract = state_lib.abstract_train_state(config, VOCAB, mesh, optimizer.make_optimizer(config))
  # A zero state in the train state's layout (initialising R50 would compile its init).
  state = jax.device_put(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract),
                         jax.tree.map(lambda x: x.sharding, abstract))
  state, ignored = state_lib.with_pretrained_backbone(state, config, mesh)
  assert len(ignored) == 2 + 53  # fc and the batch counters
  backbone = state.params['backbone']
  np.testing.assert_array_equal(np.asarray(backbone['blocks'][7]['conv1']['kernel'][...])[0, 0],
                                state_dict['layer3.0.conv1.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(np.asarray(state.batch_stats['backbone']['stem_norm']['var'][...]),
                                state_dict['bn1.running_var'])
  assert state.params['backbone']['stem']['kernel'][...].sharding.is_fully_replicated
