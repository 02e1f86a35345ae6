"""Caption metrics: the CLI reproduces the COCO caption evaluation's published example,
captions swapped between images score lower, malformed files are refused by name, and
METEOR's Java process is ended whatever happens."""

import json
import subprocess
import sys

import pytest

from pix2seq_jax.evaluation import caption_metrics
from tests.tiny import ROOT, shared_path

# shared/data/README.md, "coco_caption_eval": the published scores, at full precision
# where the README gives it (pycocoevalcap 1.2's COCOEvalCap), else to 3 decimals.
FULL_PRECISION = {'BLEU_4': 0.1908290437674253, 'METEOR': 0.19525467177780284,
                  'ROUGE_L': 0.39625269357570847, 'CIDEr': 0.5997905185184199}
THREE_DECIMALS = {'BLEU_1': '0.579', 'BLEU_2': '0.404', 'BLEU_3': '0.279'}


def _annotations_path():
  return shared_path('coco_caption_eval', 'captions_val2014_1000.json')


def _results_path():
  return shared_path('coco_caption_eval', 'captions_val2014_fakecap_results.json')


def _no_meteor(monkeypatch):
  """METEOR's Java process takes seconds to load its tables: left out where only the other
  metrics are looked at."""
  monkeypatch.setattr(caption_metrics, '_meteor', lambda gts, res: 0.0)


def _write(tmp_path, name, content):
  path = tmp_path / name
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


def test_cli_reproduces_the_published_example(tmp_path):
  output = tmp_path / 'metrics.json'
  run = subprocess.run([sys.executable, '-m', 'pix2seq_jax.evaluation.caption_metrics',
                        '--annotations', _annotations_path(), '--results', _results_path(),
                        '--output', str(output)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  metrics = json.loads(output.read_text())
  assert tuple(metrics) == caption_metrics.METRIC_KEYS
  for key, expected in FULL_PRECISION.items():
    assert metrics[key] == pytest.approx(expected, rel=1e-12, abs=0), key
  assert {k: f'{metrics[k]:.3f}' for k in THREE_DECIMALS} == THREE_DECIMALS
  for key in caption_metrics.METRIC_KEYS:  # printed too
    assert f'{key:>7} {metrics[key]:.6f}' in run.stdout


def test_captions_swapped_between_images_score_lower(monkeypatch):
  _no_meteor(monkeypatch)
  references = caption_metrics._read_references(_annotations_path())
  predictions = caption_metrics._read_results(_results_path())
  image_ids = list(predictions)[:100]
  right = {i: predictions[i] for i in image_ids}
  swapped = dict(zip(image_ids, [right[i] for i in image_ids[1:] + image_ids[:1]]))
  scores = caption_metrics.score_captions(references, right)
  scores_swapped = caption_metrics.score_captions(references, swapped)
  assert tuple(scores) == caption_metrics.METRIC_KEYS
  assert scores_swapped['CIDEr'] < 0.5 * scores['CIDEr']
  for key in ('BLEU_4', 'ROUGE_L'):
    assert scores_swapped[key] < scores[key], key


def test_order_of_the_predictions_does_not_matter(monkeypatch):
  _no_meteor(monkeypatch)
  references = {1: ['A dog runs on the grass.', 'a brown dog running'],
                2: ['Two cats sleep on a sofa.', 'cats asleep on a couch']}
  predictions = {2: 'two cats on a sofa', 1: 'a dog on grass'}
  forward = caption_metrics.score_captions(references, predictions)
  backward = caption_metrics.score_captions(references, dict(reversed(predictions.items())))
  assert forward == backward
  assert forward['BLEU_1'] > 0.5


@pytest.mark.parametrize('results, problem', [
    ({'annotations': []}, 'looks like an annotations file'),
    ([], 'no captions to score'),
    ([{'image_id': 1}], 'is not {"image_id": int, "caption": str}'),
    ([{'caption': 'a dog'}], 'is not {"image_id": int, "caption": str}'),
    ([{'image_id': 1, 'caption': 7}], 'is not {"image_id": int, "caption": str}'),
    ([{'image_id': 1, 'caption': 'a'}, {'image_id': 1, 'caption': 'b'}],
     'image 1 has more than one caption'),
    ([{'image_id': 3, 'caption': 'a dog'}], 'image id 3 is not an image of'),
    ('[{"image_id": 1, "caption": ', 'is not valid JSON'),
])
def test_malformed_results_are_refused_by_file_name(tmp_path, results, problem):
  annotations = _write(tmp_path, 'captions.json', {
      'images': [{'id': 1}, {'id': 2}],
      'annotations': [{'id': 1, 'image_id': 1, 'caption': 'a dog'}]})
  path = _write(tmp_path, 'results.json', results)
  with pytest.raises(ValueError, match='results.json') as error:
    caption_metrics.score_files(annotations, path)
  assert problem in str(error.value)


def test_malformed_annotations_are_refused_by_file_name(tmp_path):
  results = _write(tmp_path, 'results.json', [{'image_id': 2, 'caption': 'a cat'}])
  for content, problem in [
      ([{'image_id': 2, 'caption': 'a cat'}], 'expected a COCO captions file'),
      ({'images': [{'id': 2}], 'annotations': [{'image_id': 2}]}, 'no text "caption"'),
      ({'images': [{'id': 2}], 'annotations': []}, 'image 2 has no captions')]:
    annotations = _write(tmp_path, 'captions.json', content)
    with pytest.raises(ValueError, match='captions.json') as error:
      caption_metrics.score_files(annotations, results)
    assert problem in str(error.value)


def test_without_java_the_fix_is_named(monkeypatch, tmp_path):
  monkeypatch.setenv('PATH', str(tmp_path))
  with pytest.raises(RuntimeError, match='default-jre-headless'):
    caption_metrics.score_captions({1: ['a dog']}, {1: 'a dog'})


@pytest.mark.parametrize('fails', [False, True])
def test_meteor_process_is_ended(monkeypatch, fails):
  """Whether METEOR answers or its process dies, the process is ended and its lock free
  (pycocoevalcap's Meteor.__del__ takes it), without waiting for Java to load."""
  started = []

  class RecordedMeteor(caption_metrics.Meteor):

    def __init__(self):
      super().__init__()
      started.append(self)

    def compute_score(self, gts, res):
      self.lock.acquire()  # as Meteor.compute_score, which keeps it when reading fails
      if fails:
        raise ValueError('could not convert string to float')
      self.lock.release()
      return 0.25, [0.25]

  monkeypatch.setattr(caption_metrics, 'Meteor', RecordedMeteor)
  tokenized = {1: ['a dog']}
  if fails:
    with pytest.raises(RuntimeError, match='METEOR'):
      caption_metrics._meteor(tokenized, tokenized)
  else:
    assert caption_metrics._meteor(tokenized, tokenized) == 0.25
  (meteor,) = started
  assert meteor.meteor_p.poll() is not None
  assert not meteor.lock.locked()
