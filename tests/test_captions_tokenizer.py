"""COCO captions files read per image with bad records counted, and the captioning
tokenizer trained on them: official special ids, round trips, the same file from the same
captions, clear refusals; its CLI writes the model."""

import hashlib
import json
import subprocess
import sys
import time

import pytest

from pix2seq_jax.data import captions as captions_lib
from pix2seq_jax.tasks import tokenizer as tokenizer_lib
from tests.tiny import ROOT, shared_path

VOCAB_SIZE = 500


def _train_captions_path():
  return shared_path('coco_mini', 'annotations', 'captions_train2017.json')


@pytest.fixture(scope='module')
def coco_mini_captions():
  return captions_lib.load_captions(_train_captions_path())


@pytest.fixture(scope='module')
def trained(coco_mini_captions, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tokenizer') / 'tokenizer.model')
  start = time.perf_counter()
  tokenizer = tokenizer_lib.train_tokenizer(coco_mini_captions.all_texts(), path, VOCAB_SIZE)
  return tokenizer, time.perf_counter() - start


def test_coco_mini_captions_per_image(coco_mini_captions):
  assert len(coco_mini_captions.by_image) == 80
  assert coco_mini_captions.num_captions == 400
  assert all(len(c) == 5 for c in coco_mini_captions.by_image.values())
  assert coco_mini_captions.skipped == {}
  texts = coco_mini_captions.all_texts()
  assert len(texts) == 400 and all(t == t.strip() and t for t in texts)
  with open(_train_captions_path()) as f:
    first = json.load(f)['annotations'][0]
  assert coco_mini_captions.by_image[first['image_id']][0] == first['caption'].strip()
  assert 'captions_train2017.json: 400 captions of 80 images' in (
      coco_mini_captions.describe_skipped())


def test_bad_records_are_counted_and_the_good_ones_kept(tmp_path):
  path = tmp_path / 'captions.json'
  path.write_text(json.dumps({
      'images': [{'id': 1, 'file_name': 'a.jpg'}, {'id': 2, 'file_name': 'b.jpg'}],
      'annotations': [
          {'id': 1, 'image_id': 1, 'caption': ' A dog on the grass. '},
          {'id': 2, 'image_id': 1},
          {'id': 3, 'image_id': 1, 'caption': '  '},
          {'id': 4, 'image_id': 2, 'caption': 42},
          {'id': 5, 'image_id': 9, 'caption': 'An image not in the file.'},
          {'id': 6, 'caption': 'No image.'},
          {'id': 7, 'image_id': 2, 'caption': 'A cat.'},
          {'id': 8, 'image_id': 1, 'caption': 'A second dog caption.'},
      ]}))
  captions = captions_lib.load_captions(str(path))
  assert captions.by_image == {1: ('A dog on the grass.', 'A second dog caption.'),
                               2: ('A cat.',)}
  assert captions.skipped == {
      captions_lib.MISSING_CAPTION: 1, captions_lib.EMPTY_CAPTION: 1,
      captions_lib.NON_TEXT_CAPTION: 1, captions_lib.UNKNOWN_IMAGE_ID: 1,
      captions_lib.MISSING_IMAGE_ID: 1}
  summary = captions.describe_skipped()
  assert summary.startswith('captions.json: 3 captions of 2 images; skipped 5 records')
  assert '1 empty caption' in summary and '\n' not in summary


@pytest.mark.parametrize('content, problem', [
    ('{"images": [', 'is not valid JSON'),
    ('[]', 'a list is a captions results file'),
    ('{"images": []}', 'expected a COCO captions file'),
    ('{"images": {}, "annotations": []}', '"images" is a dict'),
    ('{"images": [{"file_name": "a.jpg"}], "annotations": []}', 'no integer "id"'),
])
def test_malformed_captions_files_are_refused_by_name(tmp_path, content, problem):
  path = tmp_path / 'bad_captions.json'
  path.write_text(content)
  with pytest.raises(ValueError, match='bad_captions.json') as error:
    captions_lib.load_captions(str(path))
  assert problem in str(error.value)


def test_trained_tokenizer_has_the_official_layout(trained):
  tokenizer, seconds = trained
  assert seconds < 10
  assert tokenizer.vocab_size == VOCAB_SIZE
  assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2)
  with open(tokenizer.path, 'rb') as f:
    assert tokenizer.sha256 == hashlib.sha256(f.read()).hexdigest()


def test_round_trip(trained, coco_mini_captions):
  tokenizer, _ = trained
  texts = coco_mini_captions.all_texts()
  for text in texts[:50] + ['  Two   ＤＯＧＳ  on a sofa. ']:
    ids = tokenizer.encode(text)
    assert ids[-1] == tokenizer.eos_id and tokenizer.eos_id not in ids[:-1]
    assert all(2 <= i < tokenizer.vocab_size for i in ids[:-1])
    assert tokenizer.decode(ids) == tokenizer.normalize(text)
  assert tokenizer.normalize('  Two   ＤＯＧＳ  on a sofa. ') == 'Two DOGS on a sofa.'
  assert tokenizer.encode_batch(texts[:3]) == [tokenizer.encode(t) for t in texts[:3]]


def test_decode_stops_at_the_first_eos_or_pad(trained):
  tokenizer, _ = trained
  dog, cat = tokenizer.encode('a dog')[:-1], tokenizer.encode('a cat')[:-1]
  assert tokenizer.decode(dog + [1] + cat) == 'a dog'
  assert tokenizer.decode(dog + [0, 0] + cat + [1]) == 'a dog'
  assert tokenizer.decode([1] + cat) == ''
  with pytest.raises(ValueError, match=f'id {VOCAB_SIZE} is not a piece'):
    tokenizer.decode(dog + [VOCAB_SIZE])


def test_the_same_captions_give_the_same_file(trained, coco_mini_captions, tmp_path):
  tokenizer, _ = trained
  again = tokenizer_lib.train_tokenizer(coco_mini_captions.all_texts(),
                                        str(tmp_path / 'again.model'), VOCAB_SIZE)
  assert again.sha256 == tokenizer.sha256
  assert tokenizer_lib.TextTokenizer.load(tokenizer.path).sha256 == tokenizer.sha256


def test_vocab_size_the_captions_cannot_fill_is_refused(coco_mini_captions, tmp_path):
  texts = coco_mini_captions.all_texts()
  with pytest.raises(ValueError, match=r'too large .* the largest that works is \d+'):
    tokenizer_lib.train_tokenizer(texts, str(tmp_path / 'big.model'), 5000)
  with pytest.raises(ValueError, match=r'too small .* at least \d+'):
    tokenizer_lib.train_tokenizer(texts, str(tmp_path / 'small.model'), 10)
  with pytest.raises(ValueError, match='4 .. 32000'):
    tokenizer_lib.train_tokenizer(texts, str(tmp_path / 'huge.model'), 32001)
  assert not list(tmp_path.iterdir())  # nothing written


def test_files_that_are_not_models_are_refused_by_name(tmp_path):
  not_a_model = tmp_path / 'captions.model'
  not_a_model.write_text('{"images": []}')
  with pytest.raises(ValueError, match='captions.model is not a SentencePiece model'):
    tokenizer_lib.TextTokenizer(str(not_a_model))
  with pytest.raises(ValueError, match='missing.model: no such file'):
    tokenizer_lib.TextTokenizer.load(str(tmp_path / 'missing.model'))


def test_models_with_other_special_ids_are_refused(tmp_path):
  import sentencepiece as spm
  path = tmp_path / 'bos.model'
  with open(path, 'wb') as f:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(['a dog', 'a cat'] * 20),
                                   model_writer=f, vocab_size=10, minloglevel=2)
  with pytest.raises(ValueError, match='bos.model: its pad / EOS ids are -1 / 2'):
    tokenizer_lib.TextTokenizer(str(path))


def test_cli_writes_the_model(tmp_path, trained):
  tokenizer, _ = trained
  output = tmp_path / 'out' / 'tokenizer.model'
  run = subprocess.run([sys.executable, '-m', 'pix2seq_jax.data.train_tokenizer',
                        '--captions', _train_captions_path(), '--output', str(output),
                        '--vocab_size', str(VOCAB_SIZE)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert tokenizer_lib.TextTokenizer(str(output)).sha256 == tokenizer.sha256
  assert '400 captions of 80 images' in run.stdout
  assert f'vocab_size={VOCAB_SIZE}' in run.stdout and tokenizer.sha256 in run.stdout
