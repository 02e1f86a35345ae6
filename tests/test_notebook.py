"""The checkpoint-evaluation notebook runs top to bottom on a tiny checkpoint."""

import os

import nbformat
from nbclient import NotebookClient
import pytest

from tests.tiny import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'evaluate_checkpoint.ipynb')


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None


@pytest.mark.slow
def test_notebook_evaluates_a_checkpoint(tiny_workdir, monkeypatch):
  monkeypatch.setenv('PIX2SEQ_WORKDIR', tiny_workdir)
  monkeypatch.setenv('PIX2SEQ_MAX_IMAGES', '6')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()
  text = '\n'.join(out.get('text', '') for cell in notebook.cells if cell.cell_type == 'code'
                   for out in cell.outputs)
  assert 'checkpoint step 2' in text and '6 images' in text
  for key in ('AP50', 'AR100'):
    assert key in text
  errors = [out for cell in notebook.cells if cell.cell_type == 'code' for out in cell.outputs
            if out.output_type == 'error']
  assert not errors
  figures = [out for cell in notebook.cells if cell.cell_type == 'code' for out in cell.outputs
             if 'image/png' in out.get('data', {})]
  assert len(figures) == 3  # per-category AP, precision-recall, the image grid
