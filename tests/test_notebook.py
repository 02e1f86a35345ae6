"""The checkpoint-evaluation notebook runs top to bottom on tiny checkpoints: a detection
workdir, a converted official checkpoint and an instance-segmentation workdir."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from pix2seq_jax.evaluation import coco_metrics
from pix2seq_jax.workdir import files as workdir_lib
from tests.tiny import ROOT, shared_path

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'evaluate_checkpoint.ipynb')


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None


def _run_notebook(monkeypatch, **env: str) -> tuple[str, list]:
  """Executes the notebook with these environment variables; (printed text, outputs)."""
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()
  outputs = [out for cell in notebook.cells if cell.cell_type == 'code' for out in cell.outputs]
  assert not [out for out in outputs if out.output_type == 'error']
  return '\n'.join(out.get('text', '') for out in outputs), outputs


@pytest.mark.slow
def test_notebook_evaluates_a_checkpoint(tiny_workdir, monkeypatch):
  text, outputs = _run_notebook(monkeypatch, PIX2SEQ_WORKDIR=tiny_workdir,
                                PIX2SEQ_MAX_IMAGES='6')
  assert 'task object_detection: COCO bbox metrics' in text
  assert 'checkpoint step 2' in text and '6 images' in text
  assert '\n       2 ' in text and 'val_loss' in text  # the table of training's evaluation
  for key in ('AP50', 'AR100'):
    assert key in text
  figures = [out for out in outputs if 'image/png' in out.get('data', {})]
  assert len(figures) == 3  # per-category AP, precision-recall, the image grid


@pytest.mark.slow
def test_notebook_evaluates_a_converted_official_checkpoint(tmp_path, monkeypatch):
  from pix2seq_jax.official import convert as convert_official
  coco_tiny = shared_path('coco_tiny')
  workdir = str(tmp_path / 'official')
  convert_official.convert(os.path.join(ROOT, 'tests', 'fixtures', 'official_vit_nano'),
                           workdir)
  text, _ = _run_notebook(
      monkeypatch, PIX2SEQ_WORKDIR=workdir, PIX2SEQ_MAX_IMAGES='4',
      PIX2SEQ_VAL_IMAGES=os.path.join(coco_tiny, 'val2017'),
      PIX2SEQ_VAL_ANNOTATIONS=os.path.join(coco_tiny, 'annotations', 'instances_val2017.json'))
  assert 'checkpoint step 1234; variant vit_nano; 32 px; 80 classes' in text
  assert '4 images' in text and 'AR100' in text


@pytest.mark.slow
def test_notebook_scores_an_instance_segmentation_workdir(tmp_path, monkeypatch):
  """An instance workdir: the table of its training evaluations' segm metrics, then the
  segm metrics of its val objects read from their ground-truth boxes (2 images, the first
  2 objects of each: data.max_instances), and the grid of their masks."""
  from tests.test_predict_instances import make_instance_workdir
  workdir = make_instance_workdir(str(tmp_path / 'segm'))
  keys = coco_metrics.metric_keys('segm')
  for step, ap in ((10, 0.25), (5, 0.125)):
    workdir_lib.write_json(os.path.join(workdir_lib.eval_dir(workdir, step), 'metrics.json'),
                           dict(dict.fromkeys(keys, ap), val_loss=3.5))
  text, outputs = _run_notebook(monkeypatch, PIX2SEQ_WORKDIR=workdir, PIX2SEQ_MAX_IMAGES='2')
  assert 'task instance_segmentation: COCO segm metrics' in text
  table = text[text.index('    step'):]
  assert table.index('\n       5   0.1250') < table.index('\n      10   0.2500')
  assert '   3.5000\n' in table
  assert 'checkpoint step 0' in text and '2 images, 4 objects read (segm)' in text
  for key in keys:
    assert f'\n{key:>6}  ' in text
  figures = [out for out in outputs if 'image/png' in out.get('data', {})]
  assert len(figures) == 3  # per-category AP, precision-recall, the image grid


@pytest.mark.slow
@pytest.mark.xdist_group('multitask_run')  # with the other users of the session's run
def test_notebook_shows_each_task_of_a_multitask_workdir(multitask_run, monkeypatch):
  """A multi-task workdir (detection, segmentation, captioning; conftest.multitask_run):
  the table of each task's training evaluations, then its captioning task's captions of 2
  val images beside their references."""
  from pix2seq_jax.evaluation import caption_metrics
  from tests import multi_device_run
  text, outputs = _run_notebook(monkeypatch, PIX2SEQ_WORKDIR=multitask_run[0],
                                PIX2SEQ_MAX_IMAGES='2', PIX2SEQ_TASK='captioning')
  assert 'multi-task workdir: object_detection, instance_segmentation, captioning' in text
  assert 'task captioning: captions' in text
  tables = dict(part.split(':\n', 1)  # {task: its table, and what follows the last}
                for part in text.split('\ntraining evaluations of ')[1:])
  assert list(tables) == ['object_detection', 'instance_segmentation', 'captioning']
  last = f'\n{multi_device_run.MULTITASK_RUN_STEPS:>8} '  # training's evaluation at the end
  assert all(last in table for table in tables.values())
  assert 'AP50' in tables['object_detection'] and 'AP50' in tables['instance_segmentation']
  assert all(key in tables['captioning'] for key in caption_metrics.METRIC_KEYS)
  assert '2 images, 2 captions' in text and text.count('    reference: ') >= 2
  figures = [out for out in outputs if 'image/png' in out.get('data', {})]
  assert len(figures) == 1  # the images with their captions
