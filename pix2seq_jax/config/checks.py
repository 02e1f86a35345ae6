"""Refuses a bad or self-contradicting config before any work starts, naming the field and a fix.

Besides values out of range, a config may not set a field that the run would ignore:
  train.steps and train.epochs both > 0, or train.warmup_steps and train.warmup_epochs
  data paths of another source (coco_dir with source 'shapes', tfds_data_dir with
      'coco_files', coco_dir together with the explicit train/val paths it replaces)
  decode.top_k / decode.top_p with decode.temperature 0 (greedy decoding ignores them)
  data.noise_objects / data.corrupt_classes with an instance task (detection's sequence
      augmentation)
and what the keypoint task cannot run without: data.max_instances=1 (one person per
example), data.max_points=17 (COCO's keypoints) and a COCO-files source (the shapes and
TFDS data have no keypoints; annotation files without keypoints are refused when read,
data/sources.py);
and, for fields whose defaults cannot tell "set" from "unset", a command-line override
(`overrides`: the dotted names given as --config.X=...) that the run does not read:
  shapes_* with another source, scale_min/max without scale_jitter, noise weights
  without noise_objects, decode.* with an instance task (which samples as the official
  multi-task config on the square canvas), and in --mode=predict and --mode=summary
  any field outside what the mode reads.
"""

from __future__ import annotations

import os
from typing import Iterable

import jax
import ml_collections

from pix2seq_jax.config import default, multitask
from pix2seq_jax.data import sources, tfds_source
from pix2seq_jax.models import backbones, pix2seq, resnet, variants
from pix2seq_jax.runtime import precision
from pix2seq_jax.tasks import keypoints, segmentation
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import files as workdir_lib

MODES = ('train', 'eval', 'predict', 'summary')
COMPUTE_DTYPES = ('float32', 'bfloat16')
SCHEDULES = ('linear', 'cosine')
# What each mode reads; overrides outside these sections are refused.
_MODE_READS = {'predict': ('decode.',), 'summary': ('data.', 'model.', 'task')}
_SOURCE_FIELDS = {
    'coco_files': ('coco_dir', 'train_images', 'train_annotations', 'val_images',
                   'val_annotations'),
    'tfds': ('tfds_data_dir', 'tfds_export_dir'),
    'shapes': ('shapes_dir', 'shapes_seed', 'shapes_num_train', 'shapes_num_val'),
}


class ConfigError(ValueError):
  """A config the run cannot use; the message names the field and how to fix it."""


def ignored_in_eval(overrides: Iterable[str]) -> list[str]:
  """The overrides --mode=eval does not read (training fields), for a warning: eval runs
  usually repeat the training command."""
  return [name for name in overrides if name.startswith('train.')
          or name in ('model.init_from', 'eval.num_images_drawn')]


def validate(config: ml_collections.ConfigDict, *, mode: str = 'train',
             overrides: Iterable[str] = (), devices: int | None = None,
             processes: int | None = None) -> None:
  """Raises ConfigError on the first problem.

  A multi-task config (`config.tasks`) is checked as a whole (`multitask.entry_problems`),
  then each task's config (`multitask.task_config`) as a single-task one.

  Args:
    mode: 'train', 'eval', 'predict' or 'summary': what the config will be used for.
    overrides: dotted field names set on the command line (e.g. 'train.steps').
    devices, processes: what batches must split over (default: all of this run's).
  """
  if mode not in MODES:
    raise ValueError(f'mode={mode!r}: use one of {MODES}.')
  overrides = tuple(overrides)
  if not multitask.is_multitask(config):
    _validate_task(config, mode, overrides, devices, processes)
    return
  problems = multitask.entry_problems(config)
  if problems:
    raise ConfigError(problems[0])
  if config.model.vocabulary != 'official_multitask':
    raise ConfigError(
        f'config.tasks trains {list(multitask.task_names(config))} in one model, which needs '
        'a prompt token per task: set --config.model.vocabulary=official_multitask '
        f'(got {config.model.vocabulary!r}).')
  decode = sorted(o for o in overrides if o.startswith('decode.'))
  if decode and 'object_detection' not in config.tasks:
    raise ConfigError(f'--config.{decode[0]}: the decode settings are object detection\'s, '
                      'which config.tasks does not train; leave them out.')
  shared = multitask.shared_max_seq_len(config)
  for name in multitask.task_names(config):
    view = multitask.task_config(config, name)
    view.model.max_seq_len = shared
    try:
      _validate_task(view, mode, multitask.task_overrides(overrides, name), devices,
                     processes)
    except ConfigError as e:
      raise ConfigError(f'config.tasks.{name}: {e}') from None


def _validate_task(config: ml_collections.ConfigDict, mode: str, overrides: tuple[str, ...],
                   devices: int | None, processes: int | None) -> None:
  """`validate` of a single-task config."""
  _check_mode_overrides(mode, overrides)
  data = config.data
  if data.source not in sources.SOURCES:
    raise ConfigError(f'config.data.source={data.source!r} is unknown; use one of '
                      f'{list(sources.SOURCES)}.')
  try:
    spec = variants.get_spec(config.model.variant)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _positive(config, 'data.image_size', 'data.max_instances', 'train.batch_size',
            'eval.batch_size', 'train.log_every', 'train.checkpoint_every',
            'train.preemption_check_every')
  if config.eval.num_images_drawn < 0:
    raise ConfigError(f'config.eval.num_images_drawn={config.eval.num_images_drawn} must be '
                      '>= 0 (0 draws no val images into TensorBoard).')
  if data.num_bins < 2:
    raise ConfigError(f'config.data.num_bins={data.num_bins} must be at least 2.')
  _check_source_fields(data, overrides)
  _check_task(config, mode, overrides)
  _check_decode(config, overrides)
  _check_augmentation(data, overrides)
  _check_train(config)
  _check_model(config)
  if mode in ('train', 'eval'):
    check_batch_split(config, jax.device_count() if devices is None else devices,
                       jax.process_count() if processes is None else processes)
  stride = backbones.STRIDES[spec.backbone]
  if data.image_size % stride:
    raise ConfigError(
        f'config.data.image_size={data.image_size} is not divisible by the {spec.backbone} '
        f'stride {stride}; try {max(stride, round(data.image_size / stride) * stride)}.')
  if mode in ('train', 'eval'):
    _check_data_paths(data, config.task)


def _positive(config: ml_collections.ConfigDict, *names: str) -> None:
  for name in names:
    section, field = name.split('.')
    value = config[section][field]
    if value <= 0:
      raise ConfigError(f'config.{name}={value} must be positive.')


def _check_mode_overrides(mode: str, overrides: tuple[str, ...]) -> None:
  reads = _MODE_READS.get(mode)
  if reads is None:
    return
  ignored = [name for name in overrides if not name.startswith(reads)]
  if ignored:
    what = {'predict': 'the decode settings (the model and data come from the workdir\'s '
                       'config.json)',
            'summary': 'the model and data fields'}[mode]
    raise ConfigError(f'--config.{ignored[0]} has no effect in --mode={mode}, which reads only '
                      f'{what}; remove it.')


def _check_source_fields(data: ml_collections.ConfigDict, overrides: tuple[str, ...]) -> None:
  for source, fields in _SOURCE_FIELDS.items():
    if source == data.source:
      continue
    for field in fields:
      # Paths of the file sources default to '' ("unset"); shapes' fields have real
      # defaults, so only a command-line override shows they were meant.
      set_here = source != 'shapes' and data[field] != ''
      if set_here or f'data.{field}' in overrides:
        raise ConfigError(
            f'config.data.{field}={data[field]!r} is read only with data.source={source!r}, '
            f'but data.source={data.source!r}; set --config.data.source={source} or remove '
            f'data.{field}.')
  if data.source == 'coco_files' and data.coco_dir:
    explicit = [f for f in _SOURCE_FIELDS['coco_files'][1:] if data[f]]
    if explicit:
      raise ConfigError(
          f'config.data.coco_dir={data.coco_dir!r} gives all four split paths, so '
          f'data.{explicit[0]}={data[explicit[0]]!r} would be ignored; clear one of them '
          '(--config.data.coco_dir= to use the explicit paths).')


def _check_data_paths(data: ml_collections.ConfigDict, task: str) -> None:
  if data.source == 'tfds':
    try:
      tfds_source.require_prepared(data.tfds_data_dir or tfds_source.default_data_dir())
    except tfds_source.TfdsNotPreparedError as e:
      raise ConfigError(str(e)) from None
  if task == 'captioning':
    for split, (images, captions) in sources.caption_paths(data).items():
      for kind, path in (('images', images), ('captions', captions)):
        if not path or not os.path.exists(path):
          field = 'data.coco_dir' if data.coco_dir else f'data.{split}_{kind}'
          raise ConfigError(f'config.{field}: {split} {kind} path {path!r} does not exist. '
                            'Set data.coco_dir to a COCO-layout folder or give the paths.')
    if not os.path.isfile(data.tokenizer):
      raise ConfigError(f'config.data.tokenizer={data.tokenizer!r} does not exist; point it at '
                        'a SentencePiece model file.')
    return
  if data.source == 'coco_files':
    for split, (images, annotations) in sources.split_paths(data, task).items():
      for kind, path in (('images', images), ('annotations', annotations)):
        if not path or not os.path.exists(path):
          field = 'data.coco_dir' if data.coco_dir else f'data.{split}_{kind}'
          raise ConfigError(f'config.{field}: {split} {kind} path {path!r} does not exist. '
                            'Set data.coco_dir to a COCO-layout folder or give the paths.')


def check_batch_split(config: ml_collections.ConfigDict, devices: int, processes: int) -> None:
  """Every global batch must split evenly over all devices and all processes."""
  train = config.train
  for what, size in (('train.batch_size', train.batch_size),
                     ('eval.batch_size', config.eval.batch_size),
                     ('train.batch_size / train.grad_accum_steps',
                      train.batch_size // max(train.grad_accum_steps, 1))):
    if size % devices or size % processes:
      raise ConfigError(
          f'config.{what}={size} must be divisible by the number of devices ({devices}) and '
          f'processes ({processes}); try {max(devices, size // devices * devices)}.')


def _check_augmentation(data: ml_collections.ConfigDict, overrides: tuple[str, ...]) -> None:
  if not 0 < data.scale_min <= data.scale_max:
    raise ConfigError(f'config.data.scale_min={data.scale_min} and scale_max={data.scale_max} '
                      'must satisfy 0 < scale_min <= scale_max (official: 0.3 and 2.0).')
  for name in ('noise_coord_weight', 'noise_class_weight', 'eos_weight'):
    if data[name] < 0:
      raise ConfigError(f'config.data.{name}={data[name]} must be >= 0.')
  unread = {'scale_jitter': ('scale_min', 'scale_max'),
            'noise_objects': ('noise_coord_weight', 'noise_class_weight')}
  for switch, fields in unread.items():
    for field in fields:
      if not data[switch] and f'data.{field}' in overrides:
        raise ConfigError(f'config.data.{field} is read only with data.{switch}=True, but it '
                          f'is off; set --config.data.{switch}=True or remove data.{field}.')


def _exclusive(train: ml_collections.ConfigDict, steps: str, epochs: str, what: str) -> None:
  if train[steps] > 0 and train[epochs] > 0:
    raise ConfigError(
        f'config.train.{steps}={train[steps]:g} and train.{epochs}={train[epochs]:g} both set '
        f'the {what}; keep one: --config.train.{epochs}=0 for {train[steps]:g} steps, or '
        f'--config.train.{steps}=0 for {train[epochs]:g} epochs.')


def _check_train(config: ml_collections.ConfigDict) -> None:
  train = config.train
  if train.epochs < 0 or train.warmup_epochs < 0 or train.warmup_steps < 0:
    raise ConfigError('config.train.epochs, warmup_epochs and warmup_steps must be >= 0.')
  _exclusive(train, 'steps', 'epochs', 'training length')
  _exclusive(train, 'warmup_steps', 'warmup_epochs', 'warmup')
  if train.steps <= 0 and train.epochs <= 0:
    raise ConfigError(f'config.train.steps={train.steps} must be positive (or set '
                      'config.train.epochs).')
  if train.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f'config.train.compute_dtype={train.compute_dtype!r} is unknown; use '
                      f'one of {list(COMPUTE_DTYPES)}.')
  if train.matmul_precision not in precision.PRECISIONS:
    raise ConfigError(f'config.train.matmul_precision={train.matmul_precision!r} is unknown; '
                      f'use one of {list(precision.PRECISIONS)} (highest: true float32 on '
                      'every backend).')
  if train.schedule not in SCHEDULES:
    raise ConfigError(f'config.train.schedule={train.schedule!r} is unknown; use one of '
                      f'{list(SCHEDULES)}.')
  if train.grad_accum_steps < 1:
    raise ConfigError(f'config.train.grad_accum_steps={train.grad_accum_steps} must be >= 1.')
  if train.batch_size % train.grad_accum_steps:
    raise ConfigError(
        f'config.train.batch_size={train.batch_size} is not divisible by '
        f'train.grad_accum_steps={train.grad_accum_steps}; make the batch a multiple of it.')
  if train.eval_every < 0:
    raise ConfigError(f'config.train.eval_every={train.eval_every} must be >= 0 (0: once, '
                      'after the last step).')


def _check_model(config: ml_collections.ConfigDict) -> None:
  model = config.model
  if model.image_normalization not in pix2seq.IMAGE_NORMALIZATIONS:
    raise ConfigError(f'config.model.image_normalization={model.image_normalization!r} is '
                      f'unknown; use one of {list(pix2seq.IMAGE_NORMALIZATIONS)}.')
  if model.conv_impl not in resnet.CONV_IMPLS:
    raise ConfigError(f'config.model.conv_impl={model.conv_impl!r} is unknown; use one of '
                      f'{list(resnet.CONV_IMPLS)} (auto: matmul_grad on the CPU, xla '
                      'elsewhere).')
  if model.conv_impl != 'auto':
    backbone = variants.get_spec(model.variant).backbone
    if not backbone.startswith('resnet'):
      raise ConfigError(f'config.model.conv_impl={model.conv_impl!r} sets how a ResNet '
                        f'computes its convolutions, but variant {model.variant!r} has a '
                        f'{backbone} backbone; set --config.model.conv_impl=auto.')
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
  if model.vocabulary not in vocab_lib.LAYOUTS:
    raise ConfigError(f'config.model.vocabulary={model.vocabulary!r} is unknown; use one of '
                      f'{list(vocab_lib.LAYOUTS)}.')
  room = vocab_lib.OFFICIAL_TEXT_OFFSET - vocab_lib.OFFICIAL_COORD_OFFSET
  if model.vocabulary in vocab_lib.OFFICIAL_LAYOUTS and config.data.num_bins > room:
    raise ConfigError(f'config.data.num_bins={config.data.num_bins}: the {model.vocabulary} '
                      f'vocabulary holds at most {room} coordinate bins.')
  needed = default.sequence_length(config)
  if model.max_seq_len and model.max_seq_len < needed:
    of = (f'data.max_points={config.data.max_points}'
          if config.task in default.INSTANCE_TASKS
          else f'data.max_instances={config.data.max_instances}')
    raise ConfigError(
        f'config.model.max_seq_len={model.max_seq_len} is shorter than the sequences of '
        f'{of} ({needed} tokens); raise it or set 0 (exactly the sequence length).')
  if model.init_from and model.pretrained_backbone:
    raise ConfigError('config.model.init_from and config.model.pretrained_backbone both set: '
                      'init_from loads every parameter, the backbone included; keep one.')
  if model.init_from:
    for name in (workdir_lib.CONFIG, workdir_lib.CATEGORIES):
      if not os.path.exists(os.path.join(model.init_from, name)):
        raise ConfigError(f'config.model.init_from={model.init_from!r} has no {name}: give a '
                          'training workdir or one written by pix2seq_jax.official.convert.')


_KEYPOINT_FIELDS = ('crop_pad', 'invisible_weight', 'corrupt_keypoints')


# The official sampling of each instance task (the decode.* fields are detection's).
_INSTANCE_TOP_P = {'instance_segmentation': segmentation.TOP_P,
                   'keypoint_detection': keypoints.TOP_P}


def _check_task(config: ml_collections.ConfigDict, mode: str,
                overrides: tuple[str, ...]) -> None:
  """config.task is one the vocabulary can prompt, with the settings its sequences read."""
  task, data = config.task, config.data
  if task not in default.TASKS:
    raise ConfigError(f'config.task={task!r} is unknown; use one of {list(default.TASKS)}.')
  if task != 'keypoint_detection':
    for field in _KEYPOINT_FIELDS:
      if f'data.{field}' in overrides:
        raise ConfigError(f'config.data.{field} is read only with '
                          "task='keypoint_detection'; remove it or set "
                          '--config.task=keypoint_detection.')
  if task != 'captioning':
    for field in _CAPTION_FIELDS:
      if f'data.{field}' in overrides or (field in _CAPTION_PATHS and data[field]):
        raise ConfigError(f'config.data.{field} is read only with task=\'captioning\'; '
                          'remove it or set --config.task=captioning.')
  if task == 'captioning':
    _check_captioning(config, mode, overrides)
    return
  if task == 'object_detection':
    if 'data.max_points' in overrides:
      raise ConfigError('config.data.max_points is read only with an instance task '
                        f'({", ".join(default.INSTANCE_TASKS)}); remove it or set '
                        '--config.task=instance_segmentation.')
    return
  if config.model.vocabulary != 'official_multitask':
    raise ConfigError(
        f'config.task={task!r} needs a prompt token per task, which only the official '
        f'multi-task vocabulary has (model.vocabulary={config.model.vocabulary!r}); set '
        '--config.model.vocabulary=official_multitask.')
  if data.max_points < 1:
    raise ConfigError(f'config.data.max_points={data.max_points} must be positive (official: '
                      f'{default.SEGMENTATION_MAX_POINTS}).')
  for switch in ('noise_objects', 'corrupt_classes'):
    if data[switch]:
      raise ConfigError(
          f'config.data.{switch}=True is object detection\'s sequence augmentation, which '
          f'the {task} sequences (one per object, as the official) do not have; set '
          f'--config.data.{switch}=False.')
  if task == 'keypoint_detection':
    _check_keypoints(data)
  ignored = sorted(name for name in overrides if name.startswith('decode.'))
  if ignored:
    raise ConfigError(
        f'--config.{ignored[0]}: the decode settings are object detection\'s; config.task='
        f'{task!r} samples as the official multi-task config does (temperature 1, top_p '
        f'{_INSTANCE_TOP_P[task]}: docs/tasks.md). Leave --config.decode.* out.')


_CAPTION_PATHS = ('train_captions', 'val_captions', 'tokenizer')
_CAPTION_FIELDS = _CAPTION_PATHS + ('max_text_len', 'captions_per_image', 'text_dropout')


def _check_captioning(config: ml_collections.ConfigDict, mode: str,
                      overrides: tuple[str, ...]) -> None:
  """What task='captioning' reads: the multi-task vocabulary, COCO captions files, a
  tokenizer, and its sequence settings; none of detection's or the instance tasks'."""
  data = config.data
  if config.model.vocabulary != 'official_multitask':
    raise ConfigError(
        'config.task=\'captioning\' needs text tokens and a prompt per task, which only '
        f'the official multi-task vocabulary has (model.vocabulary='
        f'{config.model.vocabulary!r}); set --config.model.vocabulary=official_multitask.')
  if data.source != 'coco_files':
    raise ConfigError(
        f'config.data.source={data.source!r} has no captions; captioning reads COCO '
        'captions files: set --config.data.source=coco_files with data.coco_dir '
        '(annotations/captions_{train,val}2017.json) or data.{train,val}_images and '
        'data.{train,val}_captions.')
  if data.coco_dir:
    explicit = [f for f in ('train_captions', 'val_captions') if data[f]]
    if explicit:
      raise ConfigError(
          f'config.data.coco_dir={data.coco_dir!r} gives the captions files, so '
          f'data.{explicit[0]}={data[explicit[0]]!r} would be ignored; clear one of them.')
  if mode in ('train', 'eval') and not data.tokenizer:
    raise ConfigError(
        'config.data.tokenizer is empty: captioning needs a SentencePiece model. Train one '
        'on the train captions (python -m pix2seq_jax.data.train_tokenizer --captions '
        'CAPTIONS.json --output TOKENIZER.model) or use the official multi-task model\'s.')
  if data.max_text_len < 2:
    raise ConfigError(f'config.data.max_text_len={data.max_text_len} must be at least 2 '
                      f'(official: {default.CAPTIONING_MAX_TEXT_LEN}).')
  if data.captions_per_image < 1:
    raise ConfigError(f'config.data.captions_per_image={data.captions_per_image} must be '
                      f'positive (official: {default.CAPTIONS_PER_IMAGE}).')
  if not 0.0 <= data.text_dropout < 1.0:
    raise ConfigError(f'config.data.text_dropout={data.text_dropout} must be in [0, 1) '
                      f'(official: {default.CAPTIONING_TEXT_DROPOUT}).')
  for switch in ('noise_objects', 'corrupt_classes'):
    if data[switch]:
      raise ConfigError(
          f'config.data.{switch}=True is object detection\'s sequence augmentation; '
          f'captions have none: set --config.data.{switch}=False.')
  for field in ('max_points',) + _KEYPOINT_FIELDS:
    if f'data.{field}' in overrides:
      raise ConfigError(f'config.data.{field} is not read by captioning; remove it.')
  ignored = sorted(name for name in overrides if name.startswith('decode.'))
  if ignored:
    raise ConfigError(
        f'--config.{ignored[0]}: the decode settings are object detection\'s; captioning '
        'samples as the official multi-task config does (temperature 1, no top-k or top-p '
        'limit: docs/tasks.md). Leave --config.decode.* out.')


def _check_keypoints(data: ml_collections.ConfigDict) -> None:
  """What task='keypoint_detection' reads: one person per example, COCO's 17 keypoints,
  COCO person_keypoints files."""
  if data.max_instances != default.KEYPOINTS_MAX_INSTANCES:
    raise ConfigError(
        f'config.data.max_instances={data.max_instances}: keypoint_detection trains on one '
        'person per example (its image cropped to the person, as the official unbatching); '
        f'set --config.data.max_instances={default.KEYPOINTS_MAX_INSTANCES}.')
  if data.max_points != default.KEYPOINTS_MAX_POINTS:
    raise ConfigError(
        f'config.data.max_points={data.max_points}: a keypoint_detection response is COCO\'s '
        f'{default.KEYPOINTS_MAX_POINTS} keypoints; set '
        f'--config.data.max_points={default.KEYPOINTS_MAX_POINTS}.')
  if data.source != 'coco_files':
    raise ConfigError(
        f'config.data.source={data.source!r} has no person keypoints; keypoint_detection '
        'reads COCO person_keypoints files: set --config.data.source=coco_files with '
        'data.coco_dir (annotations/person_keypoints_{train,val}2017.json) or the explicit '
        'data.{train,val}_{images,annotations} paths.')
  for name, official in (('crop_pad', default.KEYPOINTS_CROP_PAD),
                         ('invisible_weight', default.KEYPOINTS_INVISIBLE_WEIGHT)):
    if data[name] < 0:
      raise ConfigError(f'config.data.{name}={data[name]} must be >= 0 (official: '
                        f'{official}).')


def _check_decode(config: ml_collections.ConfigDict, overrides: tuple[str, ...]) -> None:
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
  if dec.temperature == 0:
    for field, unset in (('top_k', 0), ('top_p', 1.0)):
      if dec[field] != unset or f'decode.{field}' in overrides:
        raise ConfigError(
            f'config.decode.{field}={dec[field]} has no effect with decode.temperature=0 '
            '(greedy decoding); set --config.decode.temperature=1 to sample (the official '
            'setting: temperature 1, top_p 0.4) or remove it.')
  if dec.canvas_buckets < 1:
    raise ConfigError(f'config.decode.canvas_buckets={dec.canvas_buckets} must be at least 1 '
                      '(1: the square training canvas only).')
  if dec.mode not in default.DECODE_MODES:
    raise ConfigError(f'config.decode.mode={dec.mode!r} is unknown; use one of '
                      f'{list(default.DECODE_MODES)}.')
  if dec.mode == 'official' and dec.score != 'class':
    raise ConfigError(f"config.decode.score={dec.score!r} with decode.mode='official': "
                      'official decoding scores an object by its class probability only; use '
                      "decode.score='class' or decode.mode='grammar'.")
  if dec.score not in default.SCORE_MODES:
    raise ConfigError(f'config.decode.score={dec.score!r} is unknown; use one of '
                      f'{list(default.SCORE_MODES)}.')
