"""The scorer's three COCO result types: masks reproduce the COCO API's published `segm`
numbers, boxes stay the default, keypoints agree with pycocotools run directly, and
results lacking what their type needs are refused by file and record."""

import contextlib
import copy
import io
import json
import re
import subprocess
import sys

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pix2seq_jax.evaluation import coco_metrics
from tests.tiny import ROOT, shared_path

# The full-precision segm AP of the fixture under pycocotools 2.0.11 (shared/data/README.md).
SEGM_AP = 0.3195452758576433


def _ground_truth_path():
  return shared_path('cocoapi_eval', 'instances_val2014_100.json')


def _published(iou_type):
  """The numbers val2014_fake_eval_res.txt prints for `iou_type`, as their 3-digit text."""
  with open(shared_path('cocoapi_eval', 'val2014_fake_eval_res.txt')) as f:
    text = f.read()
  block = re.search(rf'type={iou_type}\n(.*?)(?:\n-{{10,}}|\Z)', text, re.S).group(1)
  numbers = re.findall(r'\] = (-?\d\.\d{3})$', block, re.M)
  assert len(numbers) == len(coco_metrics.metric_keys(iou_type))
  return dict(zip(coco_metrics.metric_keys(iou_type), numbers))


def _three_digits(metrics):
  return {k: f'{v:.3f}' for k, v in metrics.items()}


def _cli(tmp_path, detections, *flags):
  output = tmp_path / 'metrics.json'
  run = subprocess.run(
      [sys.executable, '-m', 'pix2seq_jax.evaluation.coco_metrics',
       '--annotations', _ground_truth_path(), '--detections', detections, *flags,
       '--output', str(output)], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  return json.loads(output.read_text()), run.stdout


def test_segm_cli_reproduces_the_published_numbers(tmp_path):
  metrics, stdout = _cli(
      tmp_path, shared_path('cocoapi_eval', 'instances_val2014_fakesegm100_results.json'),
      '--iou_type=segm')
  assert tuple(metrics) == coco_metrics.METRIC_KEYS
  assert _three_digits(metrics) == _published('segm')
  assert metrics['AP'] == pytest.approx(SEGM_AP, abs=1e-12)
  assert len(stdout.strip().splitlines()) == 12 and 'AP50 0.562288' in stdout


def test_bbox_stays_the_cli_default(tmp_path):
  metrics, _ = _cli(
      tmp_path, shared_path('cocoapi_eval', 'instances_val2014_fakebbox100_results.json'))
  assert tuple(metrics) == coco_metrics.METRIC_KEYS
  assert _three_digits(metrics) == _published('bbox')


def test_segm_function_reproduces_them_from_rle_str_or_bytes():
  coco_gt = coco_metrics.load_ground_truth(_ground_truth_path())
  with open(shared_path('cocoapi_eval', 'instances_val2014_fakesegm100_results.json')) as f:
    results = json.load(f)
  as_bytes = [dict(r, segmentation=dict(r['segmentation'],
                                        counts=r['segmentation']['counts'].encode()))
              for r in results]
  before = copy.deepcopy(as_bytes)
  metrics = coco_metrics.coco_metrics(coco_gt, results, iou_type='segm')
  assert _three_digits(metrics) == _published('segm')
  assert metrics['AP'] == pytest.approx(SEGM_AP, abs=1e-12)
  assert coco_metrics.coco_metrics(coco_gt, as_bytes, iou_type='segm') == metrics
  assert as_bytes == before  # the caller's records are left as they were
  # A box on each result (mask results often carry one) leaves the masks' areas alone.
  with_boxes = [dict(r, bbox=[0, 0, 1, 1]) for r in results]
  assert coco_metrics.coco_metrics(coco_gt, with_boxes, iou_type='segm') == metrics
  # pycocotools by hand on the same files: the same twelve numbers.
  with contextlib.redirect_stdout(io.StringIO()):
    direct = COCO(_ground_truth_path())
    evaluation = COCOeval(direct, direct.loadRes(copy.deepcopy(results)), 'segm')
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  assert list(metrics.values()) == [float(v) for v in evaluation.stats]


def test_segm_polygon_results_and_ground_truth_without_area(tmp_path):
  with open(_ground_truth_path()) as f:
    dataset = json.load(f)
  image_ids = [image['id'] for image in dataset['images'][:8]]
  perfect = [{'image_id': a['image_id'], 'category_id': a['category_id'],
              'segmentation': a['segmentation'], 'score': 1.0}
             for a in dataset['annotations']
             if a['image_id'] in image_ids and not a['iscrowd']]
  assert perfect and all(isinstance(r['segmentation'], list) for r in perfect)
  coco_gt = coco_metrics.load_ground_truth(_ground_truth_path())
  metrics = coco_metrics.coco_metrics(coco_gt, perfect, image_ids, iou_type='segm')
  assert metrics['AP'] == metrics['AP50'] == metrics['AR100'] == 1.0
  # Ground truth without `area`: boxes keep w * h, masks use the mask's area.
  for ann in dataset['annotations']:
    del ann['area']
  path = tmp_path / 'no_area.json'
  path.write_text(json.dumps(dataset))
  no_area = coco_metrics.load_ground_truth(str(path))
  ann = next(a for a in no_area.dataset['annotations'] if not a['iscrowd'])
  boxes = coco_metrics.run_cocoeval(no_area, [], image_ids)
  masks = coco_metrics.run_cocoeval(no_area, [], image_ids, iou_type='segm')
  assert boxes.cocoGt.anns[ann['id']]['area'] == ann['bbox'][2] * ann['bbox'][3]
  from pycocotools import mask as mask_utils
  assert masks.cocoGt.anns[ann['id']]['area'] == float(
      mask_utils.area(no_area.annToRLE(ann)))
  assert no_area.anns[ann['id']]['area'] == ann['bbox'][2] * ann['bbox'][3]  # left as it was


def _keypoints_ground_truth():
  return shared_path('coco_mini', 'annotations', 'person_keypoints_val2017.json')


def _direct_keypoints(results):
  with contextlib.redirect_stdout(io.StringIO()):
    direct = COCO(_keypoints_ground_truth())
    evaluation = COCOeval(direct, direct.loadRes(copy.deepcopy(results)), 'keypoints')
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  return [float(v) for v in evaluation.stats]


def test_keypoints_perfect_then_half_wrong_agree_with_pycocotools(tmp_path):
  coco_gt = coco_metrics.load_ground_truth(_keypoints_ground_truth())
  people = [a for a in coco_gt.dataset['annotations'] if a['num_keypoints'] > 0]
  assert len(people) == 68
  perfect = [{'image_id': a['image_id'], 'category_id': a['category_id'],
              'keypoints': list(a['keypoints']), 'score': 1.0} for a in people]
  metrics = coco_metrics.coco_metrics(coco_gt, perfect, iou_type='keypoints')
  assert tuple(metrics) == coco_metrics.KEYPOINT_METRIC_KEYS
  assert set(metrics.values()) == {1.0}  # medium and large people both present
  assert list(metrics.values()) == _direct_keypoints(perfect)

  half_wrong = copy.deepcopy(perfect)
  for record in half_wrong[::2]:
    points = record['keypoints']
    for i in range(0, len(points), 3):
      points[i] += 500
      points[i + 1] += 500
  path = tmp_path / 'keypoints.json'
  path.write_text(json.dumps(half_wrong))
  from_file = coco_metrics.evaluate_files(_keypoints_ground_truth(), str(path),
                                          iou_type='keypoints')
  assert 0 < from_file['AP'] < 1 and 0 < from_file['AR'] < 1
  assert list(from_file.values()) == _direct_keypoints(half_wrong)


def test_results_lacking_their_field_are_refused(tmp_path):
  with open(shared_path('cocoapi_eval', 'instances_val2014_fakebbox100_results.json')) as f:
    boxes = json.load(f)[:3]
  path = tmp_path / 'boxes_only.json'
  path.write_text(json.dumps(boxes))
  with pytest.raises(coco_metrics.BadResultsError,
                     match=r"boxes_only.json: record 0 has no 'segmentation'.*--iou_type=bbox"):
    coco_metrics.evaluate_files(_ground_truth_path(), str(path), iou_type='segm')
  # The CLI says the same in one line, without a traceback.
  run = subprocess.run(
      [sys.executable, '-m', 'pix2seq_jax.evaluation.coco_metrics',
       '--annotations', _ground_truth_path(), '--detections', str(path), '--iou_type=segm'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  assert "boxes_only.json: record 0 has no 'segmentation'" in run.stderr

  coco_gt = coco_metrics.load_ground_truth(_keypoints_ground_truth())
  person = next(a for a in coco_gt.dataset['annotations'] if a['num_keypoints'] > 0)
  good = {'image_id': person['image_id'], 'category_id': 1, 'keypoints': person['keypoints'],
          'score': 0.9}
  bad = {'image_id': person['image_id'], 'category_id': 1, 'bbox': person['bbox'],
         'score': 0.8}
  path = tmp_path / 'people.json'
  path.write_text(json.dumps([good, bad]))
  with pytest.raises(coco_metrics.BadResultsError,
                     match=r"people.json: record 1 has no 'keypoints'.*51 numbers"):
    coco_metrics.evaluate_files(_keypoints_ground_truth(), str(path), iou_type='keypoints')
  with pytest.raises(coco_metrics.BadResultsError, match=r'record 0.*not 51 numbers'):
    coco_metrics.coco_metrics(coco_gt, [dict(good, keypoints=good['keypoints'][:-3])],
                              iou_type='keypoints')


def test_bad_masks_and_unknown_types_are_refused(capsys):
  coco_gt = coco_metrics.load_ground_truth(_ground_truth_path())
  image = coco_gt.dataset['images'][0]
  wrong_size = {'image_id': image['id'], 'category_id': 1, 'score': 0.5,
                'segmentation': {'size': [image['height'] + 1, image['width']], 'counts': '0'}}
  with pytest.raises(coco_metrics.BadResultsError, match=r'record 0.*RLE size'):
    coco_metrics.coco_metrics(coco_gt, [wrong_size], iou_type='segm')
  with pytest.raises(ValueError, match='bbox, segm, keypoints'):
    coco_metrics.coco_metrics(coco_gt, [], iou_type='mask')
  with pytest.raises(SystemExit) as exit_info:
    coco_metrics.main(['--annotations', _ground_truth_path(), '--detections', 'd.json',
                       '--iou_type=mask'])
  assert exit_info.value.code == 2
  assert "--iou_type: invalid choice: 'mask'" in capsys.readouterr().err
  # Keypoints need a ground truth with keypoints: an instances file is refused by name.
  with pytest.raises(coco_metrics.BadResultsError, match=r'record 0 has no .keypoints'):
    coco_metrics.coco_metrics(coco_gt, [wrong_size], iou_type='keypoints')
  with pytest.raises(coco_metrics.BadResultsError, match='no category has "keypoints"'):
    coco_metrics.coco_metrics(coco_gt, [], iou_type='keypoints')
