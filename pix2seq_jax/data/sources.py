"""Resolves `config.data` to the two splits the project trains and evaluates on.

Sources:
  shapes      synthetic shapes, generated once into `data.shapes_dir` (see shapes.py)
  coco_files  any COCO-format dataset: `data.coco_dir` (DETR/COCO 2017 layout) or
              explicit `data.{train,val}_{images,annotations}`
  tfds        COCO 2017 prepared by TensorFlow Datasets in `data.tfds_data_dir`,
              exported once to the COCO layout (tfds_source.py); offline, fails fast
The train split's categories fix the label map for both splits. Every image file is
checked once (image_check.py), by every process, which then agree: a file any process
cannot read is left out of the split on all of them, named in `skipped_images`, so a
bad file never stops a run mid-epoch and every process keeps the same records.

For `task='instance_segmentation'` both splits also carry their objects' polygons
(`Splits.instances`, from `instance_annotations`): objects without a usable polygon are
left out of the records and counted (`left_out` in data_report.json, names prefixed
`segmentation_`), and so are train images left without objects (the official training
filters images without annotations).

For `task='keypoint_detection'` the splits are read from COCO person_keypoints files
(`data.coco_dir` gives annotations/person_keypoints_{train,val}2017.json) and carry their
persons' keypoints (`with_keypoints`): every object kept is a person with a keypoint
annotation, crowd ones left out (as the official `create_coco_tfrecord` and `coco.py`);
the train split keeps only persons with at least one labelled keypoint (the official
training extract, `data/coco.py` `num_keypoints > 0`), the val split every person
(num_keypoints 0 included, as the official evaluation). Each person is one example
(`pipeline`). What is left out is counted under `keypoints_<reason>`.

For `task='captioning'` the splits are the images of COCO captions files
(`data.coco_dir` gives annotations/captions_{train,val}2017.json, or
`data.{train,val}_captions`), each with its captions turned into pieces by
`data.tokenizer` (`caption_targets`); images without a caption are left out, and what the
files lack is counted under `captions_<reason>`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from pix2seq_jax.data import (
  caption_targets,
  captions,
  coco_json,
  image_check,
  instance_annotations,
  shapes,
  tfds_source,
)
from pix2seq_jax.tasks import tokenizer as tokenizer_lib

SOURCES = ('shapes', 'coco_files', 'tfds')


@dataclasses.dataclass
class Splits:
  train: coco_json.CocoSplit
  val: coco_json.CocoSplit
  # Instance tasks: {'train': ..., 'val': ...} polygons aligned with each split's records.
  instances: dict[str, instance_annotations.InstanceTargets] | None = None
  # captioning: {'train': ..., 'val': ...} captions aligned with each split's records.
  captions: dict[str, caption_targets.CaptionTargets] | None = None

  def targets(self, split: str):
    """The task targets of `split` ('train' or 'val') beside its records, or None
    (detection: the records' boxes are all)."""
    for table in (self.instances, self.captions):
      if table is not None:
        return table[split]
    return None

  @property
  def categories(self) -> coco_json.CategoryMap:
    return self.train.categories


def _first_process_first(make):
  """Runs `make` on process 0, then on the others, which find its files ready."""
  if jax.process_count() == 1:
    return make()
  result = make() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('pix2seq_jax: dataset files ready')
  return result if jax.process_index() == 0 else make()


def split_paths(data: ml_collections.ConfigDict,
                task: str = 'object_detection') -> dict[str, tuple[str, str]]:
  """{split: (images_dir, annotations_path)} for the configured source; with
  `data.coco_dir`, the instances files, or for task 'keypoint_detection' the
  person_keypoints files.

  Files made on first use (the shapes dataset, the TFDS export) are made by process 0
  while the other processes wait.
  """
  if data.source == 'shapes':
    return _first_process_first(lambda: _shapes_paths(data))
  if data.source == 'coco_files':
    if data.coco_dir:
      kind = 'person_keypoints' if task == 'keypoint_detection' else 'instances'
      annotations = lambda split: os.path.join(data.coco_dir, 'annotations',
                                               f'{kind}_{split}2017.json')
      return {'train': (os.path.join(data.coco_dir, 'train2017'), annotations('train')),
              'val': (os.path.join(data.coco_dir, 'val2017'), annotations('val'))}
    return {'train': (data.train_images, data.train_annotations),
            'val': (data.val_images, data.val_annotations)}
  if data.source == 'tfds':
    return _first_process_first(lambda: tfds_source.split_paths(data))
  raise ValueError(f'config.data.source={data.source!r} is not one of {SOURCES}.')


def check_images(split: coco_json.CocoSplit, max_instances: int) -> coco_json.CocoSplit:
  """`split` without its unreadable images, with EXIF fixes set and over-full images counted.

  Images with more than `max_instances` objects keep them all: each epoch the pipeline
  shuffles the objects and keeps the first `max_instances` (counted in `fixed`).
  """
  files = [(r.path, r.height, r.width) for r in split.records]
  report = image_check.check_files(files)
  if jax.process_count() > 1:
    report = image_check.agreed(files, report, _every_process(
        image_check.verdict_codes(report), split.annotations_path))
  records = [dataclasses.replace(r, orientation=c.orientation)
             for r, c in zip(split.records, report.checks) if not c.problem]
  fixed = dict(split.fixed, **report.fixed)
  if not records:
    path, problem, detail = report.skipped[0]
    raise image_check.ImageFilesError(
        f'{split.annotations_path}: none of its {len(split.records)} images can be read '
        f'(the first, {path}, is {problem}{": " + detail if detail else ""}). Check '
        f'that the images folder {split.images_dir} matches the annotation file.')
  counts = np.array([len(r.labels) for r in records], np.int64)
  if (counts > max_instances).any():
    fixed['images_over_max_instances'] = int((counts > max_instances).sum())
    fixed['objects_over_max_instances'] = int(np.maximum(counts - max_instances, 0).sum())
  dropped = dict(split.dropped, **{f'image_{k}': v for k, v in report.skipped_counts.items()})
  return dataclasses.replace(split, records=records, dropped=dropped, fixed=fixed,
                             skipped_images=report.skipped)


def _count_over_max(fixed: dict[str, int], records: list[coco_json.ImageRecord],
                    max_instances: int) -> dict[str, int]:
  """`fixed` with the images over `max_instances` objects (and their extra objects)
  counted anew for `records`."""
  fixed = {k: v for k, v in fixed.items() if not k.endswith('_over_max_instances')}
  counts = np.array([len(r.labels) for r in records], np.int64)
  if (counts > max_instances).any():
    fixed['images_over_max_instances'] = int((counts > max_instances).sum())
    fixed['objects_over_max_instances'] = int(np.maximum(counts - max_instances, 0).sum())
  return fixed


def _refuse_category_zero(split: coco_json.CocoSplit) -> None:
  if 0 in split.categories.category_ids:
    raise coco_json.AnnotationFileError(
        f'{split.annotations_path}: category id 0 reads as a padding object in the '
        'official instance sequences; renumber the categories from 1.')


def with_polygons(split: coco_json.CocoSplit, data: ml_collections.ConfigDict, *,
                  training: bool
                  ) -> tuple[coco_json.CocoSplit, instance_annotations.InstanceTargets]:
  """`split` (checked) with only its objects that have a polygon, and their polygons
  (`data.max_points` points each); with `training`, without the images left with no
  object. What is left out or repaired is counted in the split's `dropped` / `fixed`
  under `segmentation_<reason>`."""
  targets = instance_annotations.load_instance_targets(split, data.max_points)
  keep = [targets.has_polygon(i) for i in range(len(split.records))]
  split, targets = instance_annotations.keep_objects(split, targets, keep)
  _refuse_category_zero(split)
  dropped, fixed = dict(split.dropped), dict(split.fixed)
  relevant = lambda reason: reason != 'crowd' and 'keypoint' not in reason  # crowd: counted
  dropped.update({f'segmentation_{k}': v for k, v in targets.dropped.items() if relevant(k)})
  fixed.update({f'segmentation_{k}': v for k, v in targets.fixed.items() if relevant(k)})
  if training:
    has_objects = [i for i, r in enumerate(split.records) if len(r.labels)]
    if len(has_objects) < len(split.records):
      dropped['segmentation_images_without_polygons'] = len(split.records) - len(has_objects)
    if not has_objects:
      raise coco_json.AnnotationFileError(
          f'{split.annotations_path}: no image has an object with a polygon to train '
          'instance segmentation on; give an instances file with COCO polygons.')
    records = [split.records[i] for i in has_objects]
    targets = dataclasses.replace(
        targets, polygons=[targets.polygons[i] for i in has_objects],
        keypoints=[targets.keypoints[i] for i in has_objects],
        num_keypoints=[targets.num_keypoints[i] for i in has_objects])
    split = dataclasses.replace(split, records=records)
  fixed = _count_over_max(fixed, split.records, data.max_instances)
  return dataclasses.replace(split, dropped=dropped, fixed=fixed), targets


def with_keypoints(split: coco_json.CocoSplit, data: ml_collections.ConfigDict, *,
                   training: bool
                   ) -> tuple[coco_json.CocoSplit, instance_annotations.InstanceTargets]:
  """`split` (checked) with only its persons that have a keypoint annotation (with
  `training`, at least one labelled keypoint, as the official training) and their
  keypoints; records left without persons keep no objects (they give no example). What
  is left out is counted in the split's `dropped` / `fixed` under `keypoints_<reason>`.

  Raises coco_json.AnnotationFileError, naming the file, when it has no keypoint
  annotation at all (an instances file given for a person_keypoints file).
  """
  _refuse_category_zero(split)
  targets = instance_annotations.load_instance_targets(split, data.max_points)
  annotated = [~np.all(k == instance_annotations.PADDING, axis=1) for k in targets.keypoints]
  if not any(a.any() for a in annotated):
    raise coco_json.AnnotationFileError(
        f'{split.annotations_path}: no annotation has keypoints, which '
        "task='keypoint_detection' trains on; give a COCO person_keypoints file "
        '(person_keypoints_{train,val}2017.json: data.coco_dir finds them, or '
        'data.train_annotations / data.val_annotations), not an instances file.')
  keep = [a & (targets.num_keypoints[i] > 0) if training else a
          for i, a in enumerate(annotated)]
  left_out = {}
  if training:
    left_out['persons_without_labelled_keypoints'] = int(sum(
        np.sum(a & (n == 0)) for a, n in zip(annotated, targets.num_keypoints)))
  left_out['objects_without_keypoints'] = int(sum(np.sum(~a) for a in annotated))
  split, targets = instance_annotations.keep_objects(split, targets, keep)
  relevant = lambda reason: 'keypoint' in reason
  dropped, fixed = dict(split.dropped), dict(split.fixed)
  dropped.update({f'keypoints_{k}': v for k, v in targets.dropped.items() if relevant(k)})
  dropped.update({f'keypoints_{k}': v for k, v in left_out.items() if v})
  fixed.update({f'keypoints_{k}': v for k, v in targets.fixed.items() if relevant(k)})
  if not any(len(r.labels) for r in split.records):
    raise coco_json.AnnotationFileError(
        f'{split.annotations_path}: no person has a labelled keypoint to train '
        "task='keypoint_detection' on; give a COCO person_keypoints file with keypoints.")
  fixed = {k: v for k, v in fixed.items() if not k.endswith('_over_max_instances')}
  return dataclasses.replace(split, dropped=dropped, fixed=fixed), targets


def _every_process(codes: np.ndarray, annotations_path: str) -> np.ndarray:
  """[processes, files, 2]: every process's verdict codes (image_check.verdict_codes),
  gathered once the processes have agreed that they checked the same number of files."""
  counts = np.asarray(multihost_utils.process_allgather(np.int32(len(codes))))  # [processes]
  if (counts != len(codes)).any():
    raise ValueError(f'{annotations_path} lists {counts.tolist()} images on processes '
                     f'{list(range(len(counts)))}: every process must read the same '
                     'annotation file (give all hosts the same data paths).')
  return np.asarray(multihost_utils.process_allgather(codes))


def _shapes_paths(data: ml_collections.ConfigDict) -> dict[str, tuple[str, str]]:
  return shapes.ensure_dataset(data.shapes_dir, seed=data.shapes_seed,
                               num_train=data.shapes_num_train, num_val=data.shapes_num_val)


def caption_paths(data: ml_collections.ConfigDict) -> dict[str, tuple[str, str]]:
  """{split: (images_dir, captions_path)} of task 'captioning' (a COCO-files source)."""
  if data.coco_dir:
    return {split: (os.path.join(data.coco_dir, f'{split}2017'),
                    os.path.join(data.coco_dir, 'annotations', f'captions_{split}2017.json'))
            for split in ('train', 'val')}
  return {'train': (data.train_images, data.train_captions),
          'val': (data.val_images, data.val_captions)}


def load_caption_splits(data: ml_collections.ConfigDict) -> Splits:
  """Both captioning splits: the images the captions files list, checked, each with its
  captions in pieces of `data.tokenizer` (`caption_targets`)."""
  paths = caption_paths(data)
  tokenizer = tokenizer_lib.TextTokenizer(data.tokenizer)
  splits, targets = {}, {}
  for name, (images_dir, path) in paths.items():
    split = check_images(coco_json.load_images(path, images_dir), data.max_instances)
    read = captions.load_captions(path)
    splits[name], targets[name] = caption_targets.caption_targets(
        split, read.by_image, tokenizer, data.max_text_len, read.skipped)
  return Splits(train=splits['train'], val=splits['val'], captions=targets)


def load_splits(data: ml_collections.ConfigDict, task: str = 'object_detection') -> Splits:
  """Both splits, their image files checked; the train split's categories label both;
  for an instance `task`, with their polygons (`with_polygons`) or keypoints
  (`with_keypoints`); for 'captioning', `load_caption_splits`."""
  if task == 'captioning':
    return load_caption_splits(data)
  paths = split_paths(data, task)
  train = coco_json.load_split(paths['train'][1], paths['train'][0])
  val = coco_json.load_split(paths['val'][1], paths['val'][0], categories=train.categories)
  train, val = check_images(train, data.max_instances), check_images(val, data.max_instances)
  if task == 'object_detection':
    return Splits(train=train, val=val)
  with_targets = with_keypoints if task == 'keypoint_detection' else with_polygons
  train, train_targets = with_targets(train, data, training=True)
  val, val_targets = with_targets(val, data, training=False)
  return Splits(train=train, val=val, instances={'train': train_targets, 'val': val_targets})


def model_categories(splits: dict[str, Splits]) -> coco_json.CategoryMap:
  """The categories of a model trained on these tasks' splits ({task: Splits}): its one
  task's, or the union of its tasks' by category id (a multi-task model's class tokens
  are 100 + category id; captioning has none)."""
  if len(splits) == 1:
    return next(iter(splits.values())).categories
  merged = {}
  for task_splits in splits.values():
    for category_id, name in zip(task_splits.categories.category_ids,
                                 task_splits.categories.names):
      merged.setdefault(category_id, name)
  return coco_json.CategoryMap.from_categories(
      [{'id': i, 'name': n} for i, n in merged.items()])


COCO_CLASSES = 80


def class_count(data: ml_collections.ConfigDict) -> tuple[int, str]:
  """(number of classes, where it came from) without reading any images: shapes'
  categories, the categories of the split's COCO-format annotation file where it exists,
  else COCO's 80."""
  if data.source == 'shapes':
    return len(shapes.CATEGORIES), 'shapes categories'
  if data.source == 'coco_files':
    paths = split_paths(data)
    for split in ('val', 'train'):  # the val file is the smaller one to read
      path = paths[split][1]
      if path and os.path.exists(path):
        with open(path) as f:
          return len(json.load(f)['categories']), path
  return COCO_CLASSES, f'no annotation file found: assuming COCO\'s {COCO_CLASSES} classes'
