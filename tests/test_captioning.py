"""Captioning (Pix2Seq-v2) on real COCO captions (coco_mini): the official sequences and
their weights, eagerly and inside tf.data; the pipeline's batches read back into the
file's captions; bad caption records skipped and counted; the decoding task and its
parser; a short training run evaluated with the caption metrics; and a workdir that
refuses another tokenizer than its own."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from pix2seq_jax.config import checks, default, workdir_config
from pix2seq_jax.data import captions, pipeline, sources
from pix2seq_jax.evaluation import caption_metrics, task_evaluators
from pix2seq_jax.inference import decoding
from pix2seq_jax.tasks import captioning
from pix2seq_jax.tasks import tokenizer as tokenizer_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.train import loop
from pix2seq_jax.workdir import tokenizer_file
from tests.tiny import eager_and_in_dataset, shared_path

VOCAB = vocab_lib.for_categories('official_multitask', (), 1000)
LENGTH = 24  # tokens per caption sequence in these tests


def caption_config(coco_dir: str, tokenizer: str):
  """vit_nano on 64-px coco_mini captions: 2 captions of 24 tokens per image."""
  config = default.get_config()
  config.task = 'captioning'
  data = config.data
  data.source, data.coco_dir, data.tokenizer = 'coco_files', coco_dir, tokenizer
  data.image_size, data.max_text_len, data.captions_per_image = 64, LENGTH, 2
  data.noise_objects = data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'
  config.model.variant = 'vit_nano'
  config.model.dropout = config.model.drop_path = 0.0
  config.train.batch_size = config.eval.batch_size = 2
  config.train.steps, config.train.warmup_steps = 4, 0
  config.train.learning_rate = 1e-3
  config.train.log_every = config.train.checkpoint_every = 2
  config.eval.max_images = 2
  return config


@pytest.fixture(scope='module')
def coco_mini(mini_tokenizer):
  config = caption_config(shared_path('coco_mini'), mini_tokenizer)
  return config, sources.load_splits(config.data, 'captioning')


def test_caption_sequences_are_the_officials_eagerly_and_in_tf_data():
  pieces = tf.constant([[5, 6, 1], [7, 1, -1], [-1, -1, -1]], tf.int32)
  (inputs, targets, weights), in_dataset = eager_and_in_dataset(
      lambda p: pipeline.caption_sequences(p, VOCAB, 6, 0.1), (pieces,))
  for got, want in zip(in_dataset, (inputs, targets, weights)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(inputs, [[13, 3005, 3006, 3001, 0, 0], [13, 3007, 3001, 0, 0, 0],
                                         [13, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(targets, [[3005, 3006, 3001, 0, 0, 0],
                                          [3007, 3001, 0, 0, 0, 0], [0] * 6])
  # EOS 0.1, every other target 1 (padding included, the official); an empty row 0.
  np.testing.assert_allclose(weights, [[1, 1, 0.1, 1, 1, 1], [1, 0.1, 1, 1, 1, 1], [0] * 6])


def test_splits_hold_each_images_captions_in_pieces(coco_mini):
  config, splits = coco_mini
  tokenizer = tokenizer_lib.TextTokenizer(config.data.tokenizer)
  read = captions.load_captions(config.data.coco_dir + '/annotations/captions_train2017.json')
  assert len(splits.train.records) == 80 and len(splits.val.records) == 79
  targets = splits.captions['train']
  for record, texts, pieces in zip(splits.train.records, targets.texts, targets.pieces):
    assert texts == read.by_image[record.image_id]
    assert [list(p) for p in pieces] == [tokenizer.encode(t)[:LENGTH - 1] + [1]
                                         if len(tokenizer.encode(t)) > LENGTH
                                         else tokenizer.encode(t) for t in texts]


def test_train_batches_read_back_into_the_files_captions(coco_mini):
  config, splits = coco_mini
  tokenizer = tokenizer_lib.TextTokenizer(config.data.tokenizer)
  batch = next(pipeline.train_batches(splits.train, config.data, VOCAB, seed=0,
                                      local_batch_size=2, task='captioning',
                                      targets=splits.captions['train']))
  assert batch['input_tokens'].shape == (2, 2, LENGTH)
  assert batch['image'].shape == (2, 64, 64, 3)
  by_id = {r.image_id: t for r, t in zip(splits.train.records, splits.captions['train'].texts)}
  for image_id, targets, inputs in zip(batch['image_id'], batch['target_tokens'],
                                       batch['input_tokens']):
    for row, text in zip(targets, by_id[int(image_id)]):
      pieces = captioning.caption_pieces(row, VOCAB.text_offset, tokenizer.vocab_size)
      if len(tokenizer.encode(text)) <= LENGTH:
        assert tokenizer.decode(pieces) == tokenizer.normalize(text)
    # Text dropout: the fake-text token replaced about half of the inputs, never a target.
    dropped = inputs == VOCAB.noise_class
    assert 0.2 < dropped.mean() < 0.8
    assert not (targets == VOCAB.noise_class).any()


def test_bad_caption_records_are_skipped_and_counted(coco_mini, tmp_path):
  config, _ = coco_mini
  source = config.data.coco_dir + '/annotations/captions_val2017.json'
  with open(source) as f:
    content = json.load(f)
  first, second = content['images'][0]['id'], content['images'][1]['id']
  content['annotations'] = [a for a in content['annotations'] if a['image_id'] != second]
  content['annotations'] += [{'id': 1, 'image_id': first},  # no caption
                             {'id': 2, 'image_id': first, 'caption': '  '},
                             {'id': 3, 'image_id': first, 'caption': 7},
                             {'id': 4, 'image_id': 123456789, 'caption': 'a cat'}]
  os.makedirs(tmp_path / 'annotations')
  os.symlink(config.data.coco_dir + '/val2017', tmp_path / 'val2017')
  os.symlink(config.data.coco_dir + '/train2017', tmp_path / 'train2017')
  shutil.copy(config.data.coco_dir + '/annotations/captions_train2017.json',
              tmp_path / 'annotations')
  with open(tmp_path / 'annotations' / 'captions_val2017.json', 'w') as f:
    json.dump(content, f)
  data = caption_config(str(tmp_path), config.data.tokenizer).data
  val = sources.load_splits(data, 'captioning').val
  assert len(val.records) == 78  # the image left without a caption is left out
  assert val.dropped == {'captions_missing_caption': 1, 'captions_empty_caption': 1,
                         'captions_non-text_caption': 1, 'captions_image_id_not_in_images': 1,
                         'captions_image_without_caption': 1}


def test_a_caption_row_ends_at_its_eos_and_clips_as_the_official():
  row = np.array([3005, 3, 3006, 40000, 3001, 3007, 0])
  np.testing.assert_array_equal(captioning.official_pieces(row, 3000, 300),
                                [5, 0, 6, 299, 1, 7, 0])
  assert captioning.caption_pieces(row, 3000, 300) == [5, 6, 299]


def _logits_fn(last, position, cache):
  """Two rows whose most likely token is the non-text token 5, then text token 3010, and
  at response position 2 the text EOS."""
  logits = jnp.full((2, VOCAB.size), -5.0).at[:, 5].set(10.0)
  best = jnp.where(position == 2, VOCAB.text_eos, 3010)
  return logits + 20.0 * (jnp.arange(VOCAB.size) == best)[None], cache


def test_the_captioning_task_stops_rows_at_eos_and_grammar_keeps_text_tokens():
  grammar = captioning.CaptioningTask(VOCAB, mode='grammar', num_pieces=300, length=6)
  state = decoding.sample(_logits_fn, (), 2, grammar, length=6, rng=jax.random.key(0),
                          temperature=0.0, mode='grammar')
  np.testing.assert_array_equal(state.tokens, [[3010, 3010, 3001, 0, 0, 0]] * 2)
  official = captioning.CaptioningTask(VOCAB, num_pieces=300, length=6)
  assert official.sampling() == dict(temperature=1.0, top_k=0, top_p=1.0, mode='official')
  state = decoding.sample(_logits_fn, (), 2, official, length=6, rng=jax.random.key(0),
                          temperature=0.0, mode='official')
  np.testing.assert_array_equal(state.tokens, [[3010, 3010, 3001, 0, 0, 0]] * 2)
  low = lambda last, position, cache: (_logits_fn(last, position, cache)[0] - 20.0 * (
      jnp.arange(VOCAB.size) == 3010)[None], cache)
  state = decoding.sample(low, (), 2, official, length=6, rng=jax.random.key(0),
                          temperature=0.0, mode='official')
  assert state.tokens[0, 0] == 5  # unconstrained: the most likely token, text or not
  state = decoding.sample(low, (), 2, grammar, length=6, rng=jax.random.key(0),
                          temperature=0.0, mode='grammar')
  assert VOCAB.text_offset <= state.tokens[0, 0] < VOCAB.text_offset + 300


@pytest.fixture(scope='module')
def trained(coco_mini, tmp_path_factory):
  """A 4-step captioning run; its evaluation leaves METEOR out (its Java process takes
  seconds to start; tests/test_caption_metrics.py reproduces its published numbers)."""
  config, _ = coco_mini
  workdir = str(tmp_path_factory.mktemp('captioning') / 'run')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(caption_metrics, '_meteor', lambda gts, res: 0.0)
    return workdir, loop.train_and_evaluate(config, workdir)


def test_a_captioning_run_is_scored_with_the_caption_metrics(trained):
  workdir, metrics = trained
  assert set(metrics) == {'BLEU_1', 'BLEU_2', 'BLEU_3', 'BLEU_4', 'METEOR', 'ROUGE_L', 'CIDEr',
                          'val_loss', 'val_perplexity'}
  with open(os.path.join(workdir, 'eval', 'step_4', 'captions.json')) as f:
    results = json.load(f)
  assert len(results) == 2 and all(isinstance(r['caption'], str) for r in results)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    losses = [json.loads(line)['loss'] for line in f if '"loss"' in line]
  assert losses[-1] < losses[0]


def test_the_workdir_keeps_its_tokenizer_and_refuses_another(trained, coco_mini, tmp_path):
  workdir, _ = trained
  config, _ = coco_mini
  assert workdir_config.load(workdir).data.tokenizer == tokenizer_file.stored_path(workdir)
  other = str(tmp_path / 'other.model')
  read = captions.load_captions(config.data.coco_dir + '/annotations/captions_val2017.json')
  tokenizer_lib.train_tokenizer(read.all_texts(), other, 200)
  changed = caption_config(config.data.coco_dir, other)
  with pytest.raises(ValueError, match='differs from .*tokenizer.model'):
    loop.train_and_evaluate(changed, workdir)
  with pytest.raises(ValueError, match='differs from .*tokenizer.model'):  # --mode=eval
    task_evaluators.evaluate_checkpoint(changed, workdir)
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  shutil.copy(other, os.path.join(copy, 'tokenizer.model'))
  with pytest.raises(ValueError, match='copy/tokenizer.model differs'):
    workdir_config.load(copy)
  os.remove(os.path.join(copy, 'tokenizer.model'))
  with pytest.raises(FileNotFoundError, match='copy/tokenizer.model is missing'):
    workdir_config.load(copy)


@pytest.mark.parametrize('change, message', [
    (lambda c: setattr(c.model, 'vocabulary', 'official'), 'official_multitask'),
    (lambda c: setattr(c.data, 'tokenizer', ''), 'train_tokenizer'),
    (lambda c: setattr(c.data, 'source', 'shapes'), 'no captions'),
    (lambda c: setattr(c.data, 'text_dropout', 1.0), 'text_dropout'),
    (lambda c: setattr(c.data, 'noise_objects', True), 'noise_objects'),
])
def test_captioning_config_checks_name_the_fix(coco_mini, change, message):
  config = caption_config(coco_mini[0].data.coco_dir, coco_mini[0].data.tokenizer)
  change(config)
  if config.data.source == 'shapes':
    config.data.coco_dir = ''
  with pytest.raises(checks.ConfigError, match=message):
    checks.validate(config, devices=1)


def test_caption_fields_are_refused_for_other_tasks():
  config = default.get_config()
  config.data.tokenizer = 'x.model'
  with pytest.raises(checks.ConfigError, match='data.tokenizer is read only with'):
    checks.validate(config, mode='summary')
