"""The tasks of an official multi-task checkpoint as this project's `config.tasks`.

The official multi-task config.json (`configs/config_multi_task.py`) lists its tasks in
`tasks`, each with its loss `weight` and its own settings. `entries` makes one
`config.tasks` entry per task this project implements (config/multitask.py), its `data`
mirroring the official settings:

  every task           quantization_bins -> num_bins; train_transforms: scale_jitter
                       (min_scale, max_scale) -> scale_jitter, scale_min, scale_max;
                       random_horizontal_flip -> random_flip
  object_detection     config.data itself (official/convert.project_config), data {}
  instance_segmentation  max_instances_per_image_test -> max_instances,
                       max_points_per_object -> max_points, eos_token_weight -> eos_weight
  keypoint_detection   the same, invisible_token_weight -> invisible_weight,
                       crop_to_bbox_pad_scale -> crop_pad
  captioning           max_seq_len -> max_text_len, captions_per_image, eos_token_weight
                       -> eos_weight, input_seq_drop_rate -> text_dropout, and the
                       SentencePiece model (the official c4_en_32k_spm.model, given to the
                       converter: `--tokenizer`) -> tokenizer

A setting missing from config.json takes the official multi-task config's value
(config/default.py). Sampling is each task's own (tasks/segmentation.py, keypoints.py,
captioning.py: the official config's); `differing_settings` names the config.json values
that differ from it.
"""

from __future__ import annotations

from pix2seq_jax.config import default
from pix2seq_jax.tasks import captioning, keypoints, segmentation

# Per task: (official setting, our data field, the official multi-task config's value).
_FIELDS = {
    'object_detection': (),
    'instance_segmentation': (
        ('max_instances_per_image_test', 'max_instances', default.SEGMENTATION_MAX_INSTANCES),
        ('max_points_per_object', 'max_points', default.SEGMENTATION_MAX_POINTS),
        ('eos_token_weight', 'eos_weight', default.SEGMENTATION_EOS_WEIGHT)),
    'keypoint_detection': (
        ('max_instances_per_image_test', 'max_instances', default.KEYPOINTS_MAX_INSTANCES),
        ('max_points_per_object', 'max_points', default.KEYPOINTS_MAX_POINTS),
        ('eos_token_weight', 'eos_weight', default.KEYPOINTS_EOS_WEIGHT),
        ('invisible_token_weight', 'invisible_weight', default.KEYPOINTS_INVISIBLE_WEIGHT),
        ('crop_to_bbox_pad_scale', 'crop_pad', default.KEYPOINTS_CROP_PAD)),
    'captioning': (
        ('max_seq_len', 'max_text_len', default.CAPTIONING_MAX_TEXT_LEN),
        ('captions_per_image', 'captions_per_image', default.CAPTIONS_PER_IMAGE),
        ('eos_token_weight', 'eos_weight', default.CAPTIONING_EOS_WEIGHT),
        ('input_seq_drop_rate', 'text_dropout', default.CAPTIONING_TEXT_DROPOUT)),
}
# Augmentation of a task whose config.json has no train_transforms (configs/coco_multitask.py).
_AUGMENTATION = {
    'instance_segmentation': dict(scale_max=default.SEGMENTATION_SCALE_MAX),
    'keypoint_detection': dict(scale_max=default.KEYPOINTS_SCALE_MAX,
                               random_flip=default.KEYPOINTS_RANDOM_FLIP),
}
# What each task here samples and reads with (the official multi-task config's; no field).
IMPLEMENTED = {
    'instance_segmentation': dict(
        temperature=segmentation.TEMPERATURE, top_k=segmentation.TOP_K,
        top_p=segmentation.TOP_P, ensemble_num_samples=segmentation.ENSEMBLE_NUM_SAMPLES,
        ensemble_threshold=segmentation.ENSEMBLE_THRESHOLD),
    'keypoint_detection': dict(
        temperature=keypoints.TEMPERATURE, top_k=keypoints.TOP_K, top_p=keypoints.TOP_P,
        points_score_weight=keypoints.POINTS_SCORE_WEIGHT,
        eval_suppress_invisible_token=keypoints.SUPPRESS_INVISIBLE, crop_to_bbox=True),
    'captioning': dict(temperature=captioning.TEMPERATURE, top_k=captioning.TOP_K,
                       top_p=captioning.TOP_P),
}


def official_tasks(official_config: dict) -> list[dict]:
  """config.json's tasks (`tasks`, else its one `task`), each a dict with a `name`."""
  tasks = list(official_config.get('tasks') or [])
  if not tasks and official_config.get('task'):
    tasks = [official_config['task']]
  return [dict(task, name=task.get('name', 'object_detection')) for task in tasks]


def augmentation(task: dict) -> dict:
  """Our augmentation fields of an official task's train_transforms."""
  transforms = task.get('train_transforms')
  if transforms is None:
    return dict(_AUGMENTATION.get(task['name'], {}))
  names = {t.get('name'): t for t in transforms}
  jitter = names.get('scale_jitter')
  out = dict(scale_jitter=jitter is not None,
             random_flip='random_horizontal_flip' in names)
  if jitter is not None:
    out.update(scale_min=float(jitter.get('min_scale', 0.3)),
               scale_max=float(jitter.get('max_scale', 2.0)))
  return out


def task_data(task: dict) -> dict:
  """The `data` of an official task's config.tasks entry (its `tokenizer` left out)."""
  if task['name'] == 'object_detection':
    return {}
  data = {'num_bins': int(task.get('quantization_bins', 1000))}
  for official, ours, value in _FIELDS[task['name']]:
    data[ours] = type(value)(task.get(official, value))
  data.update(augmentation(task))
  data.update(noise_objects=False, corrupt_classes=False)  # detection's sequence noise
  return data


def entries(official_config: dict, tokenizer: str | None) -> tuple[dict, list[str]]:
  """(config.tasks, notes): an entry {weight, data} per official task implemented here;
  captioning only with `tokenizer` (its data.tokenizer). `notes` are one line per task
  left out, saying why."""
  found, notes = {}, []
  for task in official_tasks(official_config):
    name = task['name']
    if name not in default.TASKS:
      notes.append(f'{name}: not implemented here; its task is left out (the model\'s '
                   'weights are converted all the same).')
      continue
    if name == 'captioning' and not tokenizer:
      notes.append('captioning: left out; convert with --tokenizer=c4_en_32k_spm.model (the '
                   'official SentencePiece model, gs://pix2seq/multi_task/data/'
                   'c4_en_32k_spm.model) to include it.')
      continue
    data = task_data(task)
    if name == 'captioning':
      data['tokenizer'] = tokenizer
    found[name] = {'weight': float(task.get('weight', 1.0)), 'data': data}
  return found, notes


def differing_settings(official_config: dict) -> list[str]:
  """The config.json settings of the implemented tasks that differ from what this project
  samples and reads with (IMPLEMENTED): one line each."""
  lines = []
  for task in official_tasks(official_config):
    for key, ours in IMPLEMENTED.get(task['name'], {}).items():
      if key in task and task[key] != ours:
        lines.append(f'{task["name"]}.{key}={task[key]!r} in config.json: this project\'s '
                     f'{task["name"]} has {ours!r} (the official multi-task config\'s).')
  return lines
