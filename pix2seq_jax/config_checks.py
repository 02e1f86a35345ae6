"""Refuses a bad config before any work starts, naming the field and a fix."""

from __future__ import annotations

import os

import ml_collections

from pix2seq_jax import decode
from pix2seq_jax.data import sources
from pix2seq_jax.models import resnet, variants


class ConfigError(ValueError):
  pass


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
  if mode == 'train' and config.train.steps <= 0:
    raise ConfigError(f'config.train.steps={config.train.steps} must be positive.')
  stride = resnet.STRIDES[spec.backbone]
  if data.image_size % stride:
    raise ConfigError(
        f'config.data.image_size={data.image_size} is not divisible by the {spec.backbone} '
        f'stride {stride}; try {max(stride, round(data.image_size / stride) * stride)}.')
  if data.source == 'coco_files' and mode in ('train', 'eval'):
    paths = sources.split_paths(data)
    for split, (images, annotations) in paths.items():
      for kind, path in (('images', images), ('annotations', annotations)):
        if not path or not os.path.exists(path):
          field = 'data.coco_dir' if data.coco_dir else f'data.{split}_{kind}'
          raise ConfigError(f'config.{field}: {split} {kind} path {path!r} does not exist. '
                            'Set data.coco_dir to a COCO-layout folder or give the paths.')


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
