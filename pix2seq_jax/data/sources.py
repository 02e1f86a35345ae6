"""Resolves `config.data` to the two splits the project trains and evaluates on.

Sources:
  shapes      synthetic shapes, generated once into `data.shapes_dir` (see shapes.py)
  coco_files  any COCO-format dataset: `data.coco_dir` (DETR/COCO 2017 layout) or
              explicit `data.{train,val}_{images,annotations}`
  tfds        COCO 2017 prepared by TensorFlow Datasets in `data.tfds_data_dir`,
              exported once to the COCO layout (tfds_source.py); offline, fails fast
The train split's categories fix the label map for both splits.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from pix2seq_jax.data import coco_json, shapes, tfds_source

SOURCES = ('shapes', 'coco_files', 'tfds')


@dataclasses.dataclass
class Splits:
  train: coco_json.CocoSplit
  val: coco_json.CocoSplit

  @property
  def categories(self) -> coco_json.CategoryMap:
    return self.train.categories


def split_paths(data: ml_collections.ConfigDict) -> dict[str, tuple[str, str]]:
  """{split: (images_dir, annotations_path)} for the configured source."""
  if data.source == 'shapes':
    return shapes.ensure_dataset(
        data.shapes_dir, seed=data.shapes_seed, num_train=data.shapes_num_train,
        num_val=data.shapes_num_val)
  if data.source == 'coco_files':
    if data.coco_dir:
      return {
          'train': (os.path.join(data.coco_dir, 'train2017'),
                    os.path.join(data.coco_dir, 'annotations', 'instances_train2017.json')),
          'val': (os.path.join(data.coco_dir, 'val2017'),
                  os.path.join(data.coco_dir, 'annotations', 'instances_val2017.json')),
      }
    return {'train': (data.train_images, data.train_annotations),
            'val': (data.val_images, data.val_annotations)}
  if data.source == 'tfds':
    return tfds_source.split_paths(data)
  raise ValueError(f'config.data.source={data.source!r} is not one of {SOURCES}.')


def load_splits(data: ml_collections.ConfigDict) -> Splits:
  paths = split_paths(data)
  train = coco_json.load_split(paths['train'][1], paths['train'][0])
  val = coco_json.load_split(paths['val'][1], paths['val'][0], categories=train.categories)
  return Splits(train=train, val=val)
