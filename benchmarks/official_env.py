"""What the official code needs from the scratch environment that runs it (oracle scripts
only; never imported by the package): a stand-in for `tensorflow_addons`, which the
official code imports and the models these scripts build never call."""

import sys
import types


class _Missing:
  def __getattr__(self, name):
    raise ImportError(f'tensorflow_addons.{name} is stubbed out')


def stub_tensorflow_addons() -> None:
  """Registers `tensorflow_addons` (and `.layers`) whose attributes raise ImportError."""
  addons = types.ModuleType('tensorflow_addons')
  addons.layers, addons.optimizers = _Missing(), _Missing()
  sys.modules['tensorflow_addons'] = addons
  sys.modules['tensorflow_addons.layers'] = addons.layers
