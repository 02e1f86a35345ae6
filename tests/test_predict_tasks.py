"""Every task of a multi-task workdir (detection, instance segmentation and captioning
learned by one model on coco_mini: the session's `multitask_run`, tests/conftest.py): the
Predictor of each task, `main.py --mode=predict --task`, and the export of the captioning
program, which captions as the Predictor does."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from absl import app

from pix2seq_jax.config import checks
from pix2seq_jax.deploy import export, serving
from pix2seq_jax.inference import instance_inputs
from pix2seq_jax.inference.predictor import Predictor
from pix2seq_jax.workdir import files as workdir_lib
from pix2seq_jax.workdir import tokenizer_file
from tests import multi_device_run, tiny

# One xdist group with the other users of the session's multi-task run (test_multitask).
pytestmark = pytest.mark.xdist_group('multitask_run')

TASKS = tuple(multi_device_run.MULTITASK_WEIGHTS)  # detection, segmentation, captioning
# Two coco_mini val images with objects (segmentation reads their true boxes).
IMAGES = ('000000000139.jpg', '000000000802.jpg')
# The batch of training's evaluation (multitask_config): its compiled decoders serve the
# Predictors (in this process, or from the persistent compilation cache).
BATCH = 2


@pytest.fixture(scope='module')
def workdir(multitask_run) -> str:
  """The session's multi-task workdir (conftest.multitask_run), which these tests only
  read."""
  return multitask_run[0]


@pytest.fixture(scope='module')
def image_files() -> list[str]:
  return [tiny.shared_path('coco_mini', 'val2017', name) for name in IMAGES]


def test_each_task_of_the_workdir_predicts(workdir, image_files):
  detector = Predictor(workdir, batch_size=BATCH)  # its config.task
  assert detector.tasks == TASKS and detector.config.task == 'object_detection'
  assert detector.task is None and detector.tokenizer is None
  found = detector(image_files)
  assert len(found) == 2
  assert all(set(d) == {'category_id', 'category_name', 'bbox', 'score'}
             for per_image in found for d in per_image)

  segmenter = Predictor(workdir, task='instance_segmentation', batch_size=BATCH)
  assert segmenter.config.task == 'instance_segmentation'
  assert segmenter.config.data.max_points == 4  # the task's own data settings
  annotations = tiny.shared_path('coco_mini', 'annotations', 'instances_val2017.json')
  # One object per image: 8 samples of each are decoded, nucleus-sampled over a flat
  # softmax of 35000 tokens: seconds per object on the CPU.
  boxes = [objects[:1] for objects in instance_inputs.read_boxes(annotations, image_files)]
  assert all(len(objects) == 1 for objects in boxes)
  masks = segmenter(image_files, boxes=boxes)
  for objects, results in zip(boxes, masks):
    assert [r['category_id'] for r in results] == [o['category_id'] for o in objects]
    assert all(isinstance(r['segmentation']['counts'], str) for r in results)

  captioner = Predictor(workdir, task='captioning', batch_size=BATCH)
  assert captioner.config.task == 'captioning' and captioner.config.data.max_text_len == 12
  assert captioner.tokenizer.sha256 == tokenizer_file.sha256_of(
      os.path.join(workdir, workdir_lib.TOKENIZER))
  written = captioner(image_files)
  assert len(written) == 2
  for per_image in written:
    (result,) = per_image
    assert set(result) == {'caption', 'score'}
    assert isinstance(result['caption'], str) and 0.0 <= result['score'] <= 1.0
  with pytest.raises(instance_inputs.BoxesError, match='reads whole images'):
    captioner(image_files, boxes=boxes)


def test_tasks_and_settings_the_workdir_lacks_are_refused(workdir, image_files, tmp_path):
  with pytest.raises(ValueError, match=r"task='keypoint_detection': .* was trained for "
                                       r"\['object_detection', 'instance_segmentation', "
                                       r"'captioning'\]"):
    Predictor(workdir, task='keypoint_detection')
  for task in ('instance_segmentation', 'captioning'):
    with pytest.raises(checks.ConfigError, match='decode settings are object detection'):
      Predictor(workdir, task=task, decode={'temperature': 1.0})
  out = str(tmp_path / 'out.json')
  predict = ('--mode=predict', f'--workdir={workdir}', f'--images={image_files[0]}',
             f'--output={out}')
  with pytest.raises(app.UsageError, match='--task=keypoint_detection: .* was trained for '
                                           'object_detection, instance_segmentation, '
                                           'captioning'):
    tiny.run_main(*predict, '--task=keypoint_detection')
  with pytest.raises(app.UsageError, match='drawings are for boxes, masks and keypoints'):
    tiny.run_main(*predict, '--task=captioning', f'--draw_dir={tmp_path}')
  with pytest.raises(app.UsageError, match='--task is a flag of --mode=predict and export'):
    tiny.run_main('--mode=eval', f'--workdir={workdir}', '--task=captioning',
                  f'--config={os.path.join(tiny.ROOT, "configs", "shapes.py")}')
  assert not os.path.exists(out)
  with pytest.raises(ValueError, match='captions are made on the host by SentencePiece'):
    export.export_workdir(workdir, str(tmp_path / 'export'), task='captioning',
                          saved_model=True)


def test_main_predicts_captions(workdir, image_files, tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  for path in image_files:
    os.symlink(path, folder / os.path.basename(path))
  out = str(tmp_path / 'captions.json')
  assert tiny.run_main('--mode=predict', f'--workdir={workdir}',
                       f'--images={folder}/*.jpg', f'--output={out}',
                       '--task=captioning') == 0
  with open(out) as f:
    entries = json.load(f)
  assert [e['file_name'] for e in entries] == list(IMAGES)
  expected = Predictor(workdir, task='captioning')(image_files)
  for entry, per_image in zip(entries, expected):
    (result,) = entry['detections']
    assert result['caption'] == per_image[0]['caption']
    assert result['score'] == pytest.approx(per_image[0]['score'], abs=1e-6)


def test_the_captioning_export_captions_as_the_predictor(workdir, image_files, tmp_path):
  out = str(tmp_path / 'export')
  assert tiny.run_main('--mode=export', f'--workdir={workdir}', f'--output={out}',
                       '--task=captioning') == 0
  with open(os.path.join(out, serving.MANIFEST)) as f:
    manifest = json.load(f)
  assert manifest['task'] == 'captioning' and manifest['workdir_tasks'] == list(TASKS)
  assert manifest['max_text_len'] == 12 and manifest['saved_model'] is None
  assert sorted(manifest['sha256']) == ['captions.jax', 'tokenizer.model', 'weights.npz']
  assert manifest['tokenizer']['sha256'] == tokenizer_file.sha256_of(
      os.path.join(workdir, workdir_lib.TOKENIZER)) == manifest['sha256']['tokenizer.model']
  assert manifest['platforms'] == ['cpu', 'cuda']
  captioner = serving.load(out, batch_size=BATCH)
  assert isinstance(captioner, serving.ExportedCaptioner)
  arrays = [np.asarray(a) for a in captioner.decode_canvases(np.zeros((3, 64, 64, 3)))]
  assert [a.shape for a in arrays] == [(3, 12), (3, 12)]  # any batch size
  expected = Predictor(workdir, task='captioning', batch_size=BATCH)(image_files)
  found = captioner(image_files)
  assert [r[0]['caption'] for r in found] == [r[0]['caption'] for r in expected]
  np.testing.assert_allclose([r[0]['score'] for r in found],
                             [r[0]['score'] for r in expected], rtol=0, atol=1e-6)


def test_the_detection_task_exports_as_a_detection_workdir(workdir, image_files, tmp_path):
  """`task` picks the program: the detection task's detector (its view of the config),
  detecting what that task's Predictor detects."""
  from tests.test_deploy import _assert_same
  out = str(tmp_path / 'export')
  manifest = export.export_workdir(workdir, out, task='object_detection', saved_model=False,
                                   platforms=('cpu',))
  assert manifest['task'] == 'object_detection' and manifest['workdir_tasks'] == list(TASKS)
  assert manifest['vocabulary']['layout'] == 'official_multitask'
  detector = serving.load(out, batch_size=BATCH)
  assert isinstance(detector, serving.ExportedDetector)
  _assert_same(Predictor(workdir, batch_size=BATCH)(image_files), detector(image_files))
