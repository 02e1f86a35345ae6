"""The Predictor of an instance task's workdir (segmentation, keypoints) on real COCO images
(coco_mini) with their ground-truth boxes: one result per box, masks of the image's size,
and, with the decoder replaced by an oracle that answers each prompt with the object's
annotated polygon (or keypoints), segm / keypoint AP near 1: the Predictor's geometry
(canvas, prompts, the keypoint crop, back to pixels) is exact."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from absl import app
from flax import nnx
from PIL import Image
from pycocotools import mask as coco_mask

from pix2seq_jax.config import checks, default, resolve, workdir_config
from pix2seq_jax.data import canvas, coco_json
from pix2seq_jax.evaluation import coco_metrics
from pix2seq_jax.inference import instance_inputs, instances, sharded_decode
from pix2seq_jax.inference import predictor as predictor_lib
from pix2seq_jax.models import build
from pix2seq_jax.tasks import keypoints as keypoints_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import checkpoints
from pix2seq_jax.workdir import files as workdir_lib
from tests import tiny
from tests.tiny import shared_path

SEGM = 'instance_segmentation'


def make_instance_workdir(workdir: str, task: str = SEGM) -> str:
  """A workdir of a freshly initialised vit_nano (64 px, 2 objects, 4 points) for `task`
  on coco_mini's categories: config.json, categories.json and a step-0 checkpoint."""
  coco = shared_path('coco_mini')
  config = default.get_config()
  config.task = task
  data = config.data
  data.source, data.coco_dir = 'coco_files', coco
  data.image_size, data.max_instances, data.max_points = 64, 2, 4
  data.noise_objects = data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'
  config.model.variant = 'vit_nano'
  config.train.batch_size = config.eval.batch_size = 2
  config.train.steps, config.train.warmup_steps = 1, 0
  config = resolve.resolve(config)
  categories = coco_json.CategoryMap.from_file(
      os.path.join(coco, 'annotations', 'instances_val2017.json'))
  vocab = vocab_lib.for_categories('official_multitask', categories.category_ids, 1000)
  model = build.build_model(config, vocab, nnx.Rngs(0))
  tiny.likely_coordinates(model, vocab)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  manager = checkpoints.make_manager(workdir)
  checkpoints.save(manager, 0, {'step': jax.numpy.asarray(0, jax.numpy.int32),
                                'params': params, 'batch_stats': batch_stats})
  manager.close()
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.CONFIG), config.to_dict())
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.CATEGORIES), categories.to_json())
  return workdir


@pytest.fixture(scope='module')
def segm_workdir(tmp_path_factory):
  return make_instance_workdir(str(tmp_path_factory.mktemp('segm_workdir')))


@pytest.fixture(scope='module')
def predictor(segm_workdir):
  return predictor_lib.Predictor(segm_workdir, batch_size=2)


def val_images(kind: str = 'instances', count: int = 4, min_objects: int = 1):
  """(annotation file, [(path, image, [non-crowd annotations])]) of the first `count` val
  images with at least `min_objects` usable objects (keypoints: labelled persons)."""
  path = os.path.join(shared_path('coco_mini'), 'annotations', f'{kind}_val2017.json')
  with open(path) as f:
    content = json.load(f)
  objects: dict[int, list] = {}
  for a in content['annotations']:
    usable = a.get('num_keypoints', 0) > 0 if kind == 'person_keypoints' else (
        isinstance(a['segmentation'], list))
    if not a['iscrowd'] and usable:
      objects.setdefault(a['image_id'], []).append(a)
  chosen = []
  for image in sorted(content['images'], key=lambda i: i['id']):
    if len(objects.get(image['id'], [])) >= min_objects and len(chosen) < count:
      file = os.path.join(shared_path('coco_mini'), 'val2017', image['file_name'])
      chosen.append((file, image, objects[image['id']]))
  return path, chosen


@pytest.fixture(scope='module')
def random_results(predictor):
  """(chosen images, their boxes, the Predictor's results with masks): 3 objects of one
  image (two prompt sets of 2: the image encoded twice), 1 of another, in 2 calls."""
  _, chosen = val_images(count=2, min_objects=3)
  boxes = [[chosen[0][2][0], dict(chosen[0][2][1], score=0.25), chosen[0][2][2]],
           [chosen[1][2][0]]]
  return chosen, boxes, predictor([c[0] for c in chosen], boxes=boxes, return_masks=True)


def test_one_result_per_box_with_masks_of_the_image_size(predictor, random_results):
  """A random model: each result has its box's class, bbox and score, and a mask."""
  chosen, boxes, found = random_results
  assert [len(f) for f in found] == [3, 1]
  for (_, image, _), results, given in zip(chosen, found, boxes):
    for result, box in zip(results, given):
      assert result['mask'].shape == (image['height'], image['width'])
      assert result['mask'].dtype == bool
      assert result['segmentation']['size'] == [image['height'], image['width']]
      assert result['category_id'] == box['category_id'] and result['bbox'] == box['bbox']
      assert result['score'] == box.get('score', 1.0)
      assert isinstance(result['category_name'], str)
  assert predictor.compilations == 1
  with pytest.raises(ValueError, match='trained for instance_segmentation: it needs the boxes'):
    predictor([chosen[0][0]])
  with pytest.raises(ValueError, match='object 0: category_id 999'):
    predictor([chosen[0][0]], boxes=[[{'bbox': [1, 2, 3, 4], 'category_id': 999}]])


class Oracle:
  """A decode function that answers each real prompt, in order, with `rows` (one array
  of the task's output per prompt) and padding prompts with `filler`."""

  def __init__(self, rows: list, filler):
    self.rows, self.filler, self.calls = list(rows), filler, 0

  def __call__(self, params, batch_stats, images, prompts, step=0):
    self.calls += 1
    prompts = np.asarray(prompts)
    out = [[self.rows.pop(0) if p[0] else self.filler for p in image] for image in prompts]
    return jax.tree.map(lambda *x: np.stack(x).reshape(len(prompts), -1, *x[0].shape[1:]),
                        *[o for image in out for o in image])


def _canvas_points(pairs_xy: np.ndarray, image_hw, size: int, offset=(0, 0)) -> np.ndarray:
  """[P, 2] (x, y) px -> [P, 2] (y, x) normalised to the canvas of an image (or crop) of
  (height, width): on its resized extent, as the pipeline normalises points."""
  extent, _ = canvas.resized_shape(*image_hw, size)
  yx = np.stack([(pairs_xy[:, 1] - offset[0]), (pairs_xy[:, 0] - offset[1])], 1)
  return yx / np.asarray(image_hw, np.float64) * np.asarray(extent, np.float64) / size


def polygon_rows(image: dict, objects: list[dict], size: int, points: int) -> list:
  """The annotated polygons of `objects` as decoded rows [1, 2 * points] of the canvas of
  `image` (its COCO record): (y, x) points, -2 -2 between polygons, -1 after."""
  rows = []
  for a in objects:
    flat = []
    for polygon in a['segmentation']:
      flat += [-2.0, -2.0] if flat else []
      flat += _canvas_points(np.reshape(polygon, (-1, 2)), (image['height'], image['width']),
                             size).reshape(-1).tolist()
    row = np.full(2 * points, -1.0, np.float32)
    row[:len(flat)] = flat[:2 * points]
    rows.append(row[None])  # [k = 1, 2P]
  return rows


def test_oracle_masks_score_as_the_annotations(predictor, monkeypatch):
  path, chosen = val_images(count=4)
  points = 512
  monkeypatch.setattr(predictor, 'task', dataclasses.replace(predictor.task, max_points=points,
                                                             num_samples=1))
  rows = []
  for _, image, objects in chosen:
    rows += polygon_rows(image, objects, predictor.size, points)
  oracle = Oracle(rows, np.full((1, 2 * points), -1.0, np.float32))
  monkeypatch.setattr(predictor, '_decode', oracle)
  found = predictor([c[0] for c in chosen], boxes=[c[2] for c in chosen])
  assert not oracle.rows  # every object asked for once
  results = [dict(r, image_id=image['id']) for (_, image, _), f in zip(chosen, found)
             for r in f]
  assert len(results) == sum(len(c[2]) for c in chosen)
  assert 'mask' not in results[0]  # only with return_masks
  metrics = coco_metrics.coco_metrics(coco_metrics.load_ground_truth(path), results,
                                      [c[1]['id'] for c in chosen], iou_type='segm')
  assert metrics['AP'] > 0.9, metrics


def test_the_export_decodes_as_the_predictor(segm_workdir, random_results, tmp_path):
  """--mode=export of the workdir: the jax.export program, loaded by serving.load with
  JAX alone, gives the Predictor's masks; a SavedModel is refused with the reason."""
  from pix2seq_jax.deploy import export, serving
  chosen, boxes, expected = random_results
  out = str(tmp_path / 'export')
  with pytest.raises(ValueError, match='trained for instance_segmentation: its export is a '
                                       'jax.export program only'):
    export.export_workdir(segm_workdir, out, saved_model=True)
  manifest = export.export_workdir(segm_workdir, out, platforms=('cpu',))
  assert manifest['task'] == SEGM and manifest['program']['objects_per_canvas'] == 2
  decoder = serving.load(out, batch_size=2)
  assert isinstance(decoder, serving.ExportedInstances)
  found = decoder([c[0] for c in chosen], boxes=boxes, return_masks=True)
  assert [len(f) for f in found] == [3, 1]
  for want, got in zip(expected, found):
    for a, b in zip(want, got):
      assert {k: a[k] for k in a if k != 'mask'} == {k: b[k] for k in b if k != 'mask'}
      np.testing.assert_array_equal(a['mask'], b['mask'])


def test_the_keypoint_crop_is_the_official_one():
  # A 100x200 (h, w) image, a person [x=50, y=20, w=40, h=30]: normalised ymin 0.2,
  # ymax 0.5 -> floor(0.2 * 99) = 19, ceil(0.5 * 99) = 50; xmin 0.25, xmax 0.45 ->
  # floor(49.75) = 49, ceil(89.55) = 90; pads int(32 * 0.5) = 16, int(42 * 0.5) = 21.
  assert instance_inputs.crop_region([50, 20, 40, 30], (100, 200)) == (3, 28, 64, 84)
  # clipped at the image's edges
  assert instance_inputs.crop_region([0, 0, 200, 100], (100, 200)) == (0, 0, 100, 200)
  assert instance_inputs.crop_region([190, 90, 10, 10], (100, 200)) == (84, 184, 16, 16)


def test_the_keypoint_crop_is_the_eval_pipelines():
  """On every coco_mini val person: the numpy crop equals the tf.data eval crop
  (`transforms.box_crop_region` of the box as the COCO reader normalises it)."""
  import tensorflow as tf

  from pix2seq_jax.data import transforms
  _, chosen = val_images('person_keypoints', count=100)
  for _, image, objects in chosen:
    shape = (image['height'], image['width'])
    for a in objects:
      x, y, w, h = a['bbox']
      box = np.asarray([y / shape[0], x / shape[1], (y + h) / shape[0], (x + w) / shape[1]],
                       np.float32)
      offset, size = transforms.box_crop_region(tf.constant(box), tf.constant(shape), 0.5)
      assert instance_inputs.crop_region(a['bbox'], shape) == (*offset.numpy(), *size.numpy())


def test_oracle_keypoints_score_as_the_annotations(predictor, monkeypatch):
  """The Predictor's keypoint path (each person on its own crop) with the task swapped
  for keypoints, answered with the annotated keypoints: OKS AP near 1."""
  path, chosen = val_images('person_keypoints', count=3)
  task = keypoints_lib.KeypointTask(predictor.vocab)
  monkeypatch.setattr(predictor, 'task', task)
  vocab, rows = predictor.vocab, []
  for _, image, objects in chosen:
    for a in objects:
      y, x, height, width = instance_inputs.crop_region(a['bbox'],
                                                        (image['height'], image['width']))
      triples = np.reshape(a['keypoints'], (-1, 3)).astype(np.float64)
      yx = _canvas_points(triples[:, :2], (height, width), predictor.size, (y, x))
      tokens = vocab.coord_to_bin(yx).astype(np.int32) + vocab.coord_offset
      tokens[triples[:, 2] == 0] = vocab.invisible
      rows.append(keypoints_lib.KeypointOutputs(tokens.reshape(1, -1),
                                                np.zeros((1, 34), np.float32),
                                                np.ones(1, np.float32)))
  filler = keypoints_lib.KeypointOutputs(np.zeros((1, 34), np.int32),
                                         np.zeros((1, 34), np.float32), np.zeros(1, np.float32))
  monkeypatch.setattr(predictor, '_decode', Oracle(rows, filler))
  found = predictor([c[0] for c in chosen], boxes=[c[2] for c in chosen])
  results = [dict(r, image_id=image['id']) for (_, image, _), f in zip(chosen, found)
             for r in f]
  assert len(results) == sum(len(c[2]) for c in chosen)
  assert all(len(r['keypoints']) == 51 and r['score'] == 1.0 for r in results)
  metrics = coco_metrics.coco_metrics(coco_metrics.load_ground_truth(path), results,
                                      [c[1]['id'] for c in chosen], iou_type='keypoints')
  assert metrics['AP'] > 0.9, metrics



def _box_polygon_decoder(vocab):
  """A stand-in for InstanceDecodeFn: every sample of an object is its prompt's box as a
  4-point polygon (outputs [B, n * 8, 8])."""

  def decode(self, params, batch_stats, images, prompts, step=0):
    prompts = np.asarray(prompts)
    boxes, _, _ = instances.prompt_objects(prompts.reshape(-1, 6), vocab)
    ymin, xmin, ymax, xmax = boxes.T
    rows = np.stack([ymin, xmin, ymin, xmax, ymax, xmax, ymax, xmin], 1)  # [B * n, 8]
    return np.repeat(rows, 8, axis=0).reshape(len(prompts), -1, 8)

  return decode


def test_main_predicts_masks_of_the_boxes_file_and_draws_them(predictor, segm_workdir,
                                                              tmp_path, monkeypatch, capsys):
  from pix2seq_jax.inference import drawing
  from tests import tiny
  annotations, chosen = val_images(count=1, min_objects=2)
  image_path, image, objects = chosen[0]
  folder = tmp_path / 'images'
  folder.mkdir()
  os.symlink(image_path, folder / os.path.basename(image_path))
  monkeypatch.setattr(sharded_decode.InstanceDecodeFn, '__call__',
                      _box_polygon_decoder(predictor.vocab))
  output, drawn = str(tmp_path / 'p.json'), str(tmp_path / 'drawn')
  predict = ('--mode=predict', f'--workdir={segm_workdir}', f'--images={folder}/*.jpg',
             f'--output={output}')
  assert tiny.run_main(*predict, f'--boxes={annotations}', f'--draw_dir={drawn}') == 0
  with open(output) as f:
    entries = json.load(f)
  assert [e['file_name'] for e in entries] == [os.path.basename(image_path)]
  found = entries[0]['detections']
  assert len(found) == len(objects)
  for result, truth in zip(found, objects):
    assert 'mask' not in result and result['category_id'] == truth['category_id']
    mask = coco_mask.decode(dict(result['segmentation'],
                                 counts=result['segmentation']['counts'].encode()))
    assert mask.shape == (image['height'], image['width'])
    x, y, w, h = truth['bbox']  # the box's polygon covers about the box
    assert mask.sum() == pytest.approx(w * h, rel=0.2, abs=30)
  picture = Image.open(os.path.join(drawn, os.path.basename(image_path)[:-4] + '.png'))
  assert picture.size == (image['width'], image['height'])
  colour = drawing.colour_of(objects[0]['category_id'])
  assert np.all(np.asarray(picture) == colour, axis=-1).sum() > 0  # outline or label
  # refused: no --boxes for an instance workdir, --boxes elsewhere, a bad boxes file
  assert tiny.run_main(*predict) == 1
  err = capsys.readouterr().err
  assert 'trained for instance_segmentation' in err and 'Add --boxes=FILE.json' in err
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps([{'file_name': os.path.basename(image_path),
                              'detections': [{'bbox': [1, 2], 'category_id': 1}]}]))
  assert tiny.run_main(*predict, f'--boxes={bad}') == 1
  assert 'image 0, object 0: bbox [1, 2]' in capsys.readouterr().err
  with pytest.raises(app.UsageError, match='--boxes is a --mode=predict flag'):
    tiny.run_main('--mode=export', f'--workdir={segm_workdir}', f'--output={tmp_path}/e',
                  f'--boxes={annotations}')


def test_main_refuses_boxes_for_a_detection_workdir(tiny_workdir, shapes_dir, tmp_path,
                                                    capsys):
  from tests import tiny
  boxes = tmp_path / 'boxes.json'
  boxes.write_text('[]')
  assert tiny.run_main('--mode=predict', f'--workdir={tiny_workdir}',
                       f'--images={shapes_dir}/val/*.jpg',
                       f'--output={tmp_path}/p.json', f'--boxes={boxes}') == 1
  assert 'finds its boxes itself: leave --boxes out' in capsys.readouterr().err


def test_boxes_files_of_each_kind_are_matched_to_the_images(tmp_path):
  paths = ['/x/000000000139.jpg', '/y/000000000285.jpg', '/z/other.png']
  box = {'bbox': [1.0, 2.0, 3.0, 4.0], 'category_id': 1, 'score': 0.5}
  predict = [{'file_name': '000000000285.jpg', 'path': '/a/000000000285.jpg',
              'detections': [box]}]
  annotations = {'images': [{'id': 7, 'file_name': 'other.png'},
                            {'id': 139, 'file_name': '000000000139.jpg'}],
                 'annotations': [dict(box, image_id=7, iscrowd=0),
                                 dict(box, image_id=7, iscrowd=1)]}
  results = [dict(box, image_id=139), dict(box, image_id=139), dict(box, image_id=5)]
  expected = {'predict': [[], [box], []], 'annotations': [[], [], [box]],
              'results': [[box, box], [], []]}
  for name, content in (('predict', predict), ('annotations', annotations),
                        ('results', results)):
    path = tmp_path / f'{name}.json'
    path.write_text(json.dumps(content))
    found = instance_inputs.read_boxes(str(path), paths)
    assert [[{k: b[k] for k in box} for b in image] for image in found] == expected[name]
  bad = tmp_path / 'bad.json'
  for content, message in (([{'bbox': [1, 2, 3, 4]}], 'record 0 is neither'),
                           ({'images': [], 'annotations': [{'image_id': 3}]},
                            r'annotations\[0\] names no image'),
                           ({'boxes': []}, 'expected a predict JSON')):
    bad.write_text(json.dumps(content))
    with pytest.raises(instance_inputs.BoxesError, match=f'{bad}: {message}'):
      instance_inputs.read_boxes(str(bad), paths)
  with pytest.raises(instance_inputs.BoxesError, match='no such file'):
    instance_inputs.read_boxes(str(tmp_path / 'missing.json'), paths)


def test_decode_settings_are_refused_not_ignored(segm_workdir):
  """An instance workdir samples as the official and reads no decode setting: one given
  with another value than the workdir's own is refused, naming it (the same ones pass)."""
  own = workdir_config.load(segm_workdir).decode.to_dict()
  workdir_config.load(segm_workdir, own)
  for key, value in (('top_p', 0.5), ('canvas_buckets', 4)):
    with pytest.raises(checks.ConfigError, match=f'decode.{key}={value}: .* reads no decode'):
      workdir_config.load(segm_workdir, {key: value})
