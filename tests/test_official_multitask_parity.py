"""Converted official multi-task (Pix2Seq-v2) checkpoints compute the official model's
function, for every task prompt, and are multi-task workdirs the Predictor reads.

The fixture tests/fixtures/official_multitask (README there) was made by the official code
(benchmarks/official_multitask_oracle.py): the official `configs/config_multi_task.py`
model (35000-token vocabulary, 512 learned decoder positions, ViT) at tiny sizes with
random weights, saved as the official trainer saves it; its teacher-forced logits for one
sequence per task prompt (10 detection, 11 segmentation, 12 keypoints, 13 captioning);
each task's greedy decoding by the official task's own `infer` and its official
post-processing (boxes, masks, keypoints, caption pieces). Full-size ViT-B:
benchmarks/official_multitask_parity.py (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pycocotools import mask as coco_mask

from pix2seq_jax.config import multitask, workdir_config
from pix2seq_jax.data import captions, coco_json
from pix2seq_jax.inference import decoding, detections
from pix2seq_jax.inference.predictor import Predictor
from pix2seq_jax.models import build
from pix2seq_jax.official import convert as convert_official
from pix2seq_jax.official import names as official_names
from pix2seq_jax.official import tasks as official_tasks
from pix2seq_jax.tasks import captioning, detection, keypoints, segmentation
from pix2seq_jax.tasks import tokenizer as tokenizer_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import files as workdir_lib
from pix2seq_jax.workdir import tokenizer_file
from tests import tiny

FIXTURE = os.path.join(tiny.ROOT, 'tests', 'fixtures', 'official_multitask')
PROMPTS = (10, 11, 12, 13)  # detection, segmentation, keypoints, captioning
TEXT_PIECES = vocab_lib.MAX_TEXT_PIECES  # the official SentencePiece model's (c4_en_32k)
TASKS = ('object_detection', 'instance_segmentation', 'keypoint_detection', 'captioning')
# Every category id the class tokens hold: a random model predicts any of them, and the
# official post-processing keeps every class > 0.
EVERY_ID = tuple(range(1, 900))
pytestmark = [pytest.mark.xdist_group('official'), pytest.mark.xla_default]


@pytest.fixture(scope='module')
def converted(tmp_path_factory) -> tuple[str, dict]:
  out = str(tmp_path_factory.mktemp('official_multitask') / 'workdir')
  return out, convert_official.convert(FIXTURE, out)


@pytest.fixture(scope='module')
def predictor(converted) -> Predictor:
  return Predictor(converted[0], batch_size=4)


@pytest.fixture(scope='module')
def oracle() -> dict:
  found = dict(np.load(os.path.join(FIXTURE, 'oracle.npz')))
  found['images'] = found['pixels'].astype(np.float32) / np.float32(255)
  with open(os.path.join(FIXTURE, 'official.json')) as f:
    found['official'] = json.load(f)
  return found


def test_the_converter_reads_the_multitask_folder(converted):
  workdir, info = converted
  assert info == {'step': 1234, 'variant': 'vit_multitask_nano', 'image_size': 32,
                  'arrays': 63, 'tasks': list(TASKS[:3])}  # captioning: no --tokenizer
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['model']['vocabulary'] == 'official_multitask'
  assert config['model']['max_seq_len'] == 512 and config['task'] == 'object_detection'
  assert config['decode']['mode'] == 'official' and config['decode']['top_p'] == 0.4
  with open(os.path.join(workdir, 'categories.json')) as f:
    assert len(json.load(f)) == 80  # COCO's, as for detection


def test_the_workdir_holds_each_official_task_with_its_settings(converted):
  """config.json's tasks as config.tasks entries: their weights, and the settings our
  data fields mirror (the fixture's: 2 test objects of 16 points for segmentation)."""
  workdir, _ = converted
  config = workdir_config.load(workdir)  # validated
  assert multitask.task_names(config) == TASKS[:3] and config.task == 'object_detection'
  assert config.model.max_seq_len == 512
  assert all(multitask.weight(config, name) == 1.0 for name in TASKS[:3])
  detection_data = multitask.task_config(config, 'object_detection').data
  assert (detection_data.max_instances, detection_data.eos_weight) == (10, 0.1)
  segmentation_data = multitask.task_config(config, 'instance_segmentation').data
  assert (segmentation_data.max_instances, segmentation_data.max_points,
          segmentation_data.eos_weight, segmentation_data.scale_max,
          segmentation_data.random_flip) == (2, 16, 1.0, 1.0, True)
  keypoint_data = multitask.task_config(config, 'keypoint_detection').data
  assert (keypoint_data.max_instances, keypoint_data.max_points, keypoint_data.eos_weight,
          keypoint_data.invisible_weight, keypoint_data.crop_pad,
          keypoint_data.random_flip) == (1, 17, 0.0, 0.1, 0.5, False)
  for name in TASKS[1:3]:
    data = multitask.task_config(config, name).data
    assert not data.noise_objects and not data.corrupt_classes
  with pytest.raises(ValueError, match=r"task='captioning': .* was trained for "
                                       r"\['object_detection', 'instance_segmentation', "
                                       r"'keypoint_detection'\]"):
    Predictor(workdir, task='captioning')


@pytest.fixture(scope='module')
def captioned(tmp_path_factory) -> tuple[str, str]:
  """(workdir, tokenizer): the fixture converted with --tokenizer, a 300-piece
  SentencePiece model trained on coco_mini's captions (the official c4_en_32k_spm.model
  is not in the repository)."""
  texts = captions.load_captions(tiny.shared_path(
      'coco_mini', 'annotations', 'captions_train2017.json')).all_texts()
  folder = tmp_path_factory.mktemp('official_multitask_captioning')
  tokenizer = str(folder / 'tokenizer.model')
  tokenizer_lib.train_tokenizer(texts, tokenizer, 300)
  workdir = str(folder / 'workdir')
  assert convert_official.convert(FIXTURE, workdir, tokenizer=tokenizer)['tasks'] == list(TASKS)
  return workdir, tokenizer


def test_each_task_of_the_converted_workdir_predicts(captioned, oracle):
  workdir, tokenizer = captioned
  config = workdir_config.load(workdir)
  assert multitask.task_names(config) == TASKS
  caption_data = multitask.task_config(config, 'captioning').data
  assert (caption_data.max_text_len, caption_data.captions_per_image,
          caption_data.eos_weight, caption_data.text_dropout) == (128, 5, 0.1, 0.5)
  assert caption_data.tokenizer == os.path.join(workdir, workdir_lib.TOKENIZER)
  assert tokenizer_file.sha256_of(caption_data.tokenizer) == tokenizer_file.sha256_of(tokenizer)
  # Each task's Predictor; keypoints (from a box) and captioning decode an image. The
  # detection and segmentation decodings of this model are the greedy parity above, and
  # their Predictors decode on a multi-task workdir in tests/test_predict_tasks.py (here
  # they would add ~10 s of compilation and segmentation's 16 sampled rows).
  image = [oracle['pixels'][0]]  # uint8 [32, 32, 3]
  box = [[{'bbox': [4.0, 6.0, 20.0, 16.0], 'category_id': keypoints.PERSON_CLASS}]]
  detector = Predictor(workdir, batch_size=1)  # object_detection, its config.task
  assert detector.config.task == 'object_detection' and detector.task is None
  assert detector.config.decode.mode == 'official' and detector.step == 1234
  segmenter = Predictor(workdir, task='instance_segmentation', batch_size=1)
  assert segmenter.task.max_points == 16 and segmenter.config.data.max_instances == 2
  (person,), = Predictor(workdir, task='keypoint_detection', batch_size=1)(image, boxes=box)
  assert person['category_id'] == keypoints.PERSON_CLASS
  assert len(person['keypoints']) == 3 * keypoints.NUM_KEYPOINTS
  captioner = Predictor(workdir, task='captioning', batch_size=1)
  assert captioner.tokenizer.vocab_size == 300 and captioner.task.length == 128
  (written,), = captioner(image)
  assert isinstance(written['caption'], str) and 0.0 <= written['score'] <= 1.0


def test_the_converter_refuses_a_tokenizer_without_captioning(tmp_path):
  """--tokenizer is checked before the checkpoint is read: a detection checkpoint has no
  captioning, and a file that is not a SentencePiece model is named."""
  detection = os.path.join(tiny.ROOT, 'tests', 'fixtures', 'official_vit_nano')
  bad = tmp_path / 'bad.model'
  bad.write_bytes(b'not a model')
  with pytest.raises(convert_official.ConversionError, match='has no captioning task'):
    convert_official.convert(detection, str(tmp_path / 'a'), tokenizer=str(bad))
  with pytest.raises(convert_official.ConversionError, match=r'--tokenizer: .*bad\.model'):
    convert_official.convert(FIXTURE, str(tmp_path / 'b'), tokenizer=str(bad))
  assert not os.path.exists(tmp_path / 'a') and not os.path.exists(tmp_path / 'b')


def test_logits_equal_the_official_model_for_each_task_prompt(predictor, oracle):
  ours = predictor.logits(oracle['images'], oracle['seq'])  # [4, T, 35000]
  assert ours.shape == oracle['seq'].shape + (vocab_lib.OFFICIAL_MULTITASK_SIZE,)
  assert tuple(oracle['seq'][:, 0]) == PROMPTS
  for row in range(len(PROMPTS)):
    scale = oracle['logit_absmax'][row].max()
    error = np.abs(ours[row][:, oracle['logit_columns']] - oracle['logits'][row]).max()
    assert error <= 1e-4 * scale, (row, error / scale)
    np.testing.assert_allclose(np.abs(ours[row]).max(-1), oracle['logit_absmax'][row],
                               rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(ours[row].argmax(-1), oracle['logit_argmax'][row])


@pytest.fixture(scope='module')
def greedy(predictor, oracle) -> dict:
  """Each task's greedy decoding (temperature 0, decode.mode 'official') of the fixture's
  images: name -> (tokens, the task's outputs), one jitted program for all four."""
  vocab = vocab_lib.for_categories('official_multitask', EVERY_ID, 1000)
  graphdef = build.model_graphdef(predictor.config, vocab)
  points = oracle['seg_tokens'].shape[1] // 2
  samples = oracle['seg_tokens'].shape[0] // oracle['seg_label'].size
  tasks = {
      'det': (detection.DetectionTask(vocab, 'official'), oracle['det_tokens'].shape[1], None),
      'seg': (segmentation.SegmentationTask(vocab, max_points=points, num_samples=samples),
              2 * points, (oracle['seg_box'], oracle['seg_label'])),
      'kp': (keypoints.KeypointTask(vocab), keypoints.NUM_KEYPOINTS * 2,
             (oracle['kp_box'], oracle['kp_label'])),
      # The official captioning samples every token; ours stops a row at its text EOS,
      # which this fixture's greedy rows never hold (test_greedy_decoding_...).
      'cap': (captioning.CaptioningTask(vocab, length=oracle['cap_tokens'].shape[1]),
              oracle['cap_tokens'].shape[1], None),
  }

  @jax.jit
  def run(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats)
    out = {}
    for name, (task, length, boxes) in tasks.items():
      prompt = None if boxes is None else task.prompts(jnp.asarray(boxes[0]),
                                                       jnp.asarray(boxes[1]))
      state = decoding.decode(model, images, task, length=length, temperature=0.0,
                              mode='official', prompt=prompt)
      out[name] = state.tokens, task.outputs(state.tokens, state.token_probs,
                                             state.task_state)
    return out

  return jax.device_get(run(predictor.params, predictor.batch_stats, oracle['images']))


def test_greedy_decoding_equals_the_official_token_for_token(greedy, oracle):
  np.testing.assert_array_equal(greedy['det'][0], oracle['det_tokens'])
  # Keypoints: where greedy drew the invisible token 41 (the model reads it next), the
  # output holds the most likely other token (the official eval's suppression,
  # `kp_intended`). The official code's redraw draws among many tokens there instead
  # (its `top_logits` reads [n, 34, V] logits as [n, V]; official_multitask_oracle.py):
  # equal everywhere else.
  tokens = greedy['kp'][1].tokens
  redrawn = oracle['kp_drawn'] == vocab_lib.OFFICIAL_INVISIBLE
  assert redrawn.any()
  np.testing.assert_array_equal(tokens, oracle['kp_intended'])
  np.testing.assert_array_equal(tokens[~redrawn], oracle['kp_tokens'][~redrawn])
  assert (oracle['cap_tokens'] != vocab_lib.OFFICIAL_TEXT_OFFSET
          + vocab_lib.TEXT_EOS_PIECE).all()  # no stop: the official rows are whole
  np.testing.assert_array_equal(greedy['cap'][0], oracle['cap_tokens'])
  # Segmentation: a row ends at its first padding token (the parser reads nothing after
  # it, the official samples on): equal up to there, padding after.
  ours, official = greedy['seg'][0], oracle['seg_tokens']
  for row in range(len(official)):
    ends = np.flatnonzero(official[row] == vocab_lib.PADDING)
    stop = ends[0] + 1 if ends.size else official.shape[1]
    np.testing.assert_array_equal(ours[row, :stop], official[row, :stop])
    assert (ours[row, stop:] == vocab_lib.PADDING).all()


def test_detection_outputs_equal_the_official_post_processing(greedy, predictor, oracle):
  tokens, (out_tokens, out_scores) = greedy['det']
  every_id = vocab_lib.for_categories('official_multitask', EVERY_ID, 1000)
  categories = coco_json.CategoryMap(EVERY_ID, tuple(str(i) for i in EVERY_ID))
  size = predictor.size
  for row, (height, width) in enumerate(oracle['orig_size']):
    found = detections.detections_in_pixels(
        out_tokens[row], out_scores[row], every_id, categories, size,
        size / max(height, width), (height, width), mode='official', decimals=None)
    known = oracle['det_classes'][row] > 0
    assert known.sum() == len(known)
    assert [d['category_id'] for d in found] == oracle['det_classes'][row].tolist()
    np.testing.assert_allclose([d['score'] for d in found], oracle['det_scores'][row],
                               rtol=1e-4)
    ymin, xmin, ymax, xmax = np.moveaxis(oracle['det_boxes'][row], -1, 0)
    expected = np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)
    np.testing.assert_allclose([d['bbox'] for d in found], expected, rtol=1e-5, atol=1e-3)


def test_segmentation_masks_equal_the_official_post_processing(greedy, oracle):
  points = greedy['seg'][1]  # [images * objects * samples, 2P]
  label = oracle['seg_label']
  images, objects = label.shape
  samples = len(points) // label.size
  per_image = objects * samples
  sample_rles = oracle['official']['sample_rles']
  ensembled = oracle['official']['ensembled_rles']
  for image in range(images):
    sizes = (oracle['images'].shape[1:3], oracle['unpadded_size'][image],
             oracle['orig_size'][image])
    rows = points[image * per_image:(image + 1) * per_image]
    for k, row in enumerate(rows):
      rle, _ = segmentation.points_to_rle(row, *sizes)
      assert rle['counts'].decode() == sample_rles[image * per_image + k]['counts']
    masks = segmentation.instance_masks(rows, *sizes, num_samples=samples)
    for j, mask in enumerate(masks):
      want = ensembled[image * objects + j]
      np.testing.assert_array_equal(
          mask, coco_mask.decode({'size': want['size'], 'counts': want['counts'].encode()}))
  assert any(area > 0 for area in oracle['official']['ensembled_areas'])


def test_keypoints_equal_the_official_post_processing(greedy, predictor, oracle):
  """The official points and scores of the official tokens (their redrawn ones included:
  see above), from our parser and from our model's teacher-forced logits of what greedy
  drew (41 masked, as the official scoring); ours equal them but at redrawn points."""
  canvas = oracle['images'].shape[1:3]
  sizes = canvas, oracle['unpadded_size'], oracle['orig_size'], oracle['crop_offset']
  boxes, labels = oracle['kp_box'][:, 0], oracle['kp_label'][:, 0]
  want = oracle['kp_coco'].reshape(-1, keypoints.NUM_KEYPOINTS, 3)
  np.testing.assert_array_equal(
      keypoints.decode_keypoints(oracle['kp_tokens'], boxes, *sizes), want)
  ours = keypoints.decode_keypoints(greedy['kp'][1].tokens, boxes, *sizes)
  redrawn = (oracle['kp_drawn'] == vocab_lib.OFFICIAL_INVISIBLE).reshape(
      -1, keypoints.NUM_KEYPOINTS, 2).any(-1)
  np.testing.assert_array_equal(ours[~redrawn], want[~redrawn])

  vocab = vocab_lib.for_categories('official_multitask', EVERY_ID, 1000)
  prompts = np.asarray(keypoints.KeypointTask(vocab).prompts(oracle['kp_box'],
                                                             oracle['kp_label']))
  read = np.concatenate([prompts, oracle['kp_drawn'][:, :-1]], axis=1)  # [4, 39]
  logits = predictor.logits(oracle['images'], read)[:, prompts.shape[1] - 1:].copy()  # [4, 34, V]
  logits[..., vocab_lib.OFFICIAL_INVISIBLE] -= 1e9
  scores = keypoints.keypoint_scores(oracle['kp_tokens'], logits,
                                     oracle['kp_box_score'][:, 0], labels)
  np.testing.assert_allclose(scores, oracle['kp_scores'], rtol=1e-4)
  assert (scores[labels != keypoints.PERSON_CLASS] == 0).all() and (scores > 0).sum() == 3
  # Our decoding's own scores: the same rule on the tokens it emitted.
  ours_scores = keypoints.combine_scores(greedy['kp'][1].points_score,
                                         oracle['kp_box_score'][:, 0], labels)
  np.testing.assert_allclose(
      ours_scores, keypoints.keypoint_scores(greedy['kp'][1].tokens, logits,
                                             oracle['kp_box_score'][:, 0], labels),
      rtol=1e-4)


def test_caption_pieces_equal_the_official_post_processing(greedy, oracle):
  pieces = captioning.official_pieces(greedy['cap'][0], vocab_lib.OFFICIAL_TEXT_OFFSET,
                                      TEXT_PIECES)
  np.testing.assert_array_equal(pieces, oracle['cap_pieces'])
  assert (oracle['cap_pieces'] > 0).any()


class _Reader:
  """tf.train checkpoint reader over a dict: name -> array."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def get_variable_to_shape_map(self):
    return {k: list(np.shape(v)) for k, v in self.arrays.items()}

  def get_tensor(self, name):
    return self.arrays[name]


def _fixture_arrays() -> tuple[dict, object, vocab_lib.Vocabulary]:
  import tensorflow as tf
  prefix, config_path = convert_official.locate(FIXTURE)
  reader = tf.train.load_checkpoint(prefix)
  arrays = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
  with open(config_path) as f:
    config = convert_official.project_config(json.load(f))
  return arrays, config, vocab_lib.for_categories('official_multitask', range(1, 91), 1000)


def test_the_converter_lists_unmapped_missing_and_misshaped_multitask_names():
  arrays, config, vocab = _fixture_arrays()
  suffix = official_names.SUFFIX
  del arrays['model/decoder/ar_decoder.Sseq_pos_embedding' + suffix]
  arrays['model/decoder/ar_decoder.Stoken_embedding' + suffix] = np.zeros((3000, 4),
                                                                          np.float32)
  arrays['model/decoder/ar_decoder.Sinp_token_embedding' + suffix] = np.zeros((35000, 4),
                                                                              np.float32)
  with pytest.raises(convert_official.ConversionError) as error:
    convert_official.convert_arrays(_Reader(arrays), config, vocab)
  text = str(error.value)
  assert '1 unmapped' in text and 'ar_decoder.Sinp_token_embedding' in text
  assert ('1 missing' in text and 'params/decoder/positions <- '
          'model/decoder/ar_decoder.Sseq_pos_embedding' in text)
  assert '1 mis-shaped' in text and 'official [3000, 4] (same) vs ours [35000, 4]' in text


def test_the_converter_refuses_other_vocabularies_and_decoder_positions():
  with open(os.path.join(FIXTURE, 'config.json')) as f:
    official = json.load(f)
  assert convert_official.project_config(official).model.vocabulary == 'official_multitask'
  for key, value, match in (('vocab_size', 32000, r'vocab_size=32000.*\[3000, 35000\]'),
                            ('text_vocab_shift', 2000, 'text_vocab_shift=2000'),
                            ('pos_encoding_dec', 'sin_cos', "pos_encoding_dec='sin_cos'")):
    changed = json.loads(json.dumps(official))
    changed['model'][key] = value
    with pytest.raises(convert_official.ConversionError, match=match):
      convert_official.project_config(changed)


def test_official_task_settings_we_do_not_read_are_named():
  with open(os.path.join(FIXTURE, 'config.json')) as f:
    official = json.load(f)
  assert official_tasks.differing_settings(official) == []
  official['tasks'][2]['top_p'] = 0.3
  official['tasks'].append({'name': 'panoptic_segmentation'})
  (line,) = official_tasks.differing_settings(official)
  assert line.startswith('keypoint_detection.top_p=0.3 in config.json') and '0.1' in line
  found, notes = official_tasks.entries(official, tokenizer=None)
  assert tuple(found) == TASKS[:3]
  assert [n.split(':')[0] for n in notes] == ['captioning', 'panoptic_segmentation']


def test_misplaced_learned_positions_break_parity(predictor, oracle):
  """The planted error: the learned decoder positions shifted by one (a wrong mapping of
  `seq_pos_embedding`) miss the official logits by far more than the tolerance."""
  converted = predictor.params
  predictor.params = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.roll(x, 1, axis=0) if 'positions' in jax.tree_util.keystr(path)
      else x, converted)
  try:
    ours = predictor.logits(oracle['images'], oracle['seq'])
  finally:
    predictor.params = converted
  scale = oracle['logit_absmax'].max()
  error = np.abs(ours[..., oracle['logit_columns']] - oracle['logits']).max()
  assert error > 100 * 1e-4 * scale
