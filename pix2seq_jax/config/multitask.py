"""Multi-task configs (`config.tasks`): one model, several tasks, each seen through a
single-task config of its own.

`config.tasks` names the tasks one model learns (keys from `default.TASKS`), each entry

  weight   its loss's factor in the step's loss, sum over tasks of weight * task loss
           (the official trainer's `task.weight`; default 1)
  data     fields of config.data this task reads differently (its own annotation files,
           max_instances, max_points, eos_weight, augmentation, ...)

`task_config(config, name)` is the config of one task: config.task = name, config.data
with the entry's fields, no `tasks`; every single-task component (pipeline, evaluators,
decoding, the Predictor) runs on it unchanged. Every task's config shares the model (its
decoder positions cover the longest task's sequences, `shared_max_seq_len`), train,
eval and decode settings. A config with no `tasks` is its own single task config.task.
"""

from __future__ import annotations

import math

import ml_collections

from pix2seq_jax.config import default

ENTRY_FIELDS = ('weight', 'data')
DEFAULT_WEIGHT = 1.0


def is_multitask(config: ml_collections.ConfigDict) -> bool:
  return len(config.get('tasks', {})) > 0


def task_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The tasks a config trains, in `default.TASKS` order (one: config.task)."""
  if not is_multitask(config):
    return (config.task,)
  return tuple(t for t in default.TASKS if t in config.tasks) + tuple(
      sorted(t for t in config.tasks if t not in default.TASKS))


def weight(config: ml_collections.ConfigDict, name: str) -> float:
  """The loss weight of task `name` (1 for a single-task config)."""
  if not is_multitask(config):
    return DEFAULT_WEIGHT
  return float(config.tasks[name].get('weight', DEFAULT_WEIGHT))


def _view(config: ml_collections.ConfigDict, name: str) -> dict:
  content = config.to_dict()
  entry = content['tasks'][name]
  content['task'] = name
  content['data'].update(entry.get('data', {}))
  content['tasks'] = {}
  return content


def task_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The single-task config of task `name` of `config` (itself for a single-task config),
  frozen where `config` is."""
  if not is_multitask(config):
    if name != config.task:
      raise ValueError(f'The config trains {config.task!r} only, not {name!r}.')
    return config
  if name not in config.tasks:
    raise ValueError(f'The config trains {list(task_names(config))}, not {name!r}.')
  view = _view(config, name)
  if isinstance(config, ml_collections.FrozenConfigDict):
    return ml_collections.FrozenConfigDict(view)
  return ml_collections.ConfigDict(view)


def task_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{task: its single-task config} for every task of `config`, in `task_names` order."""
  return {name: task_config(config, name) for name in task_names(config)}


def shared_max_seq_len(config: ml_collections.ConfigDict) -> int:
  """Decoder positions for every task of `config`: model.max_seq_len, or where 0 the
  longest task sequence (`default.sequence_length`)."""
  if config.model.max_seq_len:
    return config.model.max_seq_len
  return max(default.sequence_length(ml_collections.ConfigDict(_view(config, name)))
             for name in task_names(config))


def entry_problems(config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config.tasks` as a whole (each task's own settings are checked on
  its `task_config`); [] when nothing."""
  problems = []
  for name in config.tasks:
    entry = config.tasks[name]
    if name not in default.TASKS:
      problems.append(f'config.tasks.{name}: unknown task; use names from '
                      f'{list(default.TASKS)}.')
      continue
    if not isinstance(entry, (dict, ml_collections.ConfigDict)):
      problems.append(f'config.tasks.{name} must hold {list(ENTRY_FIELDS)}, got {entry!r}.')
      continue
    unknown = sorted(set(entry) - set(ENTRY_FIELDS))
    if unknown:
      problems.append(f'config.tasks.{name}.{unknown[0]} is not a task field; a task has '
                      f'{list(ENTRY_FIELDS)}.')
    value = entry.get('weight', DEFAULT_WEIGHT)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      problems.append(f'config.tasks.{name}.weight={value!r} must be a positive number.')
    fields = entry.get('data', {})
    unknown = sorted(set(fields) - set(config.data))
    if unknown:
      problems.append(f'config.tasks.{name}.data.{unknown[0]} is not a data field (see '
                      'docs/configuration.md).')
    if 'image_size' in fields:
      problems.append(f'config.tasks.{name}.data.image_size: every task of one model reads '
                      'the same canvas; set config.data.image_size instead.')
  if config.task not in config.tasks:
    problems.append(f'config.task={config.task!r} is not one of config.tasks '
                    f'{list(task_names(config))}: it names the task whose train examples '
                    'count train.epochs; set it to one of them.')
  return problems


def task_overrides(overrides: tuple[str, ...], name: str) -> tuple[str, ...]:
  """The command-line overrides as task `name`'s config sees them: the config-wide ones
  (decode.* only for object detection, whose settings they are) and its entry's data
  fields as data.*."""
  prefix = f'tasks.{name}.data.'
  own = tuple('data.' + o[len(prefix):] for o in overrides if o.startswith(prefix))
  shared = tuple(o for o in overrides if not o.startswith('tasks.') and o != 'task'
                 and (name == 'object_detection' or not o.startswith('decode.')))
  return shared + own
