"""Refuses a bad config before any work starts, naming the field and a fix."""

from __future__ import annotations

import os

import jax
import ml_collections

from pix2seq_jax import decode
from pix2seq_jax.data import sources, tfds_source
from pix2seq_jax.models import backbones, pix2seq, variants


class ConfigError(ValueError):
  pass


COMPUTE_DTYPES = ('float32', 'bfloat16')


def _positive(config: ml_collections.ConfigDict, *names: str) -> None:
  for name in names:
    section, field = name.split('.')
    value = config[section][field]
    if value <= 0:
      raise ConfigError(f'config.{name}={value} must be positive.')


def validate(config: ml_collections.ConfigDict, *, mode: str = 'train') -> None:
  data = config.data
  if data.source not in sources.SOURCES:
    raise ConfigError(f'config.data.source={data.source!r} is unknown; use one of '
                      f'{list(sources.SOURCES)}.')
  try:
    spec = variants.get_spec(config.model.variant)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _positive(config, 'data.image_size', 'data.max_instances', 'train.batch_size',
            'eval.batch_size', 'train.log_every', 'train.checkpoint_every')
  if data.num_bins < 2:
    raise ConfigError(f'config.data.num_bins={data.num_bins} must be at least 2.')
  _check_decode(config)
  _check_augmentation(data)
  _check_train(config)
  if mode in ('train', 'eval'):
    _check_batch_split(config)
  if mode == 'train' and config.train.steps <= 0 and config.train.epochs <= 0:
    raise ConfigError(f'config.train.steps={config.train.steps} must be positive '
                      '(or set config.train.epochs).')
  stride = backbones.STRIDES[spec.backbone]
  if data.image_size % stride:
    raise ConfigError(
        f'config.data.image_size={data.image_size} is not divisible by the {spec.backbone} '
        f'stride {stride}; try {max(stride, round(data.image_size / stride) * stride)}.')
  if data.source == 'tfds' and mode in ('train', 'eval'):
    try:
      tfds_source.require_prepared(data.tfds_data_dir or tfds_source.default_data_dir())
    except tfds_source.TfdsNotPreparedError as e:
      raise ConfigError(str(e)) from None
  if data.source == 'coco_files' and mode in ('train', 'eval'):
    paths = sources.split_paths(data)
    for split, (images, annotations) in paths.items():
      for kind, path in (('images', images), ('annotations', annotations)):
        if not path or not os.path.exists(path):
          field = 'data.coco_dir' if data.coco_dir else f'data.{split}_{kind}'
          raise ConfigError(f'config.{field}: {split} {kind} path {path!r} does not exist. '
                            'Set data.coco_dir to a COCO-layout folder or give the paths.')


def _check_batch_split(config: ml_collections.ConfigDict) -> None:
  """Every global batch must split evenly over all devices and all processes."""
  devices, processes = jax.device_count(), jax.process_count()
  train = config.train
  for what, size in (('train.batch_size', train.batch_size),
                     ('eval.batch_size', config.eval.batch_size),
                     ('train.batch_size / train.grad_accum_steps',
                      train.batch_size // max(train.grad_accum_steps, 1))):
    if size % devices or size % processes:
      raise ConfigError(
          f'config.{what}={size} must be divisible by the number of devices ({devices}) and '
          f'processes ({processes}); try {max(devices, size // devices * devices)}.')


def _check_augmentation(data: ml_collections.ConfigDict) -> None:
  if not 0 < data.scale_min <= data.scale_max:
    raise ConfigError(f'config.data.scale_min={data.scale_min} and scale_max={data.scale_max} '
                      'must satisfy 0 < scale_min <= scale_max (official: 0.3 and 2.0).')
  for name in ('noise_coord_weight', 'noise_class_weight', 'eos_weight'):
    if data[name] < 0:
      raise ConfigError(f'config.data.{name}={data[name]} must be >= 0.')


def _check_train(config: ml_collections.ConfigDict) -> None:
  train, model = config.train, config.model
  if train.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f'config.train.compute_dtype={train.compute_dtype!r} is unknown; use '
                      f'one of {list(COMPUTE_DTYPES)}.')
  if train.grad_accum_steps < 1:
    raise ConfigError(f'config.train.grad_accum_steps={train.grad_accum_steps} must be >= 1.')
  if train.batch_size % train.grad_accum_steps:
    raise ConfigError(
        f'config.train.batch_size={train.batch_size} is not divisible by '
        f'train.grad_accum_steps={train.grad_accum_steps}; make the batch a multiple of it.')
  if train.epochs < 0 or train.warmup_epochs < 0:
    raise ConfigError('config.train.epochs and train.warmup_epochs must be >= 0.')
  if model.image_normalization not in pix2seq.IMAGE_NORMALIZATIONS:
    raise ConfigError(f'config.model.image_normalization={model.image_normalization!r} is '
                      f'unknown; use one of {list(pix2seq.IMAGE_NORMALIZATIONS)}.')
  if model.pretrained_backbone:
    backbone = variants.get_spec(model.variant).backbone
    if not backbone.startswith('resnet50'):
      raise ConfigError(f'config.model.pretrained_backbone holds ResNet-50 weights, but '
                        f'variant {model.variant!r} has a {backbone} backbone; use r50 or '
                        'r50_c4, or clear pretrained_backbone.')
    if not os.path.exists(model.pretrained_backbone):
      raise ConfigError(f'config.model.pretrained_backbone={model.pretrained_backbone!r} '
                        'does not exist.')
    if model.image_normalization != 'imagenet':
      raise ConfigError('config.model.pretrained_backbone: ImageNet weights expect '
                        'standardised images; set config.model.image_normalization=imagenet.')
  if model.frozen_backbone_stages or model.frozen_batch_norm:
    name = variants.get_spec(model.variant).backbone
    try:
      backbones.freeze(backbones.abstract_backbone(name), model.frozen_backbone_stages,
                       model.frozen_batch_norm)
    except ValueError as e:
      raise ConfigError(
          f'config.model.frozen_backbone_stages={model.frozen_backbone_stages} / '
          f'frozen_batch_norm={model.frozen_batch_norm} for variant {model.variant!r} '
          f'({name}): {e} (2 freezes the stem and stage 1, as DETR; 0 / False: none).'
      ) from None
  for name in ('dropout', 'drop_path'):
    if not 0.0 <= model[name] < 1.0:
      raise ConfigError(f'config.model.{name}={model[name]} must be in [0, 1).')


def _check_decode(config: ml_collections.ConfigDict) -> None:
  dec, max_instances = config.decode, config.data.max_instances
  if not 0 <= dec.max_objects <= max_instances:
    raise ConfigError(
        f'config.decode.max_objects={dec.max_objects} must be in [0, data.max_instances='
        f'{max_instances}] (0: data.max_instances): the decoder has positions for '
        f'{max_instances} objects. Lower it or raise data.max_instances.')
  if dec.temperature < 0:
    raise ConfigError(f'config.decode.temperature={dec.temperature} must be >= 0 '
                      '(0 decodes greedily).')
  if dec.top_k < 0:
    raise ConfigError(f'config.decode.top_k={dec.top_k} must be >= 0 (0: no limit).')
  if not 0.0 <= dec.top_p <= 1.0:
    raise ConfigError(f'config.decode.top_p={dec.top_p} must be in [0, 1] (1: no limit).')
  if dec.canvas_buckets < 1:
    raise ConfigError(f'config.decode.canvas_buckets={dec.canvas_buckets} must be at least 1 '
                      '(1: the square training canvas only).')
  if dec.score not in decode.SCORE_MODES:
    raise ConfigError(f'config.decode.score={dec.score!r} is unknown; use one of '
                      f'{list(decode.SCORE_MODES)}.')
