"""model.init_from: a run starts from another workdir's parameters, across category sets."""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from pix2seq_jax.config import checks, workdir_config
from pix2seq_jax.data import coco_json, shapes
from pix2seq_jax.models import build
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import init_from, loop
from pix2seq_jax.workdir import checkpoints
from tests import tiny

pytestmark = pytest.mark.xdist_group('train')


def test_rows_are_matched_by_meaning_across_layouts():
  source = vocab_lib.Vocabulary(3, 64)  # compact: classes 4..6, bins 7..70
  names = ('red circle', 'green circle', 'blue square')
  target = vocab_lib.for_categories('official', (5, 7, 9), 64)
  rows, unmatched = init_from.row_sources(target, (' Blue  Square', 'cat', 'red circle'),
                                          source, names)
  assert unmatched == ['cat']
  assert rows[105] == 6 and rows[107] == -1 and rows[109] == 4  # by name, case/space-blind
  assert rows[0] == vocab_lib.EOS and rows[10] == vocab_lib.START  # official 0 ends sequences
  assert rows[30] == vocab_lib.NOISE_CLASS
  np.testing.assert_array_equal(rows[1000:1064], np.arange(7, 71))  # bin b <- bin b
  assert (rows[1064:] == -1).all() and (rows[101:105] == -1).all()  # no meaning: fresh
  with pytest.raises(init_from.InitFromError, match='num_bins=1000 here, 64'):
    init_from.row_sources(vocab_lib.for_categories('official', (5,), 1000), ('a',),
                          source, names)


def test_same_layout_keeps_every_other_row():
  source = vocab_lib.for_categories('official', (1, 2, 3), 1000)
  target = vocab_lib.for_categories('official', (2, 40), 1000)
  rows, unmatched = init_from.row_sources(target, ('b', 'z'), source, ('a', 'b', 'c'))
  assert unmatched == ['z'] and rows[102] == 102 and rows[140] == -1
  assert rows[101] == -1 and rows[103] == -1  # class slots not of this dataset: fresh
  assert rows[2500] == 2500 and rows[15] == 15  # unused ids keep their meaning


def _renamed_shapes(shapes_dir: str, out: str) -> dict[str, str]:
  """The shapes data as a COCO-format dataset whose categories partly overlap: three of
  the nine renamed, ids shifted by 10."""
  paths = shapes.ensure_dataset(shapes_dir, seed=0, num_train=24, num_val=6)
  renamed = {'red circle': 'ball', 'green square': 'box', 'blue triangle': 'sail'}
  files = {}
  for split, (images, annotation_file) in paths.items():
    with open(annotation_file) as f:
      content = json.load(f)
    content['categories'] = [{'id': c['id'] + 10, 'name': renamed.get(c['name'], c['name'])}
                             for c in content['categories']]
    for ann in content['annotations']:
      ann['category_id'] += 10
    path = os.path.join(out, f'instances_{split}.json')
    with open(path, 'w') as f:
      json.dump(content, f)
    files[f'{split}_images'], files[f'{split}_annotations'] = images, path
  return files


def test_a_run_starts_from_another_workdir_across_category_sets(tiny_workdir, shapes_dir,
                                                                tmp_path):
  config = tiny.tiny_config(shapes_dir)
  config.data.source = 'coco_files'
  for field, value in _renamed_shapes(shapes_dir, str(tmp_path)).items():
    config.data[field] = value
  config.model.init_from = tiny_workdir
  config.train.steps = 1
  config.train.learning_rate = 0.0  # the step leaves the parameters as loaded
  config.train.warmup_steps = 0
  config.eval.max_images = 2
  workdir = str(tmp_path / 'finetune')
  loop.train_and_evaluate(config, workdir)

  source_config = workdir_config.load(tiny_workdir)
  target_config = workdir_config.load(workdir)
  source_vocab = vocab_lib.for_categories('compact', range(1, 10), 64)
  with open(os.path.join(workdir, 'categories.json')) as f:
    target_categories = coco_json.CategoryMap.from_categories(json.load(f))
  target_vocab = vocab_lib.for_categories('compact', target_categories.category_ids, 64)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))

  def restore(folder, config, vocab):
    manager = checkpoints.make_manager(folder)
    restored = checkpoints.restore_model(manager, checkpoints.model_template(config, vocab,
                                                                             mesh))
    manager.close()
    return jax.device_get(restored['params'].to_pure_dict())

  source = restore(tiny_workdir, source_config, source_vocab)
  target = restore(workdir, target_config, target_vocab)
  np.testing.assert_array_equal(target['encoder'][0]['attn']['query']['kernel'],
                                source['encoder'][0]['attn']['query']['kernel'])
  np.testing.assert_array_equal(target['backbone']['stem']['kernel'],
                                source['backbone']['stem']['kernel'])
  embed_source = source['decoder']['embed']['embedding']
  embed_target = target['decoder']['embed']['embedding']
  source_names = [c['name'] for c in shapes.CATEGORIES]
  for label, name in enumerate(target_categories.names):
    row = embed_target[vocab_lib.CLASS_OFFSET + label]
    if name in source_names:
      np.testing.assert_array_equal(row, embed_source[vocab_lib.CLASS_OFFSET
                                                      + source_names.index(name)])
    else:  # a fresh row, unlike any of the source's class rows
      assert not np.isclose(embed_source[4:13], row).all(axis=1).any()
  np.testing.assert_array_equal(embed_target[target_vocab.coord_offset:],
                                embed_source[source_vocab.coord_offset:])
  np.testing.assert_array_equal(embed_target[:4], embed_source[:4])


def test_another_architecture_is_refused_naming_the_arrays(shapes_dir, tmp_path):
  config = tiny.tiny_config(shapes_dir)
  vocab = vocab_lib.Vocabulary(9, 64)
  def params(variant):
    other = ml_collections.ConfigDict(config.to_dict())
    other.model.variant = variant
    abstract = nnx.state(build.abstract_model(other, vocab), nnx.Param).to_pure_dict()
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)

  rows, _ = init_from.row_sources(vocab, tuple('abcdefghi'), vocab, tuple('abcdefghi'))
  _, problems = init_from.merge(params('vit_tiny'), params('tiny'), rows)
  assert 'backbone/blocks/0/conv1/kernel: only in model.init_from (3, 3, 32, 32)' in problems
  assert all('backbone' in p for p in problems)  # the rest of the two models is alike
  _, none = init_from.merge(params('tiny'), params('tiny'), rows)
  assert none == []
  config.model.init_from = str(tmp_path)
  with pytest.raises(checks.ConfigError, match='has no config.json'):
    checks.validate(config)


def _train_argv(workdir: str, shapes_dir: str, source: str, variant: str) -> list[str]:
  """main.py training tiny_config's data and vocabulary (what tiny_workdir was trained
  on) for one step with `variant`, starting from `source`."""
  return ['--mode=train', f'--config={tiny.ROOT}/configs/shapes.py', f'--workdir={workdir}',
          f'--config.model.init_from={source}', f'--config.model.variant={variant}',
          f'--config.data.shapes_dir={shapes_dir}', '--config.data.shapes_num_train=24',
          '--config.data.shapes_num_val=6', '--config.data.image_size=64',
          '--config.data.max_instances=8', '--config.data.num_bins=64',
          '--config.train.batch_size=8', '--config.train.steps=1',
          '--config.train.warmup_steps=0', '--config.train.log_every=1',
          '--config.train.checkpoint_every=1', '--config.train.eval_every=0',
          '--config.eval.max_images=2', '--config.eval.batch_size=8']


def test_main_refuses_another_architecture_in_one_line_and_a_corrected_rerun_works(
    tiny_workdir, shapes_dir, tmp_path, capsys, caplog):
  """docs/robustness.md: "`model.init_from` of another architecture: exit 1 before the first step
  listing the differing arrays". main.py prints the refusal as an `error:` line, not a
  traceback, and leaves nothing (no checkpoint, no log) that would make the corrected
  command resume instead of starting from the source."""
  workdir = str(tmp_path / 'run')
  code = tiny.run_main(*_train_argv(workdir, shapes_dir, tiny_workdir, 'vit_nano'))
  stderr = capsys.readouterr().err
  assert code == 1, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert (f'error: config.model.init_from={tiny_workdir!r} holds another architecture '
          '(tiny, 64 px) than this run (vit_nano)') in stderr, stderr[-3000:]
  assert '  backbone/blocks/0/conv1/kernel: only in model.init_from (3, 3, 32, 32)' in stderr
  assert 'Use the same model.variant' in stderr
  checkpoint_dir = checkpoints.checkpoint_dir(workdir)
  assert not os.path.exists(checkpoint_dir) or not os.listdir(checkpoint_dir)
  assert not os.path.exists(os.path.join(workdir, 'metrics.jsonl'))  # no step ran

  caplog.set_level(logging.INFO)
  code = tiny.run_main(*_train_argv(workdir, shapes_dir, tiny_workdir, 'tiny'))
  assert code == 0, capsys.readouterr().err[-3000:]
  assert f'Started from the parameters of {tiny_workdir}' in caplog.text
  assert 'Resumed from' not in caplog.text
  assert workdir_config.load(workdir).model.variant == 'tiny'
  assert sorted(os.listdir(checkpoint_dir)) == ['1']
