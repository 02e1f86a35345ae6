"""Deploy: the exported detector (jax.export and SavedModel) detects what the Predictor
detects, runs without the model code, and refuses damaged or foreign export folders."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pix2seq_jax.deploy import detector, export, serving
from pix2seq_jax.inference import detections
from pix2seq_jax.inference import images as images_lib
from pix2seq_jax.inference.predictor import Predictor
from pix2seq_jax.tasks import detection
from pix2seq_jax.tasks import vocab as vocab_lib
from tests import tiny
from tests.test_official_parity import FIXTURE


def _images(shapes_dir: str, folder) -> tuple[list[str], list]:
  """Image files of the shapes val split plus grey, RGBA and odd-sized ones (as files
  and arrays): what both the Predictor and the export are given."""
  files = sorted(glob.glob(os.path.join(shapes_dir, 'val', '*.jpg')))[:4]
  rng = np.random.default_rng(0)
  first = images_lib.load_image(files[0])
  grey_file, rgba_file = str(folder / 'grey.png'), str(folder / 'rgba.png')
  Image.fromarray(first[..., 0]).save(grey_file)
  Image.fromarray(np.concatenate([first, first[..., :1]], axis=-1), 'RGBA').save(rgba_file)
  arrays = [rng.integers(0, 256, (37, 91), np.uint8),  # grey, wide
            rng.integers(0, 256, (120, 50, 4), np.uint8),  # RGBA, tall
            np.repeat(first, 3, axis=0)]  # upscaled past the canvas: resized down
  return files + [grey_file, rgba_file], arrays


def _assert_same(expected: list[list[dict]], found: list[list[dict]]) -> int:
  """Identical objects (classes in order), scores within 1e-5, boxes within 1e-3 px."""
  assert len(found) == len(expected)
  for want, got in zip(expected, found):
    assert [d['category_id'] for d in got] == [d['category_id'] for d in want]
    for a, b in zip(want, got):
      assert abs(a['score'] - b['score']) <= 1e-5
      np.testing.assert_allclose(b['bbox'], a['bbox'], rtol=0, atol=1e-3)
  return sum(len(x) for x in expected)


@pytest.fixture(scope='module')
def exported(tiny_workdir, tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp('deploy') / 'export')
  export.export_workdir(tiny_workdir, out)
  return out


def test_the_export_folder_says_what_it_holds(exported, tiny_workdir):
  with open(os.path.join(exported, 'export.json')) as f:
    manifest = json.load(f)
  assert manifest['format'] == serving.FORMAT and manifest['checkpoint_step'] == 2
  assert manifest['canvas_size'] == 64 and manifest['canvases'] == [
      {'shape': [64, 64], 'file': 'detector.jax'}]
  assert manifest['platforms'] == ['cpu', 'cuda'] and manifest['max_detections'] == 8
  assert [c['id'] for c in manifest['categories']] == list(range(1, 10))
  assert manifest['vocabulary']['size'] == Predictor(tiny_workdir).vocab.size
  assert sorted(manifest['sha256']) == ['detector.jax', 'weights.npz']
  assert os.path.exists(os.path.join(exported, 'saved_model', 'saved_model.pb'))


_SERVING = '''
import json, sys
import numpy as np
BLOCKED = ('flax', 'optax', 'orbax', 'tensorflow', 'pix2seq_jax.models', 'pix2seq_jax.train',
           'pix2seq_jax.deploy.detector', 'pix2seq_jax.deploy.export',
           'pix2seq_jax.deploy.saved_model', 'pix2seq_jax.inference.decoding',
           'pix2seq_jax.inference.predictor', 'pix2seq_jax.inference.sharded_decode')
class Block:
  def find_spec(self, name, path=None, target=None):
    if any(name == b or name.startswith(b + '.') for b in BLOCKED):
      raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
from pix2seq_jax.deploy import serving
export_dir, files, arrays, out = sys.argv[1:]
arrays = np.load(arrays)
detector = serving.load(export_dir, batch_size=4)
found = detector(json.loads(files) + [arrays[k] for k in sorted(arrays.files)])
with open(out, 'w') as f:
  json.dump(found, f)
'''

_SAVED_MODEL = '''
import json, sys
import numpy as np
BLOCKED = ('jax', 'flax', 'pix2seq_jax')
class Block:
  def find_spec(self, name, path=None, target=None):
    if any(name == b or name.startswith(b + '.') for b in BLOCKED):
      raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
import tensorflow as tf
folder, arrays, out = sys.argv[1:]
arrays = np.load(arrays)
images = [arrays[k] for k in sorted(arrays.files)]
serve = tf.saved_model.load(folder).signatures['serving_default']
def as_batch(images):  # padded bottom/right to a common size, with each one's own size
  channels = max(i.shape[2] for i in images)
  batch = np.zeros((len(images), max(i.shape[0] for i in images),
                    max(i.shape[1] for i in images), channels), np.uint8)
  for row, image in enumerate(images):
    batch[row, :image.shape[0], :image.shape[1], :image.shape[2]] = image
  return batch, np.asarray([i.shape[:2] for i in images], np.int32)
def run(images):
  result = serve(**dict(zip(('images', 'sizes'), map(tf.constant, as_batch(images)))))
  result = {k: v.numpy() for k, v in result.items()}
  return [[{'category_id': int(c), 'bbox': b.tolist(), 'score': float(s)}
           for b, c, s in zip(result['boxes'][row, :n], result['classes'][row, :n],
                              result['scores'][row, :n])]
          for row, n in enumerate(result['num_detections'])]
three = [i for i in images if i.shape[2] == 3]
with open(out, 'w') as f:
  json.dump({'one_by_one': [run([i])[0] for i in images], 'together': run(three)}, f)
'''


def _arrays_file(files, arrays, path) -> str:
  """All images as uint8 arrays [H, W, C] in one .npz (C as stored: grey has 1)."""
  stored = [np.asarray(Image.open(f)) for f in files] + arrays
  stored = [a[..., None] if a.ndim == 2 else a for a in stored]
  np.savez(path, **{f'{i:02d}': a for i, a in enumerate(stored)})
  return path


def test_serving_load_runs_with_jax_alone_and_matches_the_predictor(
    exported, tiny_workdir, shapes_dir, tmp_path):
  files, arrays = _images(shapes_dir, tmp_path)
  expected = Predictor(tiny_workdir, batch_size=4)(files + arrays)
  out = str(tmp_path / 'found.json')
  extra = str(tmp_path / 'arrays.npz')
  np.savez(extra, **{f'{i:02d}': a for i, a in enumerate(arrays)})
  run = subprocess.run([sys.executable, '-c', _SERVING, exported, json.dumps(files), extra, out],
                       cwd=tiny.ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(out) as f:
    found = json.load(f)
  assert _assert_same(expected, found) > 0
  assert [d['category_name'] for d in found[0]] == [d['category_name'] for d in expected[0]]


def test_the_saved_model_runs_with_tensorflow_alone_and_matches_the_predictor(
    exported, tiny_workdir, shapes_dir, tmp_path):
  files, arrays = _images(shapes_dir, tmp_path)
  everything = _arrays_file(files, arrays, str(tmp_path / 'all.npz'))
  out = str(tmp_path / 'found.json')
  run = subprocess.run([sys.executable, '-c', _SAVED_MODEL,
                        os.path.join(exported, 'saved_model'), everything, out],
                       cwd=tiny.ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(out) as f:
    found = json.load(f)
  predictor = Predictor(tiny_workdir, batch_size=4)
  expected = predictor(files + arrays)
  assert _assert_same(expected, found['one_by_one']) > 0
  rgb = [e for e, image in zip(expected, files + arrays)
         if (isinstance(image, str) and not image.endswith(('grey.png', 'rgba.png')))
         or (not isinstance(image, str) and image.ndim == 3 and image.shape[2] == 3)]
  _assert_same(rgb, found['together'])  # one padded batch of several sizes


def test_a_converted_official_checkpoint_exports_the_same_detections(tmp_path):
  from pix2seq_jax.official import convert as convert_official
  workdir = str(tmp_path / 'official')
  convert_official.convert(FIXTURE, workdir)  # official vocabulary, decode mode, sampling
  decode = {'max_objects': 12}  # 61 tokens: one cache block, a quicker compilation
  export.export_workdir(workdir, str(tmp_path / 'export'), decode=decode, saved_model=False)
  images = [np.asarray(Image.new('RGB', (40, 24), (200, 30, 30))),
            np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)]
  expected = Predictor(workdir, batch_size=2, decode=decode)(images)
  assert _assert_same(expected, serving.load(str(tmp_path / 'export'), batch_size=2)(images)) > 0


def test_each_canvas_of_the_predictor_is_exported(tiny_workdir, tmp_path):
  """decode.canvas_buckets 2: the wide and tall canvases get their own programs, and wide,
  tall and square images detect as the Predictor detects them on the same canvases."""
  out = str(tmp_path / 'export')
  manifest = export.export_workdir(tiny_workdir, out, decode={'canvas_buckets': 2},
                                   saved_model=False)
  assert [c['file'] for c in manifest['canvases']] == [
      'detector_32x64.jax', 'detector_64x32.jax', 'detector.jax']
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, shape, np.uint8) for shape in
            ((20, 64, 3), (90, 30, 3), (50, 50, 3), (10, 40, 3))]
  predictor = Predictor(tiny_workdir, batch_size=2, decode={'canvas_buckets': 2})
  expected = predictor(images)
  assert predictor.compilations == 3
  assert _assert_same(expected, serving.load(out, batch_size=2)(images)) > 0


@pytest.mark.parametrize('layout', ['compact', 'official'])
@pytest.mark.parametrize('mode', ['grammar', 'official'])
def test_reading_objects_in_the_graph_equals_parsing_with_numpy(layout, mode):
  ids = (1, 3, 7, 20)
  vocab = vocab_lib.for_categories(layout, ids, 16)
  rng = np.random.default_rng(0)
  length = vocab_lib.sequence_length(6)
  pools = [np.arange(vocab.coord_offset, vocab.coord_offset + 16), vocab.class_tokens,
           [vocab.eos, vocab.padding, vocab.noise_class, vocab.start, vocab.size - 1]]
  tokens = []
  for _ in range(64):  # mostly well-formed, with stray specials and early stops
    seq = []
    for slot in range(length):
      pool = pools[1] if slot % 5 == 4 else pools[0]
      if rng.random() < 0.06:
        pool = pools[2]
      seq.append(rng.choice(pool))
    tokens.append(seq)
  tokens = np.asarray(tokens, np.int32)
  scores = rng.random(tokens.shape).astype(np.float32)
  out = detector.first_valid(*detection.read_objects(tokens, scores, vocab, mode),
                             np.asarray(ids, np.int32))
  for row in range(len(tokens)):
    want = detections.parse(tokens[row], vocab, scores[row], mode)
    count = int(out['num_detections'][row])
    assert count == len(want.labels)
    np.testing.assert_allclose(out['boxes'][row, :count], want.boxes, atol=1e-6)
    np.testing.assert_array_equal(out['classes'][row, :count], np.asarray(ids)[want.labels])
    np.testing.assert_array_equal(out['scores'][row, :count], want.scores)
    assert (out['classes'][row, count:] == -1).all() and (out['scores'][row, count:] == 0).all()


def _copy(exported, tmp_path) -> str:
  target = str(tmp_path / 'copy')
  shutil.copytree(exported, target, ignore=shutil.ignore_patterns('saved_model'))
  return target


def test_a_damaged_or_foreign_export_is_refused_naming_the_file(exported, tmp_path):
  with pytest.raises(serving.ExportError, match=r'export\.json is missing'):
    serving.load(str(tmp_path / 'nothing'))
  folder = _copy(exported, tmp_path)
  with open(os.path.join(folder, 'detector.jax'), 'r+b') as f:
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(serving.ExportError, match=r'detector\.jax is damaged'):
    serving.load(folder)
  shutil.rmtree(folder)
  folder = _copy(exported, tmp_path)
  os.remove(os.path.join(folder, 'weights.npz'))
  with pytest.raises(serving.ExportError, match=r'weights\.npz is missing'):
    serving.load(folder)
  shutil.rmtree(folder)
  folder = _copy(exported, tmp_path)
  manifest_path = os.path.join(folder, 'export.json')
  with open(manifest_path) as f:
    manifest = json.load(f)
  with open(manifest_path, 'w') as f:
    json.dump(dict(manifest, format=serving.FORMAT + 1, pix2seq_jax_version='9.9'), f)
  with pytest.raises(serving.ExportError, match=r'export\.json: export format 2 .*export the '
                                                r'workdir again'):
    serving.load(folder)
  with open(manifest_path, 'w') as f:
    f.write('{"format": 1, "sha')
  with pytest.raises(serving.ExportError, match=r'export\.json is damaged'):
    serving.load(folder)


def test_bad_images_are_refused_naming_the_image(exported):
  detector_ = serving.load(exported)
  with pytest.raises(ValueError, match='Image 1: Expected a uint8 image, got float32'):
    detector_([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(ValueError, match=r'Image 0: Expected an image \[H, W\] or'):
    detector_([np.zeros((8, 8, 5), np.uint8)])


def test_main_exports_a_workdir(tiny_workdir, tmp_path):
  from absl import app
  with pytest.raises(app.UsageError, match='needs --output=DIR'):
    tiny.run_main('--mode=export', f'--workdir={tiny_workdir}')
  out = str(tmp_path / 'export')
  config = os.path.join(tiny.ROOT, 'configs', 'shapes.py')
  assert tiny.run_main('--mode=export', f'--workdir={tiny_workdir}', f'--output={out}',
                       f'--config={config}', '--config.decode.max_objects=3') == 0
  with open(os.path.join(out, 'export.json')) as f:
    manifest = json.load(f)
  assert manifest['decode']['max_objects'] == 3 and manifest['max_detections'] == 3
  found = serving.load(out).detect_canvases(np.full((2, 64, 64, 3), 0.5, np.float32))
  assert found['boxes'].shape == (2, 3, 4) and found['num_detections'].shape == (2,)


_FIRST_DETECTION = '''
import sys
import numpy as np
from pix2seq_jax.deploy import serving
serving.load(sys.argv[1], batch_size=1)([np.zeros((40, 60, 3), np.uint8)])
'''


def test_a_second_start_takes_its_programs_from_the_compilation_cache(exported, tmp_path,
                                                                      monkeypatch):
  from pix2seq_jax.runtime import compilation_cache
  monkeypatch.setenv(compilation_cache.ENV, 'off')
  assert compilation_cache.chosen_dir() is None
  monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / 'moved'))
  assert compilation_cache.chosen_dir() == str(tmp_path / 'moved')
  monkeypatch.delenv(compilation_cache.ENV)
  assert compilation_cache.chosen_dir() == compilation_cache.default_dir()
  cache = tmp_path / 'cache'
  env = dict(os.environ, **{compilation_cache.ENV: str(cache), 'JAX_LOG_COMPILES': '1',
                            'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'})
  logs = []
  for _ in range(2):
    run = subprocess.run([sys.executable, '-c', _FIRST_DETECTION, exported], cwd=tiny.ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    logs.append(run.stderr)
  assert os.listdir(cache)
  hit = 'Persistent compilation cache hit for \'jit_call'
  assert hit not in logs[0] and hit in logs[1]
