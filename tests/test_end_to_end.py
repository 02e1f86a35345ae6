"""Tiny end-to-end runs: train -> resume -> eval -> predict, on shapes and on real COCO files."""

import glob
import json
import os
import subprocess
import sys

import numpy as np

from pix2seq_jax import evaluate, predict, train
from tests.conftest import ROOT, shared_path, tiny_config

VAL_LOSS_KEYS = {'val_loss', 'val_perplexity', 'val_perplexity_coord', 'val_perplexity_class'}


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_train_resume_eval_predict_on_shapes(shapes_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(shapes_dir)
  config.train.steps = 2
  config.train.eval_every = 0
  train.train_and_evaluate(config, workdir)
  config.train.steps = 4  # the same run, longer: resumes from step 2
  config.train.eval_every = 3
  final = train.train_and_evaluate(config, workdir)

  assert set(final) == set(evaluate.METRIC_KEYS) | VAL_LOSS_KEYS
  assert all(np.isfinite(final[k]) and final[k] > 0 for k in VAL_LOSS_KEYS)
  logged = _jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_steps = [m['step'] for m in logged if 'loss' in m]
  assert train_steps == [2, 4]  # step 2 once: the second run did not restart
  assert all({'step', 'loss', 'learning_rate', 'grad_norm'} <= set(m) for m in logged if 'loss' in m)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert sorted(os.listdir(os.path.join(workdir, 'eval'))) == ['step_2', 'step_3', 'step_4']
  assert any('eval/val_perplexity_coord' in m for m in logged)
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['steps'] == 4
  with open(os.path.join(workdir, 'eval', 'step_4', 'metrics.json')) as f:
    assert json.load(f) == final
  with open(os.path.join(workdir, 'eval', 'step_4', 'detections.json')) as f:
    dets = json.load(f)
  for det in dets:
    assert set(det) == {'image_id', 'category_id', 'bbox', 'score'}
    assert 1 <= det['category_id'] <= 9 and len(det['bbox']) == 4 and 0 <= det['score'] <= 1

  assert train.evaluate_latest(config, workdir) == final  # --mode=eval: same checkpoint

  images = os.path.join(shapes_dir, 'val', '*.jpg')
  output, draw_dir = str(tmp_path / 'pred.json'), str(tmp_path / 'drawn')
  entries = predict.predict_files(workdir, images, output, draw_dir)
  assert len(entries) == 6 and len(os.listdir(draw_dir)) == 6
  with open(output) as f:
    assert json.load(f) == entries
  first = entries[0]
  assert first['file_name'] == '000001.jpg' and {'height', 'width'} <= set(first)
  for det in first['detections']:
    assert {'category_id', 'category_name', 'bbox', 'score'} == set(det)


def test_main_cli_train_then_predict(shapes_dir, tmp_path):
  workdir = str(tmp_path / 'cli')
  common = [f'--workdir={workdir}']
  train_cmd = [sys.executable, 'main.py', '--config=configs/shapes.py', *common,
               f'--config.data.shapes_dir={shapes_dir}', '--config.data.shapes_num_train=24',
               '--config.data.shapes_num_val=6', '--config.data.image_size=64',
               '--config.data.num_bins=64', '--config.train.steps=2',
               '--config.train.batch_size=4', '--config.train.log_every=1',
               '--config.eval.batch_size=6']
  run = subprocess.run(train_cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, 'eval', 'step_2', 'metrics.json'))
  predict_cmd = [sys.executable, 'main.py', '--mode=predict', *common,
                 f'--images={shapes_dir}/val/*.jpg', f'--output={tmp_path}/p.json',
                 f'--draw_dir={tmp_path}/d']
  run = subprocess.run(predict_cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert len(json.loads((tmp_path / 'p.json').read_text())) == 6
  assert len(os.listdir(tmp_path / 'd')) == 6


def test_coco_tiny_detections_use_the_files_category_ids(tmp_path):
  root = shared_path('coco_tiny')
  config = tiny_config('unused')
  config.data.source = 'coco_files'
  config.data.coco_dir = root
  config.data.max_instances = 20
  config.train.steps = 2
  config.eval.max_images = 8
  workdir = str(tmp_path / 'coco')
  metrics = train.train_and_evaluate(config, workdir)
  assert set(metrics) == set(evaluate.METRIC_KEYS) | VAL_LOSS_KEYS
  with open(os.path.join(workdir, 'eval', 'step_2', 'detections.json')) as f:
    dets = json.load(f)
  annotations = os.path.join(root, 'annotations', 'instances_val2017.json')
  coco_gt = evaluate.load_ground_truth(annotations)
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
  entries = predict.predict_files(workdir, os.path.join(root, 'val2017', '*.jpg'), output,
                                  draw_dir)
  val_images = len(coco_gt.dataset['images'])
  assert len(entries) == val_images and len(os.listdir(draw_dir)) == val_images
  for entry in entries:
    for det in entry['detections']:
      assert det['category_id'] in coco_gt.cats
      assert det['category_name'] == coco_gt.cats[det['category_id']]['name']


def test_summary_mode_prints_the_parameter_table():
  out = subprocess.run([sys.executable, 'main.py', '--config=configs/coco.py', '--mode=summary',
                        '--config.model.variant=r50_c4'], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert lines[-1].startswith('total_params=')
  total = int(lines[-1].split('=')[1])
  # 80 classes and 1000 bins (1084 tokens; the official vocabulary has 3000).
  assert abs(total - 84.7e6) / 84.7e6 < 0.03
  rows = {line.split()[0]: int(line.split()[1].replace(',', '')) for line in lines[2:-1]}
  assert {'backbone.stem', 'backbone.blocks', 'encoder', 'decoder.layers', 'decoder.embed'} <= set(rows)
  assert sum(rows.values()) == total
