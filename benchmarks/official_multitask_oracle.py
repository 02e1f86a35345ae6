"""Oracle for Pix2Seq-v2 checkpoints: the official multi-task model (google-research/pix2seq,
`configs/config_multi_task.py`, all four tasks) with random weights, saved as the official
trainer saves it, with its logits and its greedy decoding and post-processing of each task.

Runs in the scratch environment of benchmarks/official_tasks_fixture.py (tensorflow-cpu,
tf-keras, ml-collections, einops, pycocotools; tensorflow_addons, tensorflow_text,
skimage and tensorflow_datasets stubbed) with an official checkout SRC; never imported by
the project:

  python benchmarks/official_multitask_oracle.py SRC OUT [--variant vit-b] [--size 32]
      [--set model.FIELD=VALUE ...] [--logit-columns] [--caption-tokens N] ...

What it writes into OUT:
  config.json, checkpoint, ckpt-1234.*   the model as the official trainer saves it:
      tf.train.Checkpoint(model, global_step, optimizer) with the run's ConfigDict as JSON
      (an optimizer that has not stepped yet, so no slots, unless --optimizer-slots);
  oracle.npz   pixels [4, S, S, 3] uint8 (images = pixels / 255, float32; each image's
      area below / right of its `unpadded` size is 77, about the official 0.3 padding);
      seq [4, T]: one teacher-forced sequence per task prompt (10, 11, 12, 13);
      logits [4, T, V] of `Model(images, seq, training=False)`, or with --logit-columns
      only the columns `logit_columns` plus `logit_absmax` and `logit_argmax` [4, T] over
      all V; then each task's greedy decoding (the official task's own `infer` with
      top_k=1, or `Model.infer` for --caption-tokens) and post-processing:
    det_*      ObjectDetectionTask.infer / postprocess_tpu: tokens [4, 5N], classes,
               scores [4, N], boxes [4, N, 4] in original pixels (ymin, xmin, ymax, xmax);
    seg_*      InstanceSegmentationTask.infer (ground-truth boxes, `use_gt_box_at_test`,
               samples adjacent) / postprocess_tpu: box, label, score [4, n, ...], tokens
               [4 n samples, 2 P], points_rescaled (y, x pixels);
    kp_*       KeypointDetectionTask.infer (invisible token suppressed, as its eval) /
               postprocess_tpu with a crop offset: tokens [4, 34] (`kp_drawn`: the same
               greedy `Model.infer` before the redraw of the invisible token,
               `kp_intended` with each 41 replaced by the most likely other token at its
               position: what the official redraw means, see below), points_rescaled,
               scores (person rows only), coco [4, 51] (insert_visibility(yx2xy(.)));
    cap_*      CaptioningTask.infer / postprocess_tpu / postprocess_cpu: tokens [4, L] and
               the pieces the official hands its SentencePiece detokenizer (`pieces`,
               pred - 3000 where not padding, clipped to [0, 31999]);
    orig_size, unpadded_size [4, 2], crop_offset [4, 2] (keypoints).
  official.json   the segmentation RLEs (`segment_to_mask_rle`, one per sample) and the
      ensembled masks (`ensemble_mask_np`) as COCO RLEs, and what was run.

Greedy: the official sampler draws from `top_logits(logits / temperature, k, p)`; with
top_k=1 only the most likely token is left (the keypoint eval's redraw of the invisible
token too), so each task's config gets top_k=1 (its other settings kept).

To make greedy decoding say something, the output head is set after the random
initialisation: the token embedding ~ N(0, --embedding-std) (the logits then follow the
hidden state, not the output bias) and the output bias raised on the coordinate tokens
(--coordinate-bias) and on padding, the separator and the invisible token
(--padding-bias, --separator-bias, --invisible-bias), so greedy
sequences hold boxes, polygon points, invisible keypoints and text pieces.
"""
import argparse
import copy
import importlib
import json
import os
import sys
import types

import official_env  # benchmarks/official_env.py, beside this script

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'

parser = argparse.ArgumentParser()
parser.add_argument('src')
parser.add_argument('out')
parser.add_argument('--variant', default='vit-b')
parser.add_argument('--size', type=int, default=32)
parser.add_argument('--seed', type=int, default=0)
parser.add_argument('--set', nargs='*', default=[], help='model.FIELD=JSON overrides')
parser.add_argument('--length', type=int, default=32, help='T of the teacher-forced rows')
parser.add_argument('--logit-columns', action='store_true',
                    help='store the logits of some columns only (small fixtures)')
parser.add_argument('--objects', type=int, default=10, help='detection: objects decoded')
parser.add_argument('--instances', type=int, default=2, help='segmentation: objects per image')
parser.add_argument('--points', type=int, default=16, help='segmentation: points per object')
parser.add_argument('--samples', type=int, default=8, help='segmentation: samples per object')
parser.add_argument('--caption-tokens', type=int, default=0,
                    help='0: CaptioningTask.infer (all max_seq_len - 1 tokens); else '
                         'Model.infer of that many tokens')
parser.add_argument('--embedding-std', type=float, default=1.0)
parser.add_argument('--position-std', type=float, default=3.0)
parser.add_argument('--coordinate-bias', type=float, default=2.5)
parser.add_argument('--padding-bias', type=float, default=6.5)
parser.add_argument('--separator-bias', type=float, default=5.5)
parser.add_argument('--invisible-bias', type=float, default=7.0)
parser.add_argument('--optimizer-slots', action='store_true')
args = parser.parse_args()
sys.path.insert(0, args.src)
official_env.stub_tensorflow_addons()
for name in ('skimage', 'skimage.segmentation', 'tensorflow_text'):  # unused on these paths
  sys.modules.setdefault(name, types.ModuleType(name))
sys.modules['skimage'].segmentation = sys.modules['skimage.segmentation']
sys.modules.setdefault('tensorflow_datasets', types.ModuleType('tensorflow_datasets'))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from pycocotools import mask as mask_lib  # noqa: E402

_official = {name: importlib.import_module(name) for name in (
    'utils', 'vocab', 'configs.config_multi_task', 'data.tokenizer', 'metrics.coco_metrics',
    'models.ar_model', 'tasks.task', 'tasks.object_detection', 'tasks.instance_segmentation',
    'tasks.keypoint_detection', 'tasks.captioning', 'tasks.task_utils')}
utils, vocab = _official['utils'], _official['vocab']
config_multi_task = _official['configs.config_multi_task']
coco_metrics = _official['metrics.coco_metrics']
ar_model = _official['models.ar_model']
task_lib = _official['tasks.task']
instance_segmentation = _official['tasks.instance_segmentation']
task_utils = _official['tasks.task_utils']
TEXT_PIECES = 32000  # the official c4_en_32k SentencePiece model's vocab_size


class StubTokenizer:
  """Stands in for the SentencePiece model: records the ids the task detokenizes."""

  seen = []

  def __init__(self, *unused_args, **unused_kwargs):
    pass

  vocab_size = TEXT_PIECES

  def ids_to_strings(self, ids, ids_len):
    StubTokenizer.seen.append(ids.numpy())
    return tf.constant([b''] * int(ids.shape[0]))


_official['data.tokenizer'].SPTokenizer = StubTokenizer
tf.get_logger().setLevel('ERROR')
tf.random.set_seed(args.seed)
rng = np.random.default_rng(args.seed)
SIZE, BATCH = args.size, 4
TASKS = ('object_detection', 'instance_segmentation', 'keypoint_detection', 'captioning')

config = config_multi_task.get_config(
    '+'.join(f'{t}@coco/2017_{t}' for t in TASKS) + f',{args.variant}')
config.model.image_size = (SIZE, SIZE)
config.model.pretrained_ckpt = ''
for t in config.tasks:
  t.image_size = (SIZE, SIZE)
  t.metric.name = ''
for d in config.datasets:
  d.category_names_path = ''
config.tasks[0].max_instances_per_image_test = args.objects
config.tasks[1].max_instances_per_image_test = args.instances
config.tasks[1].max_points_per_object = args.points
config.tasks[1].ensemble_num_samples = args.samples
config.task, config.dataset = config.tasks[0], config.datasets[0]
for item in args.set:
  key, value = item.split('=', 1)
  section, field = key.split('.', 1)
  config[section][field] = type(config[section][field])(json.loads(value))
model = ar_model.Model(config)

# Images: the notional originals are resized (longest side) onto the canvas.
orig_size = np.array([[300, 400], [400, 300], [480, 640], [320, 640]], np.int32)
unpadded = np.round(orig_size * SIZE / orig_size.max(1, keepdims=True)).astype(np.int32)
pixels = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.uint8)
for b, (h, w) in enumerate(unpadded):
  pixels[b, h:], pixels[b, :, w:] = 77, 77
images = tf.constant(pixels.astype(np.float32) / np.float32(255))


def box():
  y0, x0 = sorted(rng.integers(0, 1000, 2))
  y1, x1 = rng.integers(y0, 1000), rng.integers(x0, 1000)
  return [1000 + int(y0), 1000 + int(x0), 1000 + int(y1), 1000 + int(x1)]


rows = [[10], [11] + box() + [118], [12] + box() + [101], [13]]
for _ in range(8):
  rows[0] += box() + [100 + int(rng.choice([1, 2, 3, 18, 44, 90]))]
rows[1] += [1000 + int(v) for v in rng.integers(0, 1000, 12)] + [40, 40]
rows[1] += [1000 + int(v) for v in rng.integers(0, 1000, 30)]
for _ in range(17):
  rows[2] += [41, 41] if rng.uniform() < 0.3 else [1000 + int(v) for v in
                                                    rng.integers(0, 1000, 2)]
rows[3] += [3000 + int(v) for v in rng.integers(0, TEXT_PIECES, 40)]
seq = np.zeros((BATCH, args.length), np.int32)
for b, r in enumerate(rows):
  seq[b] = (r + [1] + [0] * args.length)[:args.length]
model(images, tf.constant(seq), training=False)  # builds every variable

# Every variable drawn here (the Keras initialisers are not seeded), away from the
# initialisers' patterns (zero biases, unit gammas) so that a mapping mistake cannot hide
# behind equal values: kernels ~ N(0, 1 / fan_in), gammas ~ 1 + N(0, 0.02^2), the rest
# N(0, 0.02^2); then the output head (module docstring).
weights_rng = np.random.default_rng(args.seed + 1)
for v in model.variables:
  shape = v.shape.as_list()
  if 'gamma' in v.name:
    value = 1.0 + weights_rng.normal(0.0, 0.02, shape)
  elif len(shape) > 1:
    value = weights_rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
  else:
    value = weights_rng.normal(0.0, 0.02, shape)
  v.assign(value.astype(np.float32))
decoder = model.decoder
decoder.token_embedding.assign(weights_rng.normal(
    0.0, args.embedding_std, decoder.token_embedding.shape).astype(np.float32))
decoder.seq_pos_emb.assign(weights_rng.normal(
    0.0, args.position_std, decoder.seq_pos_emb.shape).astype(np.float32))
bias = decoder.outp_bias.numpy()
shift = config.model.coord_vocab_shift
bias[shift:shift + 1000] += args.coordinate_bias
bias[vocab.PADDING_TOKEN] += args.padding_bias
bias[vocab.SEPARATOR_TOKEN] += args.separator_bias
bias[vocab.INVISIBLE_TOKEN] += args.invisible_bias
decoder.outp_bias.assign(bias)

logits = model(images, tf.constant(seq), training=False).numpy()

optimizer = tf.keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.05)
if args.optimizer_slots:
  optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
global_step = tf.Variable(1234, dtype=tf.int64)
ckpt = tf.train.Checkpoint(model=model, global_step=global_step, optimizer=optimizer)
os.makedirs(args.out, exist_ok=True)
manager = tf.train.CheckpointManager(ckpt, args.out, max_to_keep=1)
manager.save(checkpoint_number=1234)
with open(os.path.join(args.out, 'config.json'), 'w') as f:
  f.write(config.to_json_best_effort(indent=2))

out = {'pixels': pixels, 'seq': seq, 'orig_size': orig_size, 'unpadded_size': unpadded}
if args.logit_columns:
  columns = set(range(64)) | set(range(64, logits.shape[-1], 211)) | set(seq.ravel().tolist())
  columns = np.array(sorted(columns), np.int32)
  out.update(logit_columns=columns, logits=logits[..., columns],
             logit_absmax=np.abs(logits).max(-1), logit_argmax=logits.argmax(-1))
else:
  out['logits'] = logits


def task_for(index, **changes):
  """The official task object of config.tasks[index], greedy (top_k=1)."""
  cfg = copy.deepcopy(config)
  cfg.task, cfg.dataset = cfg.tasks[index], cfg.datasets[index]
  cfg.task.top_k = 1
  for key, value in changes.items():
    cfg.task[key] = value
  return task_lib.TaskRegistry.lookup(cfg.task.name)(cfg), cfg


def sizes():
  return {'image': images, 'image/id': tf.range(1, BATCH + 1),
          'orig_image_size': tf.constant(orig_size),
          'unpadded_image_size': tf.constant(unpadded)}


def normalised_boxes(n):
  """[B, n, 4] random boxes inside each image's unpadded area, normalised to the canvas."""
  out_boxes = np.zeros((BATCH, n, 4), np.float32)
  for b in range(BATCH):
    h, w = unpadded[b] / SIZE
    for i in range(n):
      y0, y1 = np.sort(rng.uniform(0, h, 2))
      x0, x1 = np.sort(rng.uniform(0, w, 2))
      out_boxes[b, i] = [y0, x0, y1, x1]
  return out_boxes


# Detection (prompt 10).
task, cfg = task_for(0)
examples = dict(sizes(), label=tf.zeros([BATCH, 1], tf.int64), bbox=tf.zeros([BATCH, 1, 4]),
                area=tf.zeros([BATCH, 1]), is_crowd=tf.zeros([BATCH, 1], tf.bool))
examples, pred_seq, det_logits = task.infer(model, (images, None, examples))
_, _, _, boxes_rescaled, classes, scores, *_ = task.postprocess_tpu(examples, pred_seq,
                                                                     det_logits)
out.update(det_tokens=pred_seq.numpy(), det_classes=classes.numpy(),
           det_scores=scores.numpy(), det_boxes=boxes_rescaled.numpy())

# Instance segmentation (prompt 11): ground-truth boxes, `ensemble_num_samples` each.
task, cfg = task_for(1)
n = args.instances
seg_box = normalised_boxes(n)
seg_label = rng.choice([1, 18, 44, 90], (BATCH, n)).astype(np.int64)
seg_score = rng.uniform(0.5, 1.0, (BATCH, n)).astype(np.float32)
examples = dict(sizes(), label=tf.constant(seg_label), bbox=tf.constant(seg_box),
                scores=tf.constant(seg_score),
                image_size_before_cropping=tf.constant(orig_size))
examples, pred_seq, pred_classes, pred_bboxes, scores = task.infer(
    model, (images, None, examples))
post = task.postprocess_tpu(examples, pred_seq, pred_classes, pred_bboxes, scores)
(_, _, size_before_crop, _, _, _, points_rescaled, _, _, _) = post
mask_size = size_before_crop.numpy()
rles = instance_segmentation.segment_to_mask_rle(points_rescaled.numpy(), mask_size)
masks = instance_segmentation.mask_rle_to_mask_np(rles, mask_size)
ensembled = instance_segmentation.ensemble_mask_np(masks, BATCH * n, args.samples,
                                                   cfg.task.ensemble_threshold)
out.update(seg_box=seg_box, seg_label=seg_label, seg_score=seg_score,
           seg_tokens=pred_seq.numpy(), seg_points_rescaled=points_rescaled.numpy())


def rle_json(rle):
  return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode()}


facts = {
    'sample_rles': [rle_json(r) for r in rles],
    'ensembled_rles': [rle_json(mask_lib.encode(np.asfortranarray(m.astype(np.uint8))))
                       for m in ensembled],
    'ensembled_areas': [int(m.sum()) for m in ensembled],
}

# Keypoints (prompt 12): one person box per image (one not a person: score 0), cropped.
task, cfg = task_for(2)
kp_box = normalised_boxes(1)
kp_label = np.array([[1], [1], [18], [1]], np.int64)
kp_box_score = rng.uniform(0.5, 1.0, (BATCH, 1)).astype(np.float32)
crop_offset = rng.integers(0, 50, (BATCH, 2)).astype(np.int32)
examples = dict(sizes(), label=tf.constant(kp_label), bbox=tf.constant(kp_box),
                scores=tf.constant(kp_box_score), crop_offset=tf.constant(crop_offset))
examples, pred_seq, kp_logits, pred_classes, pred_bboxes, scores = task.infer(
    model, (images, None, examples))
post = task.postprocess_tpu(examples, pred_seq, kp_logits, pred_classes, pred_bboxes, scores)
(_, _, _, _, points_rescaled, _, _, scores) = post
# What greedy draws before the eval's redraw of the invisible token (the model reads it).
prompt = task_utils.build_instance_prompt_seq(cfg.task.vocab_id, tf.constant(kp_box),
                                              tf.constant(kp_label),
                                              cfg.task.quantization_bins, shift)
kp_drawn, drawn_logits, _ = model.infer(
    images, prompt, max_seq_len=cfg.task.max_points_per_object * 2 + 6,
    temperature=cfg.task.temperature, top_k=1, top_p=cfg.task.top_p)
# The redraw the eval means: the most likely token but 41 at the same position. (The
# official redraw filters its [n, 34, V] logits with `top_logits`, written for [n, V]:
# its top-k threshold is read at the last position, its top-p bound compared with the
# first position's sorted logits, so it draws among many tokens.)
suppressed = drawn_logits.numpy().copy()
suppressed[..., vocab.INVISIBLE_TOKEN] = -np.inf
kp_drawn = kp_drawn.numpy()
kp_intended = np.where(kp_drawn == vocab.INVISIBLE_TOKEN, suppressed.argmax(-1), kp_drawn)
out.update(kp_box=kp_box, kp_label=kp_label, kp_box_score=kp_box_score,
           crop_offset=crop_offset, kp_tokens=pred_seq.numpy(), kp_drawn=kp_drawn,
           kp_intended=kp_intended,
           kp_points_rescaled=points_rescaled.numpy(), kp_scores=scores.numpy(),
           kp_coco=np.stack([coco_metrics.insert_visibility(utils.yx2xy(p))
                             for p in points_rescaled.numpy()]).astype(np.float32))

# Captioning (prompt 13).
task, cfg = task_for(3)
examples = dict(sizes(), captions=tf.zeros([BATCH, 1], tf.int64))
if args.caption_tokens:
  prompt = tf.fill([BATCH, 1], tf.constant(cfg.task.vocab_id, tf.int64))
  pred_seq, cap_logits, _ = model.infer(images, prompt, max_seq_len=args.caption_tokens + 1,
                                        temperature=cfg.task.temperature, top_k=1,
                                        top_p=cfg.task.top_p)
else:
  examples, pred_seq, cap_logits = task.infer(model, (images, None, examples))
task.postprocess_cpu(task.postprocess_tpu(examples, pred_seq, cap_logits), 0, training=False)
out.update(cap_tokens=pred_seq.numpy(), cap_pieces=StubTokenizer.seen[-1])

np.savez_compressed(os.path.join(args.out, 'oracle.npz'), **out)
facts['run'] = {'argv': sys.argv[1:], 'checkpoint': os.path.basename(manager.latest_checkpoint),
                'variables': len(tf.train.list_variables(manager.latest_checkpoint))}
with open(os.path.join(args.out, 'official.json'), 'w') as f:
  json.dump(facts, f, indent=1)


def histogram(tokens):
  tokens = np.asarray(tokens)
  kinds = {'pad': tokens == 0, 'special': (tokens > 0) & (tokens < 100),
           'class': (tokens >= 100) & (tokens < 1000),
           'coord': (tokens >= 1000) & (tokens < 2000), 'text': tokens >= 3000}
  return {k: int(v.sum()) for k, v in kinds.items()}


print(json.dumps({
    'checkpoint': manager.latest_checkpoint, 'logits': list(logits.shape),
    'model_params': int(sum(np.prod(v.shape) for v in model.variables)),
    'detection': histogram(out['det_tokens']), 'det_classes': int((out['det_classes'] > 0).sum()),
    'segmentation': histogram(out['seg_tokens']), 'mask_areas': facts['ensembled_areas'],
    'keypoints': histogram(out['kp_tokens']), 'captioning': histogram(out['cap_tokens']),
}))
