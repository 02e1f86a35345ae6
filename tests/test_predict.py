"""The Predictor: canvases for any image size, one compilation per canvas, batching;
main.py's predict mode and its drawings."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from pix2seq_jax.config import workdir_config
from pix2seq_jax.data import canvas
from pix2seq_jax.evaluation import coco_metrics, predict_split
from pix2seq_jax.inference import predictor as predictor_lib


def test_canvas_shapes_and_choice():
  shapes = canvas.canvas_shapes(96, 16, buckets=4)
  assert shapes == [(32, 96), (96, 32), (48, 96), (96, 48), (80, 96), (96, 80), (96, 96)]
  assert canvas.canvas_shapes(96, 16) == [(96, 96)]
  assert canvas.choose_canvas(30, 96, shapes) == (32, 96)
  assert canvas.choose_canvas(96, 33, shapes) == (96, 48)
  assert canvas.choose_canvas(81, 96, shapes) == (96, 96)
  with pytest.raises(ValueError, match='buckets'):
    canvas.canvas_shapes(96, 16, buckets=0)


def test_to_canvas_resizes_the_longest_side_and_pads_bottom_right():
  image = np.full((50, 200, 3), 255, np.uint8)
  square, scale = canvas.to_canvas(image, 96)
  assert square.shape == (96, 96, 3) and scale == pytest.approx(0.48)
  np.testing.assert_allclose(square[:24], 1.0, rtol=0, atol=1e-6)
  np.testing.assert_allclose(square[24:], canvas.PAD_VALUE)
  wide, _ = canvas.to_canvas(image, 96, (32, 96))
  np.testing.assert_array_equal(wide, square[:32])  # the same pixels, less padding
  with pytest.raises(ValueError, match='does not fit'):
    canvas.to_canvas(image, 96, (16, 96))


@pytest.mark.parametrize('height,width,size', [(480, 640, 640), (37, 91, 64), (300, 20, 64),
                                               (13, 7, 64), (1000, 999, 64), (5, 800, 96)])
def test_to_canvas_is_the_evaluation_pipelines_canvas(height, width, size):
  """The numpy resize against the pipeline's own TensorFlow transforms, shrinking and
  enlarging, in one process eagerly and inside a tf.data map."""
  import tensorflow as tf

  from pix2seq_jax.data import transforms
  image = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)

  def pipeline(pixels):
    floats = tf.image.convert_image_dtype(pixels, tf.float32)
    resized, scale = transforms.resize_longest_side(floats, size)
    padded = transforms.pad_to_canvas(resized, tf.zeros([0, 4]), size)[0]
    return padded, scale, tf.shape(resized)[:2]

  ours, scale = canvas.to_canvas(image, size)
  eager, eager_scale, eager_shape = pipeline(tf.constant(image))
  in_dataset = next(iter(tf.data.Dataset.from_tensors(image).map(pipeline)))[0]
  for theirs in (eager.numpy(), in_dataset.numpy()):
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-6)
  assert scale == float(eager_scale)
  assert canvas.resized_shape(height, width, size) == (tuple(eager_shape.numpy()), scale)


def test_as_rgb_repeats_grey_and_drops_alpha():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  for image in (grey, grey[..., None], np.stack([grey, grey + 1], -1)):
    np.testing.assert_array_equal(canvas.as_rgb(image), np.repeat(grey[..., None], 3, -1))
  rgba = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)
  np.testing.assert_array_equal(canvas.as_rgb(rgba), rgba[..., :3])
  with pytest.raises(ValueError, match='uint8'):
    canvas.as_rgb(grey.astype(np.float32))
  with pytest.raises(ValueError, match='1-4 channels'):
    canvas.as_rgb(np.zeros((3, 4, 5), np.uint8))


@pytest.mark.xla_default
def test_new_image_sizes_reuse_the_compiled_canvases(tiny_workdir):
  predictor = predictor_lib.Predictor(tiny_workdir, batch_size=2, decode={'canvas_buckets': 2})
  assert predictor.canvas_shapes == [(32, 64), (64, 32), (64, 64)]
  rng = np.random.default_rng(0)
  sizes = [(40, 120), (120, 40), (90, 90), (33, 100), (100, 34), (64, 63), (20, 200)]
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
  found = predictor(images)
  assert len(found) == len(images) and predictor.compilations == 3
  more = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(31, 77), (77, 31)]]
  predictor(more)
  assert predictor.compilations == 3
  # Compiled with the CPU inference options (xla_cpu_flags.py): no YNNPACK fusions.
  programs = [e.as_text() for e in predictor._decode._executables.values()]
  assert len(programs) >= 3 and not any('ynn_fusion' in text for text in programs)
  for per_image, (h, w) in zip(found, sizes):
    for det in per_image:
      x, y, bw, bh = det['bbox']
      assert 0 <= x <= x + bw <= w + 0.01 and 0 <= y <= y + bh <= h + 0.01
      assert 1 <= det['category_id'] <= 9 and 0 < det['score'] <= 1


def test_an_images_detections_do_not_depend_on_its_batch(tiny_workdir, shapes_dir):
  predictor = predictor_lib.Predictor(tiny_workdir, batch_size=4)
  paths = sorted(os.path.join(shapes_dir, 'val', f) for f in
                 os.listdir(os.path.join(shapes_dir, 'val')))[:3]
  together = predictor(paths)
  alone = [predictor([p])[0] for p in paths]
  assert together == alone
  assert any(together), 'the grammar makes an untrained model emit boxes'


def test_predict_coco_split_scores_with_pycocotools(tiny_workdir, shapes_dir, tmp_path):
  """Each annotated image gets the Predictor's detections of its own file under its own
  id, in COCO's result format, and the metrics are COCOeval's own: against ground truth
  made of the detections with an area, those score AP 1.0, and all of them score what
  pycocotools, run directly, says."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  # Sampled: an untrained model's greedy boxes have no area, and no box without one matches.
  predictor = predictor_lib.Predictor(tiny_workdir, batch_size=4,
                                      decode={'temperature': 1.0, 'top_p': 0.4})
  annotations = os.path.join(shapes_dir, 'annotations', 'instances_val.json')
  results, image_ids = predict_split.predict_coco_split(
      predictor, annotations, os.path.join(shapes_dir, 'val'), max_images=5)
  with open(annotations) as f:
    dataset = json.load(f)
  infos = dataset['images'][:5]
  assert image_ids == [info['id'] for info in infos]
  found = predictor([os.path.join(shapes_dir, 'val', info['file_name']) for info in infos])
  expected = [{'image_id': info['id'], 'category_id': d['category_id'], 'bbox': d['bbox'],
               'score': d['score']} for info, per_image in zip(infos, found) for d in per_image]
  assert sorted(results, key=json.dumps) == sorted(expected, key=json.dumps)

  with_area = [r for r in results if r['bbox'][2] > 0 and r['bbox'][3] > 0]
  assert len({r['image_id'] for r in with_area}) >= 3 and len(with_area) < len(results)
  truth = tmp_path / 'truth.json'
  truth.write_text(json.dumps(dict(dataset, images=infos, annotations=[
      {'id': i + 1, 'image_id': r['image_id'], 'category_id': r['category_id'],
       'bbox': r['bbox'], 'area': r['bbox'][2] * r['bbox'][3], 'iscrowd': 0}
      for i, r in enumerate(with_area)])))
  truth_coco = coco_metrics.load_ground_truth(str(truth))
  perfect = coco_metrics.coco_metrics(truth_coco, with_area, image_ids)
  assert perfect['AP'] == perfect['AP50'] == perfect['AR100'] == 1.0

  metrics = coco_metrics.coco_metrics(truth_coco, results, image_ids)
  direct = COCO(str(truth))
  evaluation = COCOeval(direct, direct.loadRes(json.loads(json.dumps(results))), 'bbox')
  evaluation.params.imgIds = image_ids
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  assert [metrics[k] for k in coco_metrics.METRIC_KEYS] == list(evaluation.stats)
  assert 0.0 < metrics['AP'] < 1.0  # the boxes without an area are false positives


def test_unknown_decode_override_is_refused(tiny_workdir):
  with pytest.raises(KeyError, match='top_q'):
    predictor_lib.Predictor(tiny_workdir, decode={'top_q': 0.4})


def test_a_workdir_written_before_newer_fields_still_loads(tiny_workdir, tmp_path):
  old = str(tmp_path / 'old')
  shutil.copytree(tiny_workdir, old)
  with open(os.path.join(old, 'config.json')) as f:
    saved = json.load(f)
  saved['decode'] = {'temperature': 0.0}  # as written before top_k, top_p, ... existed
  saved['train']['epochs'] = 2.0  # resolved to steps, and kept, by earlier versions
  with open(os.path.join(old, 'config.json'), 'w') as f:
    json.dump(saved, f)
  config = workdir_config.load(old, {'temperature': 1.0, 'top_p': 0.5})
  assert config.decode.top_p == 0.5 and config.decode.max_objects == 0
  assert config.data.image_size == saved['data']['image_size']


def test_main_draws_only_detections_above_the_threshold_and_keeps_all_in_json(
    tiny_workdir, shapes_dir, tmp_path, monkeypatch):
  """Through main.py: the JSON keeps every detection, the drawings only those scored at
  least --draw_threshold (the tiny model's scores, all about 0.12, are spread out here so
  that some fall on each side)."""
  from pix2seq_jax.inference import drawing, images
  from tests import tiny
  detect = predictor_lib.Predictor.__call__

  def spread_scores(self, images_):
    found = detect(self, images_)
    return [[dict(d, score=(i + 1) / (len(per_image) + 1)) for i, d in enumerate(per_image)]
            for per_image in found]

  monkeypatch.setattr(predictor_lib.Predictor, '__call__', spread_scores)
  output, drawn = str(tmp_path / 'p.json'), str(tmp_path / 'drawn')
  assert tiny.run_main('--mode=predict', f'--workdir={tiny_workdir}',
                       f'--images={shapes_dir}/val/*.jpg', f'--output={output}',
                       f'--draw_dir={drawn}', '--draw_threshold=0.5') == 0
  with open(output) as f:
    entries = json.load(f)
  assert len(entries) == 6 == len(os.listdir(drawn))
  scores = [d['score'] for e in entries for d in e['detections']]
  assert min(scores) < 0.5 <= max(scores)  # all of them, below the threshold too
  for entry in entries:
    image = images.load_image(entry['path'])
    above = [d for d in entry['detections'] if d['score'] >= 0.5]
    expected = np.asarray(drawing.draw(image, above, threshold=0.0))
    saved = np.asarray(Image.open(os.path.join(drawn, entry['file_name'][:-4] + '.png')))
    np.testing.assert_array_equal(saved, expected)
    if len(above) < len(entry['detections']):
      assert not np.array_equal(saved, drawing.draw(image, entry['detections'], threshold=0.0))


def test_main_refuses_a_bad_or_misplaced_draw_threshold(tiny_workdir, tmp_path):
  from absl import app

  from tests import tiny
  predict = ('--mode=predict', f'--workdir={tiny_workdir}', '--images=x/*.jpg',
             f'--output={tmp_path}/p.json')
  with pytest.raises(app.UsageError, match=r'--draw_threshold=1.5 must be a score in \[0, 1\]'):
    tiny.run_main(*predict, f'--draw_dir={tmp_path}/d', '--draw_threshold=1.5')
  with pytest.raises(app.UsageError, match='give --draw_dir=DIR too'):
    tiny.run_main(*predict, '--draw_threshold=0.5')
  with pytest.raises(app.UsageError, match='--draw_threshold is a --mode=predict flag'):
    tiny.run_main('--mode=eval', f'--workdir={tiny_workdir}',
                  f'--config={tiny.ROOT}/configs/shapes.py', '--draw_threshold=0.5')
  with pytest.raises(ValueError, match=r'draw_threshold=-1: use a score in \[0, 1\]'):
    predictor_lib.predict_files(tiny_workdir, 'x/*.jpg', f'{tmp_path}/p.json',
                                draw_threshold=-1)
