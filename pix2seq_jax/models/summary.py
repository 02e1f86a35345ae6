"""`--mode=summary`: the model's parameters per module, without allocating them.

The vocabulary size follows the number of classes, which the caller takes from the
dataset (`data.sources.class_count`) and names in the table's first line.
"""

from __future__ import annotations

from collections import OrderedDict

import jax
import ml_collections
import numpy as np
from flax import nnx

from pix2seq_jax.models import build, tree_paths
from pix2seq_jax.tasks import vocab as vocab_lib

# Module groups broken down one level further in the table.
_EXPANDED = ('backbone', 'decoder')


def parameter_counts(config: ml_collections.ConfigDict,
                     num_classes: int) -> 'OrderedDict[str, int]':
  """{module group: parameter count} in definition order."""
  vocab = vocab_lib.for_categories(config.model.vocabulary, range(num_classes),
                                   config.data.num_bins)
  params = nnx.state(build.abstract_model(config, vocab), nnx.Param)
  counts: 'OrderedDict[str, int]' = OrderedDict()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tree_paths.path_names(path)
    group = '.'.join(keys[:2]) if keys[0] in _EXPANDED and len(keys) > 2 else keys[0]
    counts[group] = counts.get(group, 0) + int(np.prod(leaf.shape))
  return counts


def summarise(config: ml_collections.ConfigDict, num_classes: int, origin: str) -> str:
  """The table printed by `--mode=summary`; its last line is `total_params=<N>`.

  `config` has passed `config.checks.validate(config, mode='summary')`; `origin` says
  where `num_classes` came from.
  """
  counts = parameter_counts(config, num_classes)
  total = sum(counts.values())
  width = max(len(name) for name in counts)
  lines = [f'variant={config.model.variant} classes={num_classes} ({origin}) '
           f'bins={config.data.num_bins}',
           f'{"module":<{width}}  {"parameters":>12}  {"share":>6}']
  for name, count in counts.items():
    lines.append(f'{name:<{width}}  {count:>12,}  {count / total:>6.1%}')
  lines.append(f'total_params={total}')
  return '\n'.join(lines)
