"""`data.source='tfds'`: COCO 2017 as prepared by TensorFlow Datasets (`coco/2017`).

The project runs offline, so nothing here downloads: the prepared dataset is looked up
in `data.tfds_data_dir` (<dir>/coco/2017/<version>/dataset_info.json) and read with
`tfds.builder_from_directory`, which touches only local files. Where it is absent the
run stops at once, saying how to provide the data.

On first use the train and validation splits are written out once, in the COCO layout
the rest of the pipeline reads (`data.tfds_export_dir`, default
<tfds_data_dir>/coco2017_files): the JPEG bytes as files and instances_*.json built
from the TFDS objects. Label i becomes COCO category id COCO_CATEGORY_IDS[i] (TFDS
numbers the labels in the annotation file's category order), so detections carry the
official ids. The export needs about as much disk as the images (~19 GB for COCO).
"""

from __future__ import annotations

import glob
import io
import json
import os

from PIL import Image

NAME = 'coco/2017'
SPLITS = {'train': 'train', 'val': 'validation'}
# The 80 category ids of COCO 2017's instances files, in their order (ids 12, 26, 29,
# 30, 45, 66, 68, 69, 71 and 83 are unused).
COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
_DONE = 'EXPORT_COMPLETE'


class TfdsNotPreparedError(FileNotFoundError):
  pass


def default_data_dir() -> str:
  return os.path.join(os.path.expanduser('~'), 'tensorflow_datasets')


def prepared_dir(data_dir: str) -> str | None:
  """The newest prepared version folder of coco/2017 under `data_dir`, or None."""
  infos = glob.glob(os.path.join(data_dir, 'coco', '2017', '*', 'dataset_info.json'))
  if not infos:
    return None

  def version(path):
    return tuple(int(p) for p in os.path.basename(os.path.dirname(path)).split('.')
                 if p.isdigit())
  return os.path.dirname(max(infos, key=version))


def require_prepared(data_dir: str) -> str:
  """`prepared_dir(data_dir)`, or a TfdsNotPreparedError that says what to do."""
  found = prepared_dir(data_dir)
  if found is None:
    raise TfdsNotPreparedError(
        f'data.source=tfds: {NAME} is not prepared under data.tfds_data_dir={data_dir!r} '
        f'(no {os.path.join(data_dir, "coco", "2017", "<version>", "dataset_info.json")}). '
        'This project does not download. Either prepare it where there is network access '
        f'(`tfds build {NAME} --data_dir=DIR`, or with the original COCO zips placed in '
        'TFDS\'s manual_dir) and copy DIR here, or unzip COCO 2017 (train2017/, val2017/, '
        'annotations/) and use data.source=coco_files with data.coco_dir=PATH.')
  return found


def export_dir(data) -> str:
  return data.tfds_export_dir or os.path.join(data.tfds_data_dir or default_data_dir(),
                                              'coco2017_files')


def _export_split(builder, tfds_split: str, images_dir: str, annotations_path: str) -> None:
  import tensorflow_datasets as tfds
  os.makedirs(images_dir, exist_ok=True)
  names = builder.info.features['objects']['label'].names
  categories = [{'id': COCO_CATEGORY_IDS[i], 'name': name} for i, name in enumerate(names)]
  images, annotations = [], []
  dataset = builder.as_dataset(split=tfds_split, shuffle_files=False,
                               decoders={'image': tfds.decode.SkipDecoding()})
  for example in dataset.as_numpy_iterator():
    file_name = os.path.basename(example['image/filename'].decode())
    with open(os.path.join(images_dir, file_name), 'wb') as f:
      f.write(example['image'])
    width, height = Image.open(io.BytesIO(example['image'])).size
    image_id = int(example['image/id'])
    images.append({'id': image_id, 'file_name': file_name, 'width': width, 'height': height})
    objects = example['objects']
    for ann_id, box, label, crowd, area in zip(objects['id'], objects['bbox'],
                                               objects['label'], objects['is_crowd'],
                                               objects['area']):
      ymin, xmin, ymax, xmax = (float(v) for v in box * [height, width, height, width])
      annotations.append({'id': int(ann_id), 'image_id': image_id,
                          'category_id': COCO_CATEGORY_IDS[int(label)],
                          'bbox': [xmin, ymin, xmax - xmin, ymax - ymin],
                          'area': float(area), 'iscrowd': int(crowd)})
  os.makedirs(os.path.dirname(annotations_path), exist_ok=True)
  with open(annotations_path + '.tmp', 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)
  os.replace(annotations_path + '.tmp', annotations_path)


def split_paths(data) -> dict[str, tuple[str, str]]:
  """{split: (images_dir, annotations_path)} of the export, writing it on first use."""
  source = require_prepared(data.tfds_data_dir or default_data_dir())
  root = export_dir(data)
  paths = {split: (os.path.join(root, f'{split}2017'),
                   os.path.join(root, 'annotations', f'instances_{split}2017.json'))
           for split in SPLITS}
  if not os.path.exists(os.path.join(root, _DONE)):
    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(source)
    for split, (images_dir, annotations_path) in paths.items():
      _export_split(builder, SPLITS[split], images_dir, annotations_path)
    with open(os.path.join(root, _DONE), 'w') as f:
      f.write(source + '\n')
  return paths
