"""Tiny end-to-end runs: train -> resume -> eval -> predict, on shapes and on real COCO
files; main.py's summary mode."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from pix2seq_jax.evaluation import coco_metrics, task_evaluators
from pix2seq_jax.inference import predictor
from pix2seq_jax.train import loop
from tests import test_drawing
from tests.tiny import ROOT, run_main, shared_path, tiny_config

VAL_LOSS_KEYS = {'val_loss', 'val_perplexity', 'val_perplexity_coord', 'val_perplexity_class'}


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_train_resume_eval_predict_on_shapes(tiny_workdir, shapes_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_workdir, workdir)  # 2 steps of tiny_config, evaluated at the end
  config = tiny_config(shapes_dir)
  config.train.steps = 4  # the same run, longer: resumes from step 2
  config.train.eval_every = 3
  final = loop.train_and_evaluate(config, workdir)

  assert set(final) == set(coco_metrics.METRIC_KEYS) | VAL_LOSS_KEYS
  assert all(np.isfinite(final[k]) and final[k] > 0 for k in VAL_LOSS_KEYS)
  logged = _jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_steps = [m['step'] for m in logged if 'loss' in m]
  assert train_steps == [2, 4]  # step 2 once: the second run did not restart
  assert all({'step', 'loss', 'learning_rate', 'grad_norm'} <= set(m)
             for m in logged if 'loss' in m)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert sorted(os.listdir(os.path.join(workdir, 'eval'))) == ['step_2', 'step_3', 'step_4']
  assert any('eval/val_perplexity_coord' in m for m in logged)
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  drawn = test_drawing.event_images(workdir, 'eval/detections')  # each evaluation's
  assert {step: len(images) for step, images in drawn.items()} == {2: 4, 3: 4, 4: 4}
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['steps'] == 4
  with open(os.path.join(workdir, 'eval', 'step_4', 'metrics.json')) as f:
    assert json.load(f) == final
  with open(os.path.join(workdir, 'eval', 'step_4', 'detections.json')) as f:
    dets = json.load(f)
  for det in dets:
    assert set(det) == {'image_id', 'category_id', 'bbox', 'score'}
    assert 1 <= det['category_id'] <= 9 and len(det['bbox']) == 4 and 0 <= det['score'] <= 1

  # --mode=eval: the same checkpoint, read without its optimizer state, the same metrics.
  assert task_evaluators.evaluate_checkpoint(config, workdir) == final

  images = os.path.join(shapes_dir, 'val', '*.jpg')
  output, draw_dir = str(tmp_path / 'pred.json'), str(tmp_path / 'drawn')
  entries = predictor.predict_files(workdir, images, output, draw_dir)
  assert len(entries) == 6 and len(os.listdir(draw_dir)) == 6
  with open(output) as f:
    assert json.load(f) == entries
  first = entries[0]
  assert first['file_name'] == '000001.jpg' and {'height', 'width'} <= set(first)
  for det in first['detections']:
    assert {'category_id', 'category_name', 'bbox', 'score'} == set(det)


@pytest.mark.slow
def test_coco_tiny_detections_use_the_files_category_ids(tmp_path):
  root = shared_path('coco_tiny')
  config = tiny_config('unused')
  config.model.variant = 'vit_nano'  # the smallest model: the test is about the file's ids
  config.data.source = 'coco_files'
  config.data.coco_dir = root
  config.data.max_instances = 20
  config.train.steps = 2
  config.eval.max_images = 8
  workdir = str(tmp_path / 'coco')
  metrics = loop.train_and_evaluate(config, workdir)
  assert set(metrics) == set(coco_metrics.METRIC_KEYS) | VAL_LOSS_KEYS
  with open(os.path.join(workdir, 'eval', 'step_2', 'detections.json')) as f:
    dets = json.load(f)
  annotations = os.path.join(root, 'annotations', 'instances_val2017.json')
  coco_gt = coco_metrics.load_ground_truth(annotations)
  evaluated = {img['id'] for img in coco_gt.dataset['images'][:8]}  # the file's first 8
  assert dets, 'an untrained model still emits boxes under the grammar'
  assert {d['category_id'] for d in dets} <= set(coco_gt.getCatIds())
  assert {d['image_id'] for d in dets} <= evaluated
  coco_dt = coco_gt.loadRes(dets)  # loads into pycocotools
  assert len(coco_dt.getAnnIds()) == len(dets)
  with open(os.path.join(workdir, 'categories.json')) as f:
    categories = json.load(f)
  assert [c['id'] for c in categories] == sorted(coco_gt.getCatIds())
  assert np.isfinite(list(metrics.values())).all()

  output, draw_dir = str(tmp_path / 'p.json'), str(tmp_path / 'drawn')
  pattern = os.path.join(root, 'val2017', '*[05].jpg')  # 8 of the 80 files
  entries = predictor.predict_files(workdir, pattern, output, draw_dir)
  assert len(entries) == len(glob.glob(pattern)) == len(os.listdir(draw_dir)) > 0
  for entry in entries:
    for det in entry['detections']:
      assert det['category_id'] in coco_gt.cats
      assert det['category_name'] == coco_gt.cats[det['category_id']]['name']


def test_summary_mode_prints_the_parameter_table(capsys):
  code = run_main(f'--config={ROOT}/configs/coco.py', '--mode=summary',
                  '--config.model.variant=r50_c4')
  out = capsys.readouterr().out
  assert code == 0, out
  lines = out.strip().splitlines()
  assert lines[-1].startswith('total_params=')
  total = int(lines[-1].split('=')[1])
  # 80 classes and 1000 bins (1084 tokens; the official vocabulary has 3000).
  assert abs(total - 84.7e6) / 84.7e6 < 0.03
  rows = {line.split()[0]: int(line.split()[1].replace(',', '')) for line in lines[2:-1]}
  assert {'backbone.stem', 'backbone.blocks', 'encoder', 'decoder.layers',
          'decoder.embed'} <= set(rows)
  assert sum(rows.values()) == total
