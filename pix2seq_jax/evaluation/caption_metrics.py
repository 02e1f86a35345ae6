"""Caption metrics with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr.

  python -m pix2seq_jax.evaluation.caption_metrics --annotations CAPTIONS.json \
      --results RESULTS.json [--output metrics.json]

prints the seven numbers of METRIC_KEYS and writes them as JSON. The annotations are a
COCO captions file ({"images", "annotations": [{"image_id", "caption"}]}), the results a
COCO captions results file ([{"image_id", "caption"}], one per image).

The numbers are those of pycocoevalcap's `COCOEvalCap` with
`params['image_id'] = cocoRes.getImgIds()`: only the images that have a predicted caption
are scored, in the annotations file's image order; both sides go through Stanford's PTB
tokenizer (lower-cased, punctuation removed), then the BLEU (closest reference length),
METEOR 1.5, ROUGE-L and CIDEr-D scorers. Two differences, where COCOEvalCap would score
wrong captions or stop: characters that Java reads as line breaks (\\r, \\v, \\f, U+0085,
U+2028, U+2029) become spaces, since the tokenizer works line by line; malformed input
is refused with a ValueError naming the file and the record.

SPICE is left out: it needs Stanford CoreNLP's models, which pycocoevalcap downloads on
first use. The PTB tokenizer and METEOR run in Java: `java` must be on PATH (a Java 8+
runtime; on Debian `apt-get install default-jre-headless`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

METRIC_KEYS = ('BLEU_1', 'BLEU_2', 'BLEU_3', 'BLEU_4', 'METEOR', 'ROUGE_L', 'CIDEr')

_PTB_JAR = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)),
                        ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
# What Java's line reader ends a line at, besides \n (the PTB tokenizer keeps lines).
_LINE_BREAKS = str.maketrans({c: ' ' for c in '\r\v\f\x85\u2028\u2029'})


def require_java() -> str:
  """The `java` executable on PATH; RuntimeError with the fix when there is none."""
  java = shutil.which('java')
  if java is None:
    raise RuntimeError('Caption metrics run Java (the PTB tokenizer and METEOR), and `java` '
                       'is not on PATH: install a Java runtime (Java 8 or later; on Debian '
                       '`apt-get install default-jre-headless`).')
  return java


def score_captions(references: Mapping[int, Sequence[str]],
                   predictions: Mapping[int, str]) -> dict[str, float]:
  """The metrics of METRIC_KEYS of one predicted caption per image against the image's
  reference captions, over the images of `predictions`, as COCOEvalCap computes them.

  references: {image id: its reference captions}; its order is the scoring order.
  predictions: {image id: the predicted caption}; every image must have references.
  """
  if not predictions:
    raise ValueError('No predicted captions to score.')
  for image_id, caption in predictions.items():
    if not isinstance(caption, str):
      raise ValueError(f'The prediction of image {image_id} is a {type(caption).__name__}, '
                       'not text.')
    refs = references.get(image_id)
    if not refs:
      raise ValueError(f'Image {image_id} has a predicted caption but no reference '
                       'captions.')
    if not all(isinstance(ref, str) for ref in refs):
      raise ValueError(f'A reference caption of image {image_id} is not text: {refs!r:.200}')
  image_ids = [image_id for image_id in references if image_id in predictions]
  java = require_java()
  gts = _ptb_tokenize(java, {i: list(references[i]) for i in image_ids})
  res = _ptb_tokenize(java, {i: [predictions[i]] for i in image_ids})
  return _score_tokenized(gts, res)


def score_files(annotations_path: str, results_path: str) -> dict[str, float]:
  """`score_captions` of a COCO captions results file against a COCO captions file, on the
  images of the results; malformed files raise ValueError naming the file."""
  references = _read_references(annotations_path)
  predictions = _read_results(results_path)
  for image_id in predictions:
    if image_id not in references:
      raise ValueError(f'{results_path}: image id {image_id} is not an image of '
                       f'{annotations_path}: score results against the annotations of '
                       'their own split.')
    if not references[image_id]:
      raise ValueError(f'{annotations_path}: image {image_id} has no captions to score '
                       f'the prediction of {results_path} against.')
  return score_captions(references, predictions)


def _score_tokenized(gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
  """COCOEvalCap's scorers on tokenized captions."""
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  metrics = {f'BLEU_{n + 1}': float(score) for n, score in enumerate(bleu)}
  metrics['METEOR'] = _meteor(gts, res)
  metrics['ROUGE_L'] = float(Rouge().compute_score(gts, res)[0])
  metrics['CIDEr'] = float(Cider().compute_score(gts, res)[0])
  return {key: metrics[key] for key in METRIC_KEYS}


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
  """METEOR 1.5 through pycocoevalcap's Java process, which is ended before returning."""
  meteor = Meteor()
  process = meteor.meteor_p
  try:
    return float(meteor.compute_score(gts, res)[0])
  except ValueError:  # an empty line: the process ended early
    process.kill()
    error = process.stderr.read().decode(errors='replace').strip()
    raise RuntimeError(f'METEOR\'s Java process stopped: {error[-1000:]}') from None
  finally:
    if meteor.lock.locked():  # compute_score keeps it when it fails; Meteor.__del__ takes it
      meteor.lock.release()
    process.stdin.close()
    process.kill()
    process.wait()
    process.stdout.close()
    process.stderr.close()


def _ptb_tokenize(java: str, captions: dict[int, list[str]]) -> dict[int, list[str]]:
  """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, one line per caption,
  lower-cased, its punctuation tokens dropped), run from a temporary folder and checked."""
  image_ids = [image_id for image_id, texts in captions.items() for _ in texts]
  lines = [text.replace('\n', ' ').translate(_LINE_BREAKS)
           for texts in captions.values() for text in texts]
  with tempfile.TemporaryDirectory(prefix='ptb-') as folder:
    path = os.path.join(folder, 'captions.txt')
    with open(path, 'wb') as f:
      f.write('\n'.join(lines).encode())
    run = subprocess.run([java, '-cp', _PTB_JAR, 'edu.stanford.nlp.process.PTBTokenizer',
                          '-preserveLines', '-lowerCase', path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
  tokenized = run.stdout.decode().split('\n')
  if run.returncode != 0 or len(tokenized) != len(lines):
    raise RuntimeError(f'The PTB tokenizer (Java) failed: exit status {run.returncode}, '
                       f'{len(tokenized)} lines for {len(lines)} captions: '
                       f'{run.stderr.decode(errors="replace").strip()[-1000:]}')
  out: dict[int, list[str]] = {}
  for image_id, line in zip(image_ids, tokenized):
    words = [w for w in line.rstrip().split(' ') if w not in ptbtokenizer.PUNCTUATIONS]
    out.setdefault(image_id, []).append(' '.join(words))
  return out


def _read_json(path: str, what: str) -> object:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise ValueError(f'{path}: no such {what} file.') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is not valid JSON ({e}).') from None


def _read_references(path: str) -> dict[int, list[str]]:
  """{image id: its captions in file order} for every image of a COCO captions file."""
  content = _read_json(path, 'captions annotations')
  if not (isinstance(content, dict) and isinstance(content.get('images'), list)
          and isinstance(content.get('annotations'), list)):
    raise ValueError(f'{path}: expected a COCO captions file, an object with "images" and '
                     '"annotations" lists.')
  references: dict[int, list[str]] = {}
  for index, image in enumerate(content['images']):
    if not isinstance(image, dict) or not _is_id(image.get('id')):
      raise ValueError(f'{path}: images[{index}] has no integer "id": {image!r:.200}')
    references[image['id']] = []
  for index, record in enumerate(content['annotations']):
    if not isinstance(record, dict) or not _is_id(record.get('image_id')):
      raise ValueError(f'{path}: annotations[{index}] has no integer "image_id": '
                       f'{record!r:.200}')
    if record['image_id'] not in references:
      continue  # not an image of the file, never scored (as COCOEvalCap)
    if not isinstance(record.get('caption'), str):
      raise ValueError(f'{path}: annotations[{index}] has no text "caption": '
                       f'{record!r:.200}')
    references[record['image_id']].append(record['caption'])
  return references


def _read_results(path: str) -> dict[int, str]:
  """{image id: caption} of a COCO captions results file, in file order."""
  content = _read_json(path, 'captions results')
  if not isinstance(content, list):
    hint = (' (this looks like an annotations file)'
            if isinstance(content, dict) and 'annotations' in content else '')
    raise ValueError(f'{path}: expected a COCO captions results file, a list of '
                     f'{{"image_id", "caption"}}, got a {type(content).__name__}{hint}.')
  if not content:
    raise ValueError(f'{path}: no captions to score (an empty list).')
  predictions: dict[int, str] = {}
  for index, record in enumerate(content):
    if (not isinstance(record, dict) or not _is_id(record.get('image_id'))
        or not isinstance(record.get('caption'), str)):
      raise ValueError(f'{path}: record {index} is not {{"image_id": int, "caption": str}}: '
                       f'{record!r:.200}')
    if record['image_id'] in predictions:
      raise ValueError(f'{path}: image {record["image_id"]} has more than one caption '
                       f'(record {index}): keep one prediction per image.')
    predictions[record['image_id']] = record['caption']
  return predictions


def _is_id(value: object) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--annotations', required=True,
                      help='COCO captions JSON ({"images", "annotations"}): the references')
  parser.add_argument('--results', required=True,
                      help='COCO captions results JSON ([{"image_id", "caption"}])')
  parser.add_argument('--output', help='where to write the metrics as JSON')
  args = parser.parse_args(argv)
  try:
    metrics = score_files(args.annotations, args.results)
  except (ValueError, RuntimeError) as e:
    parser.exit(1, f'{parser.prog}: error: {e}\n')
  for key in METRIC_KEYS:
    print(f'{key:>7} {metrics[key]:.6f}')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(metrics, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
