"""Bad settings are refused before any work, naming the field; every config file is valid."""

import re

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


@pytest.mark.parametrize('field, value, match', [
    ('data.source', 'imagenet', "config.data.source='imagenet' is unknown"),
    ('data.image_size', 100, 'not divisible by the resnet_tiny stride 16; try 96'),
    ('data.coco_dir', '/no/such/coco', "config.data.coco_dir: train images path '/no/such/coco"),
    ('data.train_annotations', '/no/such.json', 'config.data.train_annotations: train annotations'),
    ('data.max_instances', 0, 'config.data.max_instances=0 must be positive'),
    ('decode.max_objects', 9, 'the decoder has positions for 8 objects'),
])
def test_bad_data_settings_are_refused(shapes_dir, field, value, match):
  config = tiny_config(shapes_dir)
  if field.startswith('data.coco_dir') or field.startswith('data.train_'):
    config.data.source = 'coco_files'
    config.data.coco_dir = ''
    config.data.train_images = config.data.val_images = shapes_dir
    config.data.train_annotations = config.data.val_annotations = shapes_dir
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_checks.ConfigError, match=re.escape(match)):
    config_checks.validate(config, mode='train')


@pytest.mark.parametrize('devices, processes, field', [
    (3, 1, 'train.batch_size=4 must be divisible by the number of devices (3)'),
    (1, 3, 'train.batch_size=4 must be divisible by the number of devices (1) and processes (3)'),
    (2, 1, 'eval.batch_size=3'),
])
def test_a_batch_that_does_not_split_over_devices_is_refused(shapes_dir, monkeypatch, devices,
                                                             processes, field):
  config = tiny_config(shapes_dir)
  if field.startswith('eval'):
    config.eval.batch_size = 3
  monkeypatch.setattr(config_checks.jax, 'device_count', lambda: devices)
  monkeypatch.setattr(config_checks.jax, 'process_count', lambda: processes)
  with pytest.raises(config_checks.ConfigError, match=re.escape(field)):
    config_checks.validate(config, mode='train')
  config_checks.validate(config, mode='summary')  # summary runs anywhere
