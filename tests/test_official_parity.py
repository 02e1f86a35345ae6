"""Converted official checkpoints compute the official model's function.

The fixture (tests/fixtures/official_vit_nano, README there) was made by the official
code: a tiny official ViT Pix2Seq with random weights, saved as the official trainer
saves it, its teacher-forced logits and its greedy decoding with the official
post-processing. Full-size parity of R50, R50-C4, ViT-B and ViT-L: benchmarks/
official_parity.py (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from pix2seq_jax import convert_official, vocab as vocab_lib
from pix2seq_jax.data import coco_json
from pix2seq_jax.inference import decoding, detections
from pix2seq_jax.inference.predictor import Predictor
from pix2seq_jax.models import build, official_names
from tests import tiny

FIXTURE = os.path.join(tiny.ROOT, 'tests', 'fixtures', 'official_vit_nano')
pytestmark = pytest.mark.xdist_group('official')


@pytest.fixture(scope='module')
def converted(tmp_path_factory) -> tuple[str, dict]:
  out = str(tmp_path_factory.mktemp('official') / 'workdir')
  return out, convert_official.convert(FIXTURE, out)


@pytest.fixture(scope='module')
def predictor(converted) -> Predictor:
  return Predictor(converted[0], batch_size=2)


def test_the_converter_writes_an_ordinary_workdir(converted):
  workdir, info = converted
  assert info == {'step': 1234, 'variant': 'vit_nano', 'image_size': 32, 'arrays': 63}
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['model']['vocabulary'] == 'official' and config['model']['max_seq_len'] == 512
  assert config['decode']['mode'] == 'official' and config['decode']['top_p'] == 0.4
  with open(os.path.join(workdir, 'categories.json')) as f:
    categories = json.load(f)
  assert len(categories) == 80 and categories[0] == {'id': 1, 'name': 'person'}
  assert categories[-1] == {'id': 90, 'name': 'toothbrush'}


def test_logits_equal_the_official_model(predictor):
  oracle = np.load(os.path.join(FIXTURE, 'oracle.npz'))
  ours = predictor.logits(oracle['images'], oracle['seq'])
  assert ours.shape == oracle['logits'].shape == (2, 26, 3000)
  error = np.abs(ours - oracle['logits']).max()
  assert error <= 1e-4 * np.abs(oracle['logits']).max()
  np.testing.assert_array_equal(ours.argmax(-1), oracle['logits'].argmax(-1))


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


def test_greedy_official_decoding_and_post_processing_equal_the_official(predictor):
  oracle = np.load(os.path.join(FIXTURE, 'oracle.npz'))
  greedy = np.load(os.path.join(FIXTURE, 'oracle_greedy.npz'))
  length = greedy['tokens'].shape[1] + 1  # the official length counts the prompt
  tokens, (out_tokens, out_scores) = _official_greedy(predictor, oracle['images'], length)
  np.testing.assert_array_equal(tokens[:, :length - 1], greedy['tokens'])

  height, width = (int(v) for v in greedy['original_size'])
  scale = 32 / max(height, width)
  # The official code keeps every class id > 0; with categories for every id 1..899 (a
  # random model predicts any of them) ours keeps the same objects.
  ids = tuple(range(1, 900))
  every_id = vocab_lib.for_categories('official', ids, 1000)
  categories = coco_json.CategoryMap(ids, tuple(str(i) for i in ids))
  for row in range(2):
    found = detections.detections_in_pixels(out_tokens[row], out_scores[row], every_id,
                                            categories, 32, scale, (height, width),
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


def test_a_converted_checkpoint_runs_eval_and_predict_from_the_command_line(converted,
                                                                           tmp_path):
  workdir = converted[0]
  coco_tiny = tiny.shared_path('coco_tiny')
  code = tiny.run_main('--mode=eval', '--config=configs/official.py:vit_nano,32',
                       f'--config.data.coco_dir={coco_tiny}', '--config.eval.max_images=4',
                       '--config.eval.batch_size=4', '--config.decode.max_objects=10',
                       f'--workdir={workdir}')
  assert code == 0
  with open(os.path.join(workdir, 'eval', 'step_1234', 'metrics.json')) as f:
    metrics = json.load(f)
  assert 0.0 <= metrics['AP'] <= 1.0 and 'AR100' in metrics
  with open(os.path.join(workdir, 'eval', 'step_1234', 'detections.json')) as f:
    found = json.load(f)
  assert found and {d['category_id'] for d in found} <= set(range(1, 91))
  images = tmp_path / 'images'
  images.mkdir()
  for name in sorted(os.listdir(os.path.join(coco_tiny, 'val2017')))[:3]:
    os.symlink(os.path.join(coco_tiny, 'val2017', name), images / name)
  output = tmp_path / 'detections.json'
  assert tiny.run_main('--mode=predict', f'--workdir={workdir}', f'--images={images}/*.jpg',
                       '--config=configs/official.py:vit_nano,32',
                       '--config.decode.max_objects=10', f'--output={output}') == 0
  with open(output) as f:
    entries = json.load(f)
  assert len(entries) == 3 and any(e['detections'] for e in entries)  # a random model
  assert all(d['category_name'] for e in entries for d in e['detections'])
