"""data.source=tfds: fails at once where coco/2017 is not prepared; reads it where it is.

The prepared dataset here is real TFDS output (a builder with coco/2017's name and
features, fed with the shared coco_tiny images), read back through the project's
offline path and compared with the original annotation file.
"""

import json
import os
import time

import numpy as np
import pytest

from pix2seq_jax.config import checks as config_checks
from pix2seq_jax.data import coco_json, sources, tfds_source
from tests.tiny import shared_path, tiny_config


def test_unprepared_tfds_fails_at_once_with_what_to_do(tmp_path):
  config = tiny_config('unused')
  config.data.source = 'tfds'
  config.data.tfds_data_dir = str(tmp_path / 'empty')
  start = time.perf_counter()
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate(config, mode='train')
  assert time.perf_counter() - start < 5
  message = str(error.value)
  assert 'coco/2017 is not prepared' in message and str(tmp_path / 'empty') in message
  assert 'data.coco_dir' in message and 'manual_dir' in message
  with pytest.raises(tfds_source.TfdsNotPreparedError):
    sources.load_splits(config.data)


def _write_prepared_coco(data_dir: str, coco_dir: str, per_split: int = 6) -> dict:
  """Prepares a TFDS dataset named coco/2017 with coco/2017's features from coco_dir."""
  import tensorflow_datasets as tfds
  originals = {}
  for split in ('train', 'val'):
    with open(os.path.join(coco_dir, 'annotations', f'instances_{split}2017.json')) as f:
      originals[split] = json.load(f)
  names = [c['name'] for c in sorted(originals['train']['categories'], key=lambda c: c['id'])]
  label_of = {c['id']: i for i, c in enumerate(sorted(originals['train']['categories'],
                                                      key=lambda c: c['id']))}

  def examples(split):
    content = originals[split]
    for image in content['images'][:per_split]:
      anns = [a for a in content['annotations'] if a['image_id'] == image['id']]
      h, w = image['height'], image['width']
      yield image['id'], {
          'image': os.path.join(coco_dir, f'{split}2017', image['file_name']),
          'image/filename': image['file_name'], 'image/id': image['id'],
          'objects': {
              'id': [a['id'] for a in anns], 'area': [int(a['area']) for a in anns],
              'bbox': [tfds.features.BBox(
                  ymin=max(a['bbox'][1] / h, 0.0), xmin=max(a['bbox'][0] / w, 0.0),
                  ymax=min((a['bbox'][1] + a['bbox'][3]) / h, 1.0),
                  xmax=min((a['bbox'][0] + a['bbox'][2]) / w, 1.0)) for a in anns],
              'label': [label_of[a['category_id']] for a in anns],
              'is_crowd': [bool(a['iscrowd']) for a in anns]}}

  with tfds.core.registered.skip_registration():
    class Coco(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version('1.1.0')
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='2017')]

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'image/filename': tfds.features.Text(), 'image/id': np.int64,
            'objects': tfds.features.Sequence({
                'id': np.int64, 'area': np.int64, 'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(names=names), 'is_crowd': np.bool_})}))

      def _split_generators(self, dl_manager):
        return {'train': examples('train'), 'validation': examples('val')}

      def _generate_examples(self):
        raise NotImplementedError  # the generators above are passed directly

    Coco(data_dir=data_dir, config='2017').download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return originals


def test_prepared_tfds_is_exported_and_read_like_the_files(tmp_path):
  coco_dir = shared_path('coco_tiny')
  data_dir = str(tmp_path / 'tfds')
  originals = _write_prepared_coco(data_dir, coco_dir)
  assert tfds_source.prepared_dir(data_dir).endswith(os.path.join('coco', '2017', '1.1.0'))

  config = tiny_config('unused')
  config.data.source = 'tfds'
  config.data.tfds_data_dir = data_dir
  config_checks.validate(config, mode='train')
  splits = sources.load_splits(config.data)
  assert len(splits.train.records) == 6 and len(splits.val.records) == 6
  # Category ids and names are COCO's, boxes are the file's (within float rounding).
  assert set(splits.categories.category_ids) <= set(tfds_source.COCO_CATEGORY_IDS)
  original = coco_json.load_split(os.path.join(coco_dir, 'annotations', 'instances_val2017.json'),
                                  os.path.join(coco_dir, 'val2017'))
  by_id = {r.image_id: r for r in original.records}
  for record in splits.val.records:
    reference = by_id[record.image_id]
    assert os.path.exists(record.path)
    with open(record.path, 'rb') as f, open(reference.path, 'rb') as g:
      assert f.read() == g.read()  # the JPEG bytes, unchanged
    names = lambda split, labels: sorted(split.categories.names[i] for i in labels)
    assert names(splits.val, record.labels) == names(original, reference.labels)
    np.testing.assert_allclose(np.sort(record.boxes, axis=0), np.sort(reference.boxes, axis=0),
                               atol=1e-4)
  # The second use reads the export without touching TFDS again.
  marker = os.path.join(tfds_source.export_dir(config.data), 'EXPORT_COMPLETE')
  before = os.path.getmtime(marker)
  sources.load_splits(config.data)
  assert os.path.getmtime(marker) == before
  assert originals['val']['images']
