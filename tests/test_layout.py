"""The package's layout: one folder per stage, imports that follow the data's journey
(read from each module's import statements, function-level ones included), and a README
whose "How it works" table names every folder."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'pix2seq_jax'

# stage folder -> stage folders its modules must not import (the later stages of the
# journey, and training code for what a shipped predictor needs).
FORBIDDEN = {
    'tasks': {'config', 'data', 'models', 'workdir', 'train', 'inference', 'evaluation',
              'deploy', 'official', 'parallel', 'runtime'},
    'runtime': {'config', 'data', 'tasks', 'models', 'workdir', 'train', 'inference',
                'evaluation', 'deploy', 'official', 'parallel'},
    'config': {'inference', 'train', 'evaluation', 'deploy'},
    'data': {'models', 'workdir', 'train', 'inference', 'evaluation', 'deploy', 'official'},
    'models': {'data', 'workdir', 'train', 'inference', 'evaluation', 'deploy', 'official'},
    'workdir': {'data', 'train', 'inference', 'evaluation', 'deploy', 'official'},
    'inference': {'train', 'evaluation', 'deploy', 'official'},
    'deploy': {'train', 'evaluation', 'official'},
    'parallel': {'data', 'models', 'workdir', 'train', 'inference', 'evaluation', 'deploy',
                 'official'},
}


def _stage_folders() -> list[str]:
  return sorted(p.name for p in PACKAGE.iterdir() if (p / '__init__.py').exists())


def imported_stages(path: pathlib.Path) -> dict[str, int]:
  """{stage folder of pix2seq_jax a module imports: first line number}."""
  found: dict[str, int] = {}
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module + '.' + alias.name for alias in node.names]
    for name in names:
      parts = name.split('.')
      if parts[0] == 'pix2seq_jax' and len(parts) > 1:
        found.setdefault(parts[1], node.lineno)
  return found


def test_the_package_root_holds_only_stage_folders():
  loose = sorted(p.name for p in PACKAGE.glob('*.py') if p.name != '__init__.py')
  assert loose == [], f'modules at the package root: {loose}; place each with its stage'
  assert set(FORBIDDEN) | {'train', 'evaluation', 'official'} == set(_stage_folders())


@pytest.mark.parametrize('stage', sorted(FORBIDDEN))
def test_imports_follow_the_pipeline(stage):
  wrong = []
  for path in sorted((PACKAGE / stage).glob('*.py')):
    for imported, line in imported_stages(path).items():
      if imported in FORBIDDEN[stage]:
        wrong.append(f'{path.relative_to(ROOT)}:{line} imports pix2seq_jax.{imported}')
  assert not wrong, '\n'.join(wrong)


def test_imported_stages_reads_every_kind_of_import(tmp_path):
  module = tmp_path / 'm.py'
  module.write_text('import os\nfrom pix2seq_jax.train import loop\n'
                    'def f():\n  import pix2seq_jax.inference.decoding\n'
                    '  from pix2seq_jax import workdir\n  from . import x\n')
  assert imported_stages(module) == {'train': 2, 'inference': 4, 'workdir': 5}


def test_the_readme_table_names_every_folder():
  readme = (ROOT / 'README.md').read_text()
  named = set(re.findall(r'^\|\s*`(?:pix2seq_jax/)?([a-z_]+)/`', readme, re.MULTILINE))
  missing = sorted(set(_stage_folders()) - named)
  assert not missing, f'README "How it works" lacks rows for: {missing}'
