"""Bad or self-contradicting settings are refused before any work, naming the field and
the fix; every shipped config is valid on 1-8 devices; a run's config is frozen."""

import os
import re

import ml_collections
import pytest

from pix2seq_jax.config import checks as config_checks
from pix2seq_jax.config import config_file, resolve
from tests.tiny import ROOT, run_main, tiny_config

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.py') and f != '__init__.py')


def _shipped(name: str) -> ml_collections.ConfigDict:
  return config_file.load(os.path.join(ROOT, 'configs', f'{name}.py'))


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
  config.decode.temperature = 1.0  # sampling: top_k and top_p are read
  config.decode[field] = value
  with pytest.raises(config_checks.ConfigError, match=f'config.decode.{field}='):
    config_checks.validate(config, mode='predict')


def test_default_decode_settings_pass(shapes_dir):
  config_checks.validate(tiny_config(shapes_dir), mode='predict')


def test_the_shipped_configs_are_the_expected_ones():
  assert CONFIGS == ['coco', 'coco_captioning', 'coco_keypoints', 'coco_multitask', 'coco_r50_c4',
                     'coco_segmentation', 'coco_vit_b',
                     'detr_style_r50_512', 'official', 'shapes']


@pytest.mark.parametrize('name', CONFIGS)
def test_every_shipped_config_is_valid_on_1_to_8_devices_and_2_processes(name):
  config = _shipped(name)
  config_checks.validate(config, mode='summary')
  for devices in (1, 2, 4, 8):
    for processes in (1, 2):
      if processes <= devices:
        config_checks.check_batch_split(config, devices, processes)


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
    ('model', 'vocabulary', 'bpe', 'model.vocabulary'),
    ('model', 'max_seq_len', 10, 'shorter than the sequences'),
    ('model', 'init_from', '/no/such/workdir', 'has no config.json'),
    ('decode', 'mode', 'beam', 'decode.mode'),
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
  if field.startswith('data.train_'):
    config.data.source = 'coco_files'
    config.data.train_images = config.data.val_images = shapes_dir
    config.data.train_annotations = config.data.val_annotations = shapes_dir
  elif field == 'data.coco_dir':
    config.data.source = 'coco_files'
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_checks.ConfigError, match=re.escape(match)):
    config_checks.validate(config, mode='train')


@pytest.mark.parametrize('devices, processes, field', [
    (3, 1, 'train.batch_size=8 must be divisible by the number of devices (3)'),
    (1, 3, 'train.batch_size=8 must be divisible by the number of devices (1) and processes (3)'),
    (2, 1, 'eval.batch_size=3'),
])
def test_a_batch_that_does_not_split_over_devices_is_refused(shapes_dir, devices, processes,
                                                             field):
  config = tiny_config(shapes_dir)
  if field.startswith('eval'):
    config.eval.batch_size = 3
  with pytest.raises(config_checks.ConfigError, match=re.escape(field)):
    config_checks.validate(config, mode='train', devices=devices, processes=processes)
  config_checks.validate(config, mode='summary', devices=devices)  # summary runs anywhere


def test_steps_with_epochs_is_refused_with_the_fix():
  """The new user's trial: configs/coco.py counts epochs, so a given train.steps would be
  overridden by them; it is refused, saying which field to zero."""
  config = _shipped('coco')
  config.train.steps = 20
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate(config, mode='summary')
  assert ('config.train.steps=20 and train.epochs=80 both set the training length; keep one: '
          '--config.train.epochs=0 for 20 steps') in str(error.value)
  config.train.epochs = 0
  config_checks.validate(config, mode='summary')
  config.train.warmup_steps = 100  # coco.py's warmup is 2 epochs
  with pytest.raises(config_checks.ConfigError, match='--config.train.warmup_epochs=0 for 100'):
    config_checks.validate(config, mode='summary')


@pytest.mark.parametrize('source, field, value', [
    ('shapes', 'coco_dir', '/data/coco'),
    ('shapes', 'train_annotations', 'train.json'),
    ('coco_files', 'tfds_data_dir', '/data/tfds'),
    ('tfds', 'val_images', '/data/val'),
])
def test_a_path_of_another_source_is_refused(shapes_dir, source, field, value):
  config = tiny_config(shapes_dir)
  config.data.source = source
  config.data[field] = value
  with pytest.raises(config_checks.ConfigError,
                     match=re.escape(f'config.data.{field}={value!r} is read only with')):
    config_checks.validate(config, mode='summary')


def test_coco_dir_and_explicit_paths_together_are_refused(shapes_dir):
  config = tiny_config(shapes_dir)
  config.data.source = 'coco_files'
  config.data.coco_dir = '/data/coco'
  config.data.val_annotations = 'mine.json'
  with pytest.raises(config_checks.ConfigError, match="data.val_annotations='mine.json' would "
                                                      'be ignored'):
    config_checks.validate(config, mode='summary')


@pytest.mark.parametrize('field, value', [('top_p', 0.4), ('top_k', 5)])
def test_sampling_settings_with_greedy_decoding_are_refused(shapes_dir, field, value):
  config = tiny_config(shapes_dir)
  config.decode[field] = value
  with pytest.raises(config_checks.ConfigError,
                     match=f'config.decode.{field}={value} has no effect with '
                           'decode.temperature=0'):
    config_checks.validate(config, mode='predict')
  config.decode.temperature = 1.0
  config_checks.validate(config, mode='predict')


@pytest.mark.parametrize('override, mode, match', [
    ('data.shapes_dir', 'summary', 'read only with data.source=\'shapes\''),
    ('data.scale_min', 'summary', 'read only with data.scale_jitter=True'),
    ('data.noise_class_weight', 'summary', 'read only with data.noise_objects=True'),
    ('train.steps', 'summary', 'no effect in --mode=summary'),
    ('model.dropout', 'predict', 'no effect in --mode=predict'),
])
def test_command_line_overrides_the_run_would_ignore_are_refused(shapes_dir, override, mode,
                                                                 match):
  config = tiny_config(shapes_dir)
  if override == 'data.shapes_dir':
    config.data.source = 'tfds'
  config.data.scale_jitter = config.data.noise_objects = False
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.validate(config, mode=mode, overrides=[override])
  config_checks.validate(config, mode=mode if override != 'data.shapes_dir' else 'predict',
                         overrides=[] if override != 'data.shapes_dir' else ['decode.score'])
  assert config_checks.ignored_in_eval(['train.steps', 'decode.top_p']) == ['train.steps']


def test_epochs_resolve_to_steps_in_a_frozen_config(shapes_dir):
  config = tiny_config(shapes_dir)
  config.train.batch_size = 128
  config.train.steps, config.train.epochs = 0, 80
  config.train.warmup_steps, config.train.warmup_epochs = 0, 2
  config_checks.validate(config, mode='summary')
  resolved = resolve.resolve(config, 118_287)
  assert resolved.train.steps == 73_930  # ceil(80 * 118287 / 128)
  assert resolved.train.warmup_steps == 1848
  assert resolved.train.epochs == resolved.train.warmup_epochs == 0
  config_checks.validate(resolved, mode='summary')  # still a valid config, as config.json
  assert config.train.steps == 0  # the original is left alone
  with pytest.raises(AttributeError, match='immutable'):
    resolved.train.steps = 5
  with pytest.raises(ValueError, match='number of train images'):
    resolve.resolve(config)
  config.train.steps, config.train.epochs = 10, 0
  config.train.warmup_steps, config.train.warmup_epochs = 1, 0
  assert resolve.resolve(config).train.steps == 10


def test_factories_that_bind_config_fields_refuse_a_mutable_config(shapes_dir):
  from pix2seq_jax.inference import sharded_decode
  from pix2seq_jax.models import build
  from pix2seq_jax.parallel import mesh as mesh_lib
  from pix2seq_jax.tasks import vocab as vocab_lib
  config = tiny_config(shapes_dir)
  vocab = vocab_lib.Vocabulary(3, config.data.num_bins)
  graphdef = build.model_graphdef(config, vocab)
  with pytest.raises(TypeError, match='pass the frozen config'):
    sharded_decode.DecodeFn(config, graphdef, vocab, mesh_lib.make_mesh())
  sharded_decode.DecodeFn(resolve.resolve(config), graphdef, vocab, mesh_lib.make_mesh())


def _init_from_and_backbone(shapes_dir: str, tmp_path) -> ml_collections.ConfigDict:
  """A config valid but for setting both model.init_from and model.pretrained_backbone."""
  source = tmp_path / 'source'
  source.mkdir()
  for name in ('config.json', 'categories.json'):  # all the check reads of a workdir
    (source / name).write_text('{}')
  weights = tmp_path / 'r50.npz'
  weights.write_bytes(b'')
  config = tiny_config(shapes_dir)
  config.model.variant = 'r50'
  config.model.image_normalization = 'imagenet'
  config.model.pretrained_backbone = str(weights)
  config.model.init_from = str(source)
  return config


def test_init_from_with_a_pretrained_backbone_is_refused(shapes_dir, tmp_path):
  config = _init_from_and_backbone(shapes_dir, tmp_path)
  with pytest.raises(config_checks.ConfigError,
                     match='config.model.init_from and config.model.pretrained_backbone both '
                           'set: .* keep one'):
    config_checks.validate(config, mode='train')
  for field in ('init_from', 'pretrained_backbone'):  # either alone is fine
    alone = ml_collections.ConfigDict(config.to_dict())
    alone.model[field] = ''
    config_checks.validate(alone, mode='train')


def test_official_decoding_with_class_x_coords_scores_is_refused(shapes_dir):
  config = tiny_config(shapes_dir)
  config.decode.mode = 'official'
  config.decode.score = 'class_x_coords'
  with pytest.raises(config_checks.ConfigError,
                     match=re.escape("config.decode.score='class_x_coords' with "
                                     "decode.mode='official'")):
    config_checks.validate(config, mode='predict')
  config.decode.score = 'class'
  config_checks.validate(config, mode='predict')
  config.decode.mode, config.decode.score = 'grammar', 'class_x_coords'
  config_checks.validate(config, mode='predict')


@pytest.mark.parametrize('mode, settings, message', [
    ('train', ['--config.model.variant=r50', '--config.model.image_normalization=imagenet',
               '--config.model.pretrained_backbone={weights}',
               '--config.model.init_from={source}'],
     'error: config.model.init_from and config.model.pretrained_backbone both set'),
    ('predict', ['--config.decode.mode=official', '--config.decode.score=class_x_coords'],
     "error: config.decode.score='class_x_coords' with decode.mode='official'"),
], ids=['init_from_with_pretrained_backbone', 'official_decoding_with_class_x_coords'])
def test_main_refuses_contradicting_fields_before_any_work(shapes_dir, tmp_path, capsys, mode,
                                                           settings, message):
  """main.py exits 1 with one `error:` line naming both fields; nothing is written."""
  config = _init_from_and_backbone(shapes_dir, tmp_path)
  workdir = tmp_path / 'run'
  argv = [f'--mode={mode}', f'--config={ROOT}/configs/shapes.py', f'--workdir={workdir}']
  if mode == 'predict':
    argv += ['--images=x.jpg', f'--output={tmp_path / "p.json"}']
  else:  # the session's 24-image dataset: a run the check missed stops at its size
    argv += [f'--config.data.shapes_dir={shapes_dir}']
  argv += [s.format(weights=config.model.pretrained_backbone, source=config.model.init_from)
           for s in settings]
  code = run_main(*argv)
  stderr = capsys.readouterr().err
  assert code == 1, stderr[-3000:]
  assert message in stderr, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert not workdir.exists() and not (tmp_path / 'p.json').exists()
