"""Converts an official Pix2Seq checkpoint (TF2, object-based) into a workdir of this project.

  python -m pix2seq_jax.official.convert --checkpoint=DIR_OR_PREFIX --output=WORKDIR \
      [--categories=INSTANCES_OR_CATEGORIES.json] [--tokenizer=c4_en_32k_spm.model]

DIR is a released folder (gs://pix2seq/... copied with `gsutil cp -r`): its config.json
and latest ckpt-N. A PREFIX (DIR/ckpt-N) picks a checkpoint; config.json is read beside
it. Every model variable of the `resnet`, `resnet-c`, `vit-b` and `vit-l` architectures
is mapped (official/names.py) at the image size of config.json; optimizer slots,
global_step and save_counter are ignored. A checkpoint that is unknown, incomplete or
mis-shaped is refused with the lists of unmapped, missing and mis-shaped names.

Both official vocabularies are read: the detection checkpoints' 3000 ids
(`model.vocabulary='official'`) and the multi-task checkpoints' 35000
(`configs/config_multi_task.py`: `vocab_size=35000`, text tokens from 3000;
`'official_multitask'`, whose prompts 10-13 reach detection, instance segmentation,
keypoints and captioning). Both have 512 learned decoder positions
(`pos_encoding_dec='learned'`, the only kind implemented here). The detection settings
(bins, objects, sampling) come from the config's object_detection task.

A multi-task checkpoint becomes a multi-task workdir: `config.tasks` holds one entry per
task of config.json's `tasks` (official/tasks.py: its weight and settings), config.task
is object_detection. Captioning needs the official SentencePiece model, which this code
never downloads: with --tokenizer the workdir keeps a copy of it
(workdir/tokenizer_file.py) and lists captioning; without, captioning is left out (one
line says how to include it).

The output is an ordinary workdir: checkpoints/<global_step> (parameters and batch
statistics), config.json (the official settings, official/config.py) and
categories.json (COCO's ids and names for COCO checkpoints; Objects365 ids with
placeholder names for the pretrained ones, unless --categories gives names). It works
unchanged with --mode=eval, --mode=predict, Predictor (`task=` any of its tasks) and the
notebook, and as model.init_from for fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from pix2seq_jax.config import checks, default, multitask
from pix2seq_jax.data import coco_categories, coco_json
from pix2seq_jax.models import backbones, build, tree_paths, variants
from pix2seq_jax.official import config as official_settings
from pix2seq_jax.official import names as official_names
from pix2seq_jax.official import tasks as official_tasks
from pix2seq_jax.tasks import tokenizer as tokenizer_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import files as workdir_lib
from pix2seq_jax.workdir import tokenizer_file

OBJECTS365_CLASSES = 365
_GLOBAL_STEP = 'global_step' + official_names.SUFFIX
_LIST_LIMIT = 20
# (resnet_variant, resnet_depth, resnet_width_multiplier, resnet_sk_ratio) -> our backbone.
# Width 1/32 is the official-parity test fixtures' (models/resnet.py, NANO_DIVISOR).
_RESNETS = {('standard', 50, 1, 0.0): 'resnet50', ('c4', 50, 1, 0.0): 'resnet50_c4',
            ('standard', 50, 1 / 32, 0.0): 'resnet50_nano',
            ('c4', 50, 1 / 32, 0.0): 'resnet50_c4_nano'}


class ConversionError(ValueError):
  """A checkpoint this converter cannot map; the message lists the names and a fix."""


def locate(checkpoint: str) -> tuple[str, str]:
  """(checkpoint prefix, config.json path) of a released folder or a ckpt-N prefix."""
  import tensorflow as tf  # noqa: PLC0415 (only the converter reads TF checkpoints)
  if os.path.isdir(checkpoint):
    prefix = tf.train.latest_checkpoint(checkpoint)
    if prefix is None:
      raise ConversionError(f'{checkpoint}: no TF checkpoint (a "checkpoint" file and '
                            'ckpt-N.index/.data) in this folder; copy the whole released '
                            'folder (gsutil cp -r gs://pix2seq/... DIR).')
    folder = checkpoint
  else:
    if not os.path.exists(checkpoint + '.index'):
      raise ConversionError(f'{checkpoint}: neither a folder nor a checkpoint prefix '
                            f'({checkpoint}.index is missing).')
    prefix, folder = checkpoint, os.path.dirname(checkpoint) or '.'
  config_path = os.path.join(folder, 'config.json')
  if not os.path.exists(config_path):
    raise ConversionError(f'{config_path} is missing: the released folders hold the '
                          'official config beside the checkpoint; copy it too.')
  return prefix, config_path


# model.vocab_size of config.json -> this project's vocabulary (tasks/vocab.py).
VOCABULARIES = {vocab_lib.OFFICIAL_SIZE: 'official',
                vocab_lib.OFFICIAL_MULTITASK_SIZE: 'official_multitask'}


def vocabulary(model: dict) -> str:
  """The vocabulary of the official model config: 'official' (3000 ids, the detection
  checkpoints) or 'official_multitask' (35000, text tokens from 3000); else refused."""
  size = model.get('vocab_size', vocab_lib.OFFICIAL_SIZE)
  if size not in VOCABULARIES:
    raise ConversionError(f'model.vocab_size={size!r} in config.json: this project implements '
                          f'the official vocabularies of {sorted(VOCABULARIES)} ids only (the '
                          'released detection and multi-task models).')
  shift = model.get('text_vocab_shift', vocab_lib.OFFICIAL_TEXT_OFFSET)
  if VOCABULARIES[size] == 'official_multitask' and shift != vocab_lib.OFFICIAL_TEXT_OFFSET:
    raise ConversionError(f'model.text_vocab_shift={shift!r} in config.json: the multi-task '
                          f'vocabulary here has its text tokens from '
                          f'{vocab_lib.OFFICIAL_TEXT_OFFSET} (the released multi-task models).')
  return VOCABULARIES[size]


def _official_spec(model: dict) -> variants.ModelSpec:
  """Our ModelSpec for the official model config, refusing what we do not implement."""
  fixed = {'name': 'encoder_ar_decoder', 'use_cls_token': False, 'dec_proj_mode': 'mlp',
           'pos_encoding': 'sin_cos', 'pos_encoding_dec': 'learned',
           'shared_decoder_embedding': True, 'decoder_output_bias': True,
           'coord_vocab_shift': vocab_lib.OFFICIAL_COORD_OFFSET}
  for key, want in fixed.items():
    if model.get(key, want) != want:
      raise ConversionError(f'model.{key}={model.get(key)!r} in config.json: this project '
                            f'implements {key}={want!r} only (the released models).')
  vocabulary(model)
  kind = model.get('resnet_variant')
  if kind == 'c1':
    backbone = f"vit_patch{model.get('patch_size')}"
  elif kind in ('standard', 'c4'):
    resnet = (model.get('resnet_depth'), model.get('resnet_width_multiplier'),
              model.get('resnet_sk_ratio'))
    if (kind,) + resnet not in _RESNETS:
      raise ConversionError(f'ResNet depth/width/sk_ratio {resnet}: only ResNet-50 '
                            '(50, 1, 0.0) is implemented (and 1/32 wide: the test fixtures).')
    backbone = _RESNETS[(kind,) + resnet]
  else:
    raise ConversionError(f'model.resnet_variant={kind!r}: only standard (resnet), c4 '
                          '(resnet-c) and c1 (ViT) are implemented.')
  if backbone not in backbones.BACKBONES:
    raise ConversionError(f'patch size {model.get("patch_size")}: no such ViT backbone here.')
  if model['dim_mlp_dec'] != model['dim_att_dec'] * (model['dim_mlp'] // model['dim_att']):
    raise ConversionError('the official memory MLP is dim_att_dec * (dim_mlp // dim_att) '
                          'wide and this project\'s dim_mlp_dec wide; they differ here.')
  return variants.ModelSpec(backbone, model['num_encoder_layers'], model['dim_att'],
                            model['dim_mlp'], model['num_heads'], model['num_decoder_layers'],
                            model['dim_att_dec'], model['dim_mlp_dec'], model['num_heads_dec'])


def detection_task(official_config: dict) -> dict:
  """The config's object_detection task (a multi-task config lists it in `tasks`), or its
  `task`; {} (the official defaults) for a config without one."""
  tasks = list(official_config.get('tasks') or []) + [official_config.get('task') or {}]
  for task in tasks:
    if task.get('name', 'object_detection') == 'object_detection':
      return task
  return {}


def project_config(official_config: dict, step: int = 1, tokenizer: str | None = None):
  """Our config (default.py fields) for the official config.json's model and its
  object_detection task; for a multi-task checkpoint (35000 ids) also `config.tasks`, an
  entry per task of config.json (official/tasks.py), captioning only with `tokenizer`
  (the SentencePiece model its data.tokenizer names).

  The train section records the official fine-tuning settings with the run's length
  as the checkpoint's `step` (epochs need a dataset size the checkpoint does not have).
  """
  model = official_config['model']
  task = detection_task(official_config)
  spec = _official_spec(model)
  names = [name for name, s in variants.VARIANTS.items() if s == spec]
  if not names:
    raise ConversionError(f'No variant of this project has the sizes {spec}; known: '
                          f'{sorted(variants.VARIANTS)}.')
  height, width = model['image_size']
  if height != width:
    raise ConversionError(f'image_size {model["image_size"]}: only square canvases.')
  config = default.get_config()
  official_settings.apply(config, names[0], int(height), vocabulary(model))
  config.model.max_seq_len = int(model['max_seq_len'])
  config.model.dropout = float(model.get('drop_units', 0.1))
  config.model.drop_path = float(model.get('drop_path', 0.1))
  config.data.source = 'coco_files'
  config.data.num_bins = int(task.get('quantization_bins', 1000))
  config.data.max_instances = int(task.get('max_instances_per_image_test', 100))
  config.data.eos_weight = float(task.get('eos_token_weight', 0.1))
  config.decode.temperature = float(task.get('temperature', 1.0))
  config.decode.top_k = int(task.get('top_k', 0))
  config.decode.top_p = float(task.get('top_p', 0.4))
  config.train.steps, config.train.epochs = max(int(step), 1), 0.0
  config.train.warmup_epochs = 0.0
  if config.model.vocabulary == 'official_multitask':
    config.tasks, _ = official_tasks.entries(official_config, tokenizer)
    if not config.tasks:
      raise ConversionError('config.json lists no task this project implements '
                            f'({", ".join(default.TASKS)}).')
    config.task = ('object_detection' if 'object_detection' in config.tasks
                   else next(iter(config.tasks)))
  elif tokenizer:
    raise ConversionError('--tokenizer is for the multi-task checkpoints (model.vocab_size '
                          f'{vocab_lib.OFFICIAL_MULTITASK_SIZE}), whose captioning reads '
                          'it; this is a detection checkpoint. Leave it out.')
  checks.validate(config, mode='predict')
  return config


def check_tokenizer(path: str, official_config: dict) -> None:
  """--tokenizer: a SentencePiece model, for a config.json with a captioning task; refused
  with a ConversionError otherwise. A size other than the official model's 32000 pieces is
  logged (its captions would be other words)."""
  names = [task['name'] for task in official_tasks.official_tasks(official_config)]
  if 'captioning' not in names:
    raise ConversionError(f'--tokenizer={path}: config.json has no captioning task (its '
                          f'tasks: {names}); leave --tokenizer out.')
  try:
    pieces = tokenizer_lib.TextTokenizer(path).vocab_size
  except (OSError, ValueError, RuntimeError) as e:
    raise ConversionError(f'--tokenizer: {e}') from e
  if pieces != vocab_lib.MAX_TEXT_PIECES:
    logging.warning('--tokenizer=%s has %d pieces, the official c4_en_32k_spm.model %d: the '
                    "checkpoint's text tokens will read as other words.", path, pieces,
                    vocab_lib.MAX_TEXT_PIECES)


def default_categories(official_config: dict) -> coco_json.CategoryMap:
  """COCO's categories for COCO checkpoints; Objects365 ids 1..365 otherwise."""
  name = str((official_config.get('dataset') or {}).get('name', ''))
  if name.startswith('coco'):
    ids, names = zip(*coco_categories.COCO_CATEGORIES)
    return coco_json.CategoryMap(tuple(ids), tuple(names))
  ids = tuple(range(1, OBJECTS365_CLASSES + 1))
  return coco_json.CategoryMap(ids, tuple(f'objects365_{i}' for i in ids))


def read_categories(path: str, num_bins: int) -> coco_json.CategoryMap:
  """--categories: an instances file's categories or a [{id, name}, ...] list, refused
  with a ConversionError naming the file when it is not one or its ids do not fit the
  official vocabulary."""
  try:
    categories = coco_json.CategoryMap.from_file(path)
    vocab_lib.for_categories('official', categories.category_ids, num_bins)
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ConversionError(f'--categories={path}: expected a COCO instances file or a JSON '
                          f'list of {{"id", "name"}} with ids the official vocabulary holds '
                          f'({type(e).__name__}: {e}).') from e
  return categories


def convert_arrays(reader, config, vocab: vocab_lib.Vocabulary) -> tuple[dict, dict]:
  """(params, batch_stats) as pure dicts of numpy arrays, read through `reader`
  (tf.train.load_checkpoint). Raises ConversionError listing every problem."""
  shapes = reader.get_variable_to_shape_map()
  model_names = {n for n in shapes if not official_names.is_bookkeeping(n)}
  _, params, stats = nnx.split(build.abstract_model(config, vocab), nnx.Param, nnx.BatchStat)
  backbone = backbones.abstract_backbone(variants.get_spec(config.model.variant).backbone)
  stage_sizes = getattr(backbone, 'stage_sizes', None)
  used, missing, misshaped, out = set(), [], [], {}
  for kind, tree in (('params', params.to_pure_dict()), ('batch_stats', stats.to_pure_dict())):
    converted = {}
    for path, leaf in tree_paths.flatten(tree).items():
      shown = '/'.join(str(k) for k in (kind,) + path)
      try:
        name, layout = official_names.official_name(path, stage_sizes)
      except KeyError:
        missing.append(f'{shown} (no official counterpart)')
        continue
      if name not in shapes:
        missing.append(f'{shown} <- {name}')
        continue
      used.add(name)
      try:
        converted[path] = official_names.to_ours(reader.get_tensor(name), layout, leaf.shape)
      except ValueError as e:
        misshaped.append(f'{name}: {e}')
    out[kind] = tree_paths.unflatten(converted)
  unmapped = sorted(model_names - used)
  if unmapped or missing or misshaped:
    parts = []
    for title, names in (('unmapped (in the checkpoint, not in the model)', unmapped),
                         ('missing (in the model, not in the checkpoint)', missing),
                         ('mis-shaped', misshaped)):
      if names:
        parts.append(f'{len(names)} {title}:\n  ' + tree_paths.first_of(
            names, _LIST_LIMIT, separator='\n  ', rest='\n  (and {n} more)'))
    raise ConversionError(
        f'The checkpoint does not fit variant {config.model.variant!r} at '
        f'{config.data.image_size} px:\n' + '\n'.join(parts) + '\nIs config.json the one '
        'saved with this checkpoint?')
  return out['params'], out['batch_stats']


def convert(checkpoint: str, output: str, categories_path: str | None = None,
            tokenizer: str | None = None) -> dict:
  """Writes the workdir `output`; returns {'step', 'variant', 'image_size', 'arrays'} and,
  for a multi-task checkpoint, 'tasks' (those of config.tasks). `tokenizer`: the official
  SentencePiece model, for the multi-task checkpoints' captioning."""
  import tensorflow as tf  # noqa: PLC0415

  from pix2seq_jax.workdir import checkpoints  # noqa: PLC0415 (orbax)

  prefix, config_path = locate(checkpoint)
  with open(config_path) as f:
    official_config = json.load(f)
  if tokenizer:
    check_tokenizer(tokenizer, official_config)
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  step = int(reader.get_tensor(_GLOBAL_STEP)) if _GLOBAL_STEP in shapes else 0
  config = project_config(official_config, step, tokenizer)
  if multitask.is_multitask(config):
    for line in (official_tasks.entries(official_config, tokenizer)[1]
                 + official_tasks.differing_settings(official_config)):
      logging.warning('%s', line)
  categories = (read_categories(categories_path, config.data.num_bins) if categories_path
                else default_categories(official_config))
  vocab = vocab_lib.for_categories(config.model.vocabulary, categories.category_ids,
                                   config.data.num_bins)
  params, batch_stats = convert_arrays(reader, config, vocab)
  manager = checkpoints.make_manager(output)
  if manager.latest_step() is not None:
    raise ConversionError(f'{output} already holds checkpoints; choose a new --output.')
  _, abstract_params, abstract_stats = nnx.split(build.abstract_model(config, vocab),
                                                 nnx.Param, nnx.BatchStat)
  state = {}
  for name, template, values in (('params', abstract_params, params),
                                 ('batch_stats', abstract_stats, batch_stats)):
    values = jax.tree.map(lambda v, t: jnp.asarray(v, t.dtype), values, template.to_pure_dict())
    nnx.replace_by_pure_dict(template, values)
    state[name] = template
  state['step'] = jnp.asarray(step, jnp.int32)
  checkpoints.save(manager, step, state)
  manager.close()
  if 'captioning' in config.tasks:  # the workdir's own copy, checked when read
    config.tasks.captioning.data.tokenizer = tokenizer_file.store(output, tokenizer)
  workdir_lib.write_json(os.path.join(output, workdir_lib.CONFIG), config.to_dict())
  workdir_lib.write_json(os.path.join(output, workdir_lib.CATEGORIES), categories.to_json())
  done = {'step': step, 'variant': config.model.variant, 'image_size': config.data.image_size,
          'arrays': len(jax.tree.leaves((params, batch_stats)))}
  if multitask.is_multitask(config):
    done['tasks'] = list(multitask.task_names(config))
  return done


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m pix2seq_jax.official.convert',
      description='Converts an official Pix2Seq checkpoint into a pix2seq-jax workdir.')
  parser.add_argument('--checkpoint', required=True,
                      help='a released folder (config.json + ckpt-N) or a ckpt-N prefix')
  parser.add_argument('--output', required=True, help='the workdir to write')
  parser.add_argument('--categories', default=None,
                      help="optional: a COCO instances JSON (or a [{id, name}] list) naming "
                           "the checkpoint's classes")
  parser.add_argument('--tokenizer', default=None,
                      help='multi-task checkpoints: the official SentencePiece model '
                           '(c4_en_32k_spm.model) that their captioning reads; without it '
                           'captioning is left out of the workdir')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    done = convert(args.checkpoint, args.output, args.categories, args.tokenizer)
  except (ConversionError, checks.ConfigError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps({'output': args.output, **done}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
