"""Bad settings are refused before any work, naming the field; every config file is valid."""

import pytest

from pix2seq_jax import config_checks
from tests.conftest import tiny_config


@pytest.mark.parametrize('field, value', [
    ('max_objects', 9),  # tiny_config has data.max_instances = 8
    ('max_objects', -1),
    ('temperature', -0.5),
    ('top_k', -1),
    ('top_p', 1.5),
    ('score', 'class_times_area'),
    ('canvas_buckets', 0),
])
def test_bad_decode_settings_are_refused(shapes_dir, field, value):
  config = tiny_config(shapes_dir)
  config.decode[field] = value
  with pytest.raises(config_checks.ConfigError, match=f'config.decode.{field}='):
    config_checks.validate(config, mode='predict')


def test_default_decode_settings_pass(shapes_dir):
  config_checks.validate(tiny_config(shapes_dir), mode='predict')


@pytest.mark.parametrize('name', ['default', 'shapes', 'coco', 'coco_r50_c4', 'coco_vit_b',
                                  'seed_r50_512'])
def test_every_config_file_is_valid(name):
  import importlib
  config = importlib.import_module(f'configs.{name}').get_config()
  config_checks.validate(config, mode='summary')


@pytest.mark.parametrize('section, field, value, match', [
    ('data', 'scale_min', 0.0, 'scale_min'),
    ('data', 'scale_max', 0.2, 'scale_min'),  # below scale_min 0.3
    ('data', 'noise_coord_weight', -1.0, 'noise_coord_weight'),
    ('train', 'compute_dtype', 'float16', 'compute_dtype'),
    ('train', 'grad_accum_steps', 0, 'grad_accum_steps'),
    ('train', 'grad_accum_steps', 3, 'not divisible by train.grad_accum_steps'),
    ('train', 'epochs', -1.0, 'epochs'),
    ('model', 'drop_path', 1.0, 'drop_path'),
    ('model', 'image_normalization', 'caffe', 'image_normalization'),
    ('model', 'variant', 'r101', 'variant'),
    ('model', 'pretrained_backbone', '/no/such/resnet50.safetensors', 'does not exist'),
])
def test_bad_model_and_train_settings_are_refused(shapes_dir, section, field, value, match):
  config = tiny_config(shapes_dir)
  if field == 'pretrained_backbone':
    config.model.variant = 'r50'
    config.model.image_normalization = 'imagenet'
  config[section][field] = value
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.validate(config, mode='train')


def test_pretrained_weights_need_a_resnet_and_imagenet_normalisation(shapes_dir, tmp_path):
  weights = tmp_path / 'r50.npz'
  weights.write_bytes(b'')
  config = tiny_config(shapes_dir)
  config.model.pretrained_backbone = str(weights)
  with pytest.raises(config_checks.ConfigError, match='use r50 or r50_c4'):
    config_checks.validate(config)  # tiny has its own small ResNet
  config.model.variant = 'r50'
  with pytest.raises(config_checks.ConfigError, match='image_normalization=imagenet'):
    config_checks.validate(config)
  config.model.image_normalization = 'imagenet'
  config_checks.validate(config)
