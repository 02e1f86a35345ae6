"""Converted official checkpoints compute the official model's function.

The fixtures (tests/fixtures/official_*, README in each) were made by the official code:
tiny official models with random weights, saved as the official trainer saves them, their
teacher-forced logits and their greedy decoding with the official post-processing. One
ViT (`vit-b`'s architecture) and two ResNet-50s at 1/32 width, C5 features (`resnet`) and
C4 (`resnet-c`), with batch-norm statistics far from their defaults. Full-size parity of
R50, R50-C4, ViT-B and ViT-L: benchmarks/official_parity.py (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pix2seq_jax.data import coco_json
from pix2seq_jax.evaluation.predict_split import predict_coco_split
from pix2seq_jax.inference import decoding, detections
from pix2seq_jax.inference.predictor import Predictor
from pix2seq_jax.models import build
from pix2seq_jax.official import convert as convert_official
from pix2seq_jax.official import names as official_names
from pix2seq_jax.tasks import vocab as vocab_lib
from tests import tiny

FIXTURES = os.path.join(tiny.ROOT, 'tests', 'fixtures')
FIXTURE = os.path.join(FIXTURES, 'official_vit_nano')
OFFICIAL_CONFIG = os.path.join(tiny.ROOT, 'configs', 'official.py')
# Fixture folder -> what the converter reports: our variant, canvas size, arrays.
CONVERTED = {
    'official_vit_nano': {'step': 1234, 'variant': 'vit_nano', 'image_size': 32,
                          'arrays': 63},
    'official_resnet_nano': {'step': 1234, 'variant': 'r50_nano', 'image_size': 64,
                             'arrays': 328},
    'official_resnet_c_nano': {'step': 1234, 'variant': 'r50_c4_nano', 'image_size': 32,
                               'arrays': 278},
}
RESNETS = ('official_resnet_nano', 'official_resnet_c_nano')
# Parity: compiled as users' runs are (tests/conftest.py).
pytestmark = [pytest.mark.xdist_group('official'), pytest.mark.xla_default]


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  """Fixture folder name -> (converted workdir, the converter's report), converted once."""
  done = {}

  def get(name: str) -> tuple[str, dict]:
    if name not in done:
      out = str(tmp_path_factory.mktemp(name) / 'workdir')
      done[name] = out, convert_official.convert(os.path.join(FIXTURES, name), out)
    return done[name]

  return get


@pytest.fixture(scope='module')
def converted(workdirs) -> tuple[str, dict]:
  return workdirs('official_vit_nano')


@pytest.fixture(scope='module')
def predictors(workdirs):
  """Fixture folder name -> a Predictor of its converted workdir, made once."""
  done = {}

  def get(name: str) -> Predictor:
    if name not in done:
      done[name] = Predictor(workdirs(name)[0], batch_size=2)
    return done[name]

  return get


@pytest.fixture(scope='module')
def predictor(predictors) -> Predictor:
  return predictors('official_vit_nano')


@pytest.fixture(params=sorted(CONVERTED))
def official(request, workdirs, predictors) -> tuple[str, dict, Predictor]:
  """Each fixture: (its folder, the converter's report, a Predictor of the workdir)."""
  return (os.path.join(FIXTURES, request.param), workdirs(request.param)[1],
          predictors(request.param))


def test_the_converter_writes_an_ordinary_workdir(converted):
  workdir, info = converted
  assert info == CONVERTED['official_vit_nano']
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['model']['vocabulary'] == 'official' and config['model']['max_seq_len'] == 512
  assert config['decode']['mode'] == 'official' and config['decode']['top_p'] == 0.4
  with open(os.path.join(workdir, 'categories.json')) as f:
    categories = json.load(f)
  assert len(categories) == 80 and categories[0] == {'id': 1, 'name': 'person'}
  assert categories[-1] == {'id': 90, 'name': 'toothbrush'}


def test_logits_equal_the_official_model(official):
  """Every official architecture family: ViT, ResNet-50 C5 (`resnet`), C4 (`resnet-c`)."""
  folder, info, predictor = official
  assert info == CONVERTED[os.path.basename(folder)]
  oracle = np.load(os.path.join(folder, 'oracle.npz'))
  ours = predictor.logits(oracle['images'], oracle['seq'])
  assert ours.shape == oracle['logits'].shape == oracle['seq'].shape + (3000,)
  error = np.abs(ours - oracle['logits']).max()
  assert error <= 1e-4 * np.abs(oracle['logits']).max()
  np.testing.assert_array_equal(ours.argmax(-1), oracle['logits'].argmax(-1))


@pytest.mark.parametrize('name', RESNETS)
def test_the_resnet_batch_statistics_are_converted(predictors, name):
  """The fixtures' moving statistics (set by the official model's own training-mode
  updates) are far from 0 and 1, and the logits need them: with the default statistics
  they miss the official logits by far more than the parity tolerance."""
  predictor = predictors(name)
  stats = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
           jax.tree_util.tree_leaves_with_path(predictor.batch_stats)}
  means = np.concatenate([v for k, v in stats.items() if "'mean'" in k])
  variances = np.concatenate([v for k, v in stats.items() if "'var'" in k])
  assert means.size == variances.size and len(stats) % 2 == 0
  assert np.abs(means).max() > 1.0 and np.abs(np.log(variances)).max() > 2.0
  oracle = np.load(os.path.join(FIXTURES, name, 'oracle.npz'))
  converted_stats = predictor.batch_stats
  predictor.batch_stats = jax.tree_util.tree_map_with_path(  # placed as the converted ones
      lambda path, x: jax.device_put(np.zeros(x.shape, x.dtype) if "'mean'" in
                                     jax.tree_util.keystr(path) else np.ones(x.shape, x.dtype),
                                     x.sharding), converted_stats)
  try:
    default = predictor.logits(oracle['images'], oracle['seq'])
  finally:
    predictor.batch_stats = converted_stats
  assert np.abs(default - oracle['logits']).max() > 100 * 1e-4 * np.abs(oracle['logits']).max()


def test_logits_refuse_inputs_off_the_contract(predictor):
  images = np.zeros((1, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match=r'\[B, 32, 32, 3\]'):
    predictor.logits(np.zeros((1, 64, 64, 3), np.float32), np.full((1, 3), 10))
  with pytest.raises(ValueError, match=r'ids must be in \[0, 3000\)'):
    predictor.logits(images, np.full((1, 3), 3000))
  with pytest.raises(ValueError, match='T <= 512'):
    predictor.logits(images, np.full((1, 513), 10))


def _official_greedy(predictor: Predictor, images: np.ndarray, length: int):
  graphdef = build.model_graphdef(predictor.config, predictor.vocab)

  @jax.jit
  def run(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats)
    state = decoding.decode(model, images, predictor.vocab, length=length, temperature=0.0,
                            mode='official')
    return state.tokens, decoding.detection_outputs(state, predictor.vocab, 'class',
                                                    'official')

  return jax.device_get(run(predictor.params, predictor.batch_stats, images))


def test_greedy_official_decoding_and_post_processing_equal_the_official(official):
  folder, _, predictor = official
  oracle = np.load(os.path.join(folder, 'oracle.npz'))
  greedy = np.load(os.path.join(folder, 'oracle_greedy.npz'))
  length = greedy['tokens'].shape[1] + 1  # the official length counts the prompt
  tokens, (out_tokens, out_scores) = _official_greedy(predictor, oracle['images'], length)
  np.testing.assert_array_equal(tokens[:, :length - 1], greedy['tokens'])

  height, width = (int(v) for v in greedy['original_size'])
  size = predictor.size
  scale = size / max(height, width)
  # The official code keeps every class id > 0; with categories for every id 1..899 (a
  # random model predicts any of them) ours keeps the same objects.
  ids = tuple(range(1, 900))
  every_id = vocab_lib.for_categories('official', ids, 1000)
  categories = coco_json.CategoryMap(ids, tuple(str(i) for i in ids))
  for row in range(2):
    found = detections.detections_in_pixels(out_tokens[row], out_scores[row], every_id,
                                            categories, size, scale, (height, width),
                                            mode='official')
    known = greedy['classes'][row] > 0
    assert known.sum() > 10
    assert [d['category_id'] for d in found] == greedy['classes'][row][known].tolist()
    np.testing.assert_allclose([d['score'] for d in found], greedy['scores'][row][known],
                               rtol=1e-4)
    ymin, xmin, ymax, xmax = np.moveaxis(greedy['boxes'][row][known], -1, 0)
    expected = np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)
    np.testing.assert_allclose([d['bbox'] for d in found], expected, atol=0.011)


class _Reader:
  """tf.train checkpoint reader over a dict: name -> array."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def get_variable_to_shape_map(self):
    return {k: list(np.shape(v)) for k, v in self.arrays.items()}

  def get_tensor(self, name):
    return self.arrays[name]


def test_the_converter_lists_unmapped_missing_and_misshaped_names():
  import tensorflow as tf
  prefix, config_path = convert_official.locate(FIXTURE)
  reader = tf.train.load_checkpoint(prefix)
  arrays = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
  with open(config_path) as f:
    config = convert_official.project_config(json.load(f))
  vocab = vocab_lib.for_categories('official', range(1, 91), 1000)
  suffix = official_names.SUFFIX
  del arrays['model/encoder/stem_ln/gamma' + suffix]
  arrays['model/encoder/extra_layer/kernel' + suffix] = np.zeros((2, 2), np.float32)
  arrays['model/proj/kernel' + suffix] = np.zeros((32, 33), np.float32)
  arrays['optimizer/_variables/999' + suffix] = np.zeros((3,), np.float32)  # ignored
  with pytest.raises(convert_official.ConversionError) as error:
    convert_official.convert_arrays(_Reader(arrays), config, vocab)
  text = str(error.value)
  assert '1 unmapped' in text and 'model/encoder/extra_layer/kernel' in text
  assert '1 missing' in text and 'params/input_norm/scale <- model/encoder/stem_ln/gamma' in text
  assert '1 mis-shaped' in text and 'official [32, 33] (same) vs ours [32, 32]' in text
  assert 'optimizer' not in text


def test_the_converter_refuses_other_architectures_and_a_used_output(tmp_path, converted):
  with open(os.path.join(FIXTURE, 'config.json')) as f:
    official = json.load(f)
  official['model']['resnet_variant'] = 'c3'
  with pytest.raises(convert_official.ConversionError, match="resnet_variant='c3'"):
    convert_official.project_config(official)
  official['model'].update(resnet_variant='standard', resnet_depth=50,
                           resnet_width_multiplier=0.5, resnet_sk_ratio=0.0)
  with pytest.raises(convert_official.ConversionError, match=r'\(50, 0.5, 0.0\): only'):
    convert_official.project_config(official)
  official['model'].update(resnet_variant='c1', num_encoder_layers=3)
  with pytest.raises(convert_official.ConversionError, match='No variant of this project'):
    convert_official.project_config(official)
  with pytest.raises(convert_official.ConversionError, match='no TF checkpoint'):
    convert_official.locate(str(tmp_path))
  copy = tmp_path / 'copy'
  shutil.copytree(FIXTURE, copy)
  os.remove(copy / 'config.json')
  with pytest.raises(convert_official.ConversionError, match='config.json is missing'):
    convert_official.locate(str(copy / 'ckpt-1234'))
  with pytest.raises(convert_official.ConversionError, match='already holds checkpoints'):
    convert_official.convert(FIXTURE, converted[0])


# pycocotools' summary, in the order of COCOeval.stats.
COCO_STATS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def _coco_with_planted_ground_truth(coco_tiny: str, out: str, found: list[dict]) -> str:
  """A COCO folder `out`: coco_tiny's images and annotations, plus as ground truth the two
  best-scoring of the detections `found` of each image (a random model then scores
  between 0 and 1: its other detections and the real objects stay unmatched)."""
  for name in ('train2017', 'val2017'):
    os.symlink(os.path.join(coco_tiny, name), os.path.join(out, name))
  os.makedirs(os.path.join(out, 'annotations'))
  os.symlink(os.path.join(coco_tiny, 'annotations', 'instances_train2017.json'),
             os.path.join(out, 'annotations', 'instances_train2017.json'))
  with open(os.path.join(coco_tiny, 'annotations', 'instances_val2017.json')) as f:
    dataset = json.load(f)
  next_id = max(a['id'] for a in dataset['annotations']) + 1
  for image_id in sorted({d['image_id'] for d in found}):
    boxes = [d for d in found if d['image_id'] == image_id and min(d['bbox'][2:]) > 1]
    for d in sorted(boxes, key=lambda d: -d['score'])[:2]:
      x, y, w, h = (round(v, 2) for v in d['bbox'])
      dataset['annotations'].append({'id': next_id, 'image_id': image_id, 'iscrowd': 0,
                                     'category_id': d['category_id'], 'bbox': [x, y, w, h],
                                     'area': w * h})
      next_id += 1
  path = os.path.join(out, 'annotations', 'instances_val2017.json')
  with open(path, 'w') as f:
    json.dump(dataset, f)
  return path


def test_a_converted_checkpoint_evaluates_from_the_command_line_as_the_predictor_and_pycocotools(
    converted, tmp_path):
  """--mode=eval on a converted checkpoint writes the detections the Predictor makes of
  the same images with the same decoding (official nucleus sampling, step 1234's key),
  and the metrics pycocotools computes of them on the evaluated images, on ground truth
  where they score between 0 and 1."""
  workdir = converted[0]
  coco_tiny = tiny.shared_path('coco_tiny')
  predictor = Predictor(workdir, batch_size=4, decode={'max_objects': 30})
  expected, image_ids = predict_coco_split(
      predictor, os.path.join(coco_tiny, 'annotations', 'instances_val2017.json'),
      os.path.join(coco_tiny, 'val2017'), max_images=4)
  assert len(image_ids) == 4 and len({d['image_id'] for d in expected} & set(image_ids)) >= 3
  coco_dir = tmp_path / 'coco'
  coco_dir.mkdir()
  annotations = _coco_with_planted_ground_truth(coco_tiny, str(coco_dir), expected)

  code = tiny.run_main('--mode=eval', f'--config={OFFICIAL_CONFIG}:vit_nano,32',
                       f'--config.data.coco_dir={coco_dir}', '--config.eval.max_images=4',
                       '--config.eval.batch_size=4', '--config.decode.max_objects=30',
                       f'--workdir={workdir}')
  assert code == 0
  with open(os.path.join(workdir, 'eval', 'step_1234', 'detections.json')) as f:
    found = json.load(f)
  key = lambda d: (image_ids.index(d['image_id']), -d['score'])  # noqa: E731
  found, expected = sorted(found, key=key), sorted(expected, key=key)
  assert [(d['image_id'], d['category_id']) for d in found] == [
      (d['image_id'], d['category_id']) for d in expected]
  # The same tokens; the scores (probabilities) within 1%: the Predictor decodes the
  # JPEGs with PIL, the pipeline with TensorFlow: their pixels differ by a few levels.
  np.testing.assert_allclose([d['score'] for d in found], [d['score'] for d in expected],
                             rtol=1e-2)
  np.testing.assert_allclose([d['bbox'] for d in found], [d['bbox'] for d in expected],
                             atol=0.005 + 1e-6)  # eval writes boxes to 1/100 px

  with open(os.path.join(workdir, 'eval', 'step_1234', 'metrics.json')) as f:
    metrics = json.load(f)
  ground_truth = COCO(annotations)
  coco_eval = COCOeval(ground_truth, ground_truth.loadRes(found), iouType='bbox')
  coco_eval.params.imgIds = image_ids
  coco_eval.evaluate()
  coco_eval.accumulate()
  coco_eval.summarize()
  assert {k: metrics[k] for k in COCO_STATS} == pytest.approx(
      dict(zip(COCO_STATS, coco_eval.stats.tolist())), abs=1e-12)
  assert 0.0 < metrics['AP'] < 1.0 and 0.0 < metrics['AR100'] < 1.0


def test_a_converted_checkpoint_predicts_from_the_command_line(converted, tmp_path):
  workdir = converted[0]
  coco_tiny = tiny.shared_path('coco_tiny')
  images = tmp_path / 'images'
  images.mkdir()
  for name in sorted(os.listdir(os.path.join(coco_tiny, 'val2017')))[:3]:
    os.symlink(os.path.join(coco_tiny, 'val2017', name), images / name)
  output = tmp_path / 'detections.json'
  assert tiny.run_main('--mode=predict', f'--workdir={workdir}', f'--images={images}/*.jpg',
                       f'--config={OFFICIAL_CONFIG}:vit_nano,32',
                       '--config.decode.max_objects=10', f'--output={output}') == 0
  with open(output) as f:
    entries = json.load(f)
  assert len(entries) == 3 and any(e['detections'] for e in entries)  # a random model
  assert all(d['category_name'] for e in entries for d in e['detections'])


def test_the_converter_command_line_names_the_classes_with_categories(tmp_path):
  categories = [{'id': 7, 'name': 'train'}, {'id': 2, 'name': 'bicycle'},
                {'id': 44, 'name': 'bottle'}]
  path = tmp_path / 'categories.json'
  path.write_text(json.dumps({'images': [], 'annotations': [], 'categories': categories}))
  output = tmp_path / 'workdir'
  done = subprocess.run(
      [sys.executable, '-m', 'pix2seq_jax.official.convert', f'--checkpoint={FIXTURE}',
       f'--output={output}', f'--categories={path}'], cwd=tmp_path, capture_output=True,
      text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.strip().splitlines()[-1]) == {
      'output': str(output), **CONVERTED['official_vit_nano']}
  with open(output / 'categories.json') as f:
    assert json.load(f) == sorted(categories, key=lambda c: c['id'])


@pytest.mark.parametrize('content, problem', [
    ('{"categories": [{"id": 1, "name": "a"}', 'JSONDecodeError'),
    ('[{"name": "no id"}]', "KeyError: 'id'"),
    ('[{"id": 950, "name": "beyond the class tokens"}]', 'category ids 0..'),
    (None, 'FileNotFoundError'),
])
def test_the_converter_command_line_refuses_a_bad_categories_file(tmp_path, capsys, content,
                                                                  problem):
  path = tmp_path / 'categories.json'
  if content is not None:
    path.write_text(content)
  output = tmp_path / 'workdir'
  assert convert_official.main([f'--checkpoint={FIXTURE}', f'--output={output}',
                                f'--categories={path}']) == 1
  error = capsys.readouterr().err
  assert error.startswith(f'error: --categories={path}: expected a COCO instances file')
  assert problem in error and not output.exists()
