"""Starting a run from another workdir's parameters (`config.model.init_from`).

The source is a converted official checkpoint or any earlier run; its parameters and
batch statistics are read (not its optimizer state or step). Every array must have the
same shape in both models, except the rows of the token embedding and output bias,
which are matched by meaning:
  coordinate rows    bin b -> bin b (the two vocabularies need the same data.num_bins)
  special rows       padding, EOS, start and "n/a" -> the source's same token (the
                     official layout's 0, padding and EOS at once, takes the EOS row)
  class rows         by category name (case and surrounding spaces ignored); a class
                     the source does not know keeps its freshly initialised row
  other rows         (the official vocabulary's unused ids) the source's same id when
                     both vocabularies have one layout, else fresh
An architecture mismatch is refused naming the arrays.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.config import workdir_config
from pix2seq_jax.data import coco_json
from pix2seq_jax.models import tree_paths
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import state as state_lib
from pix2seq_jax.workdir import checkpoints
from pix2seq_jax.workdir import files as workdir_lib

# Arrays whose first axis is the vocabulary.
VOCABULARY_ARRAYS = (('decoder', 'embed', 'embedding'), ('decoder', 'output_bias'))
_LIST_LIMIT = 12


class InitFromError(ValueError):
  """A source workdir whose parameters cannot start this model."""


def _key(name: str) -> str:
  return ' '.join(name.lower().split())


def row_sources(target: vocab_lib.Vocabulary, target_names: tuple[str, ...],
                source: vocab_lib.Vocabulary,
                source_names: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
  """[target.size] int: the source row each target row takes, -1 where it stays fresh;
  and the names of the target's classes that the source does not have."""
  if target.num_bins != source.num_bins:
    raise InitFromError(f'data.num_bins={target.num_bins} here, {source.num_bins} in '
                        'model.init_from: the coordinate rows cannot be matched; use the '
                        "source's data.num_bins.")
  rows = np.full(target.size, -1, np.int64)
  if target.layout == source.layout:
    shared = min(target.size, source.size)
    rows[:shared] = np.arange(shared)  # unused ids keep their meaning
    rows[target.class_offset:target.coord_offset] = -1  # classes are matched below
  # EOS last: in the official layout padding is EOS, and its row's job is to end sequences.
  for role in ('padding', 'start', 'noise_class', 'eos'):
    rows[getattr(target, role)] = getattr(source, role)
  bins = np.arange(target.num_bins)
  rows[target.coord_offset + bins] = source.coord_offset + bins
  by_name = {_key(n): label for label, n in enumerate(source_names)}
  unmatched = []
  for label, name in enumerate(target_names):
    source_label = by_name.get(_key(name))
    token = int(target.class_tokens[label])
    if source_label is None:
      rows[token] = -1
      unmatched.append(name)
    else:
      rows[token] = int(source.class_tokens[source_label])
  return rows, unmatched


def merge(target: dict, source: dict, rows: np.ndarray) -> tuple[dict, list[str]]:
  """`target` (pure dict of arrays) with `source`'s values: vocabulary arrays by `rows`,
  every other array whole. Returns the merged tree and the mismatches."""
  flat_target, flat_source = tree_paths.flatten(target), tree_paths.flatten(source)
  problems = [f'{"/".join(map(str, p))}: only here {tuple(flat_target[p].shape)}'
              for p in flat_target.keys() - flat_source.keys()]
  problems += [f'{"/".join(map(str, p))}: only in model.init_from '
               f'{tuple(flat_source[p].shape)}'
               for p in flat_source.keys() - flat_target.keys()]
  merged = {}
  for path, fresh in flat_target.items():
    if path not in flat_source:
      continue
    value = np.asarray(flat_source[path])
    if path in VOCABULARY_ARRAYS:
      if value.shape[1:] != fresh.shape[1:]:
        problems.append(f'{"/".join(map(str, path))}: here {tuple(fresh.shape)}, '
                        f'model.init_from {value.shape}')
        continue
      fresh = np.asarray(fresh)
      value = np.where((rows >= 0).reshape((-1,) + (1,) * (fresh.ndim - 1)),
                       value[np.maximum(rows, 0)], fresh)
    elif value.shape != tuple(fresh.shape):
      problems.append(f'{"/".join(map(str, path))}: here {tuple(fresh.shape)}, '
                      f'model.init_from {value.shape}')
      continue
    merged[path] = value.astype(fresh.dtype)
  return tree_paths.unflatten(merged), sorted(problems)


def with_init_from(state: state_lib.TrainState, config, vocab: vocab_lib.Vocabulary,
                   categories: coco_json.CategoryMap, mesh: Mesh) -> state_lib.TrainState:
  """`state` (freshly initialised) with parameters and batch statistics from
  `config.model.init_from`, placed as `state` on `mesh`."""
  source_dir = config.model.init_from
  source_config = workdir_config.load(source_dir)
  source_categories = coco_json.CategoryMap.from_file(
      os.path.join(source_dir, workdir_lib.CATEGORIES))
  source_vocab = vocab_lib.for_categories(source_config.model.vocabulary,
                                          source_categories.category_ids,
                                          source_config.data.num_bins)
  manager = checkpoints.make_manager(source_dir)
  restored = checkpoints.restore_model(
      manager, checkpoints.model_template(source_config, source_vocab, mesh))
  manager.close()
  if restored is None:
    raise InitFromError(f'config.model.init_from={source_dir!r} has no checkpoint.')
  rows, unmatched = row_sources(vocab, categories.names, source_vocab,
                                source_categories.names)
  # Whole on every process, also where `shard_params` splits them over several processes.
  fresh_params, fresh_stats = state_lib.host_values((state.params, state.batch_stats))
  params, stats = fresh_params.to_pure_dict(), fresh_stats.to_pure_dict()
  source_params, source_stats = state_lib.host_values((restored['params'],
                                                       restored['batch_stats']))
  new_params, problems = merge(params, source_params.to_pure_dict(), rows)
  new_stats, stat_problems = merge(stats, source_stats.to_pure_dict(), rows)
  problems += stat_problems
  if problems:
    raise InitFromError(
        f'config.model.init_from={source_dir!r} holds another architecture '
        f'({source_config.model.variant}, {source_config.data.image_size} px) than this '
        f'run ({config.model.variant}): {len(problems)} arrays differ:\n  '
        + tree_paths.first_of(problems, _LIST_LIMIT, separator='\n  ',
                            rest='\n  (and {n} more)')
        + '\nUse the same model.variant and model.max_seq_len as the source.')
  nnx.replace_by_pure_dict(fresh_params, new_params)
  nnx.replace_by_pure_dict(fresh_stats, new_stats)
  matched = len(categories.names) - len(unmatched)
  logging.info('Started from the parameters of %s (step %d): %d of %d classes matched by '
               'name%s.', source_dir, int(restored['step']), matched, len(categories.names),
               f'; fresh rows for {tree_paths.first_of(unmatched, 10)}' if unmatched else '')
  shard = config.train.shard_params
  return state.replace(params=state_lib.placed(fresh_params, mesh, shard),
                       batch_stats=state_lib.placed(fresh_stats, mesh, shard))
