"""Loading a config file (`configs/NAME.py`) by its path, as main.py's --config does."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the Python file at `path`.

  A config that imports a sibling (`from configs import coco`) needs the folder holding
  configs/ on sys.path, as it is for `python main.py` run from the repository.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such config file.')
  name = 'config_file_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
