"""Makes an official-parity fixture of an official Pix2Seq ResNet model with random weights.

Runs in a scratch environment (tensorflow-cpu, tf-keras, the official checkout SRC, see
tests/fixtures/official_resnet_nano/README.md); never imported by the project:

  python benchmarks/official_resnet_fixture.py SRC OUT VARIANT SIZE WIDTH [model.FIELD=V ...]

VARIANT: the official `resnet` (C5 features) or `resnet-c` (C4); WIDTH: the official
`resnet_width_multiplier` (a float such as 0.03125: ResNet-50 with 1/32 of its channels,
small enough to commit). The official model is built from `config_det_finetune` with the
architecture, SIZE x SIZE canvases and the overrides, then given weights that a mapping
mistake cannot hide behind:
  - every variable moved off its initialiser (zero biases, unit or zero gammas);
  - batch-norm gammas drawn from [0.5, 1.5], betas around 0 (the blocks' last norms
    start at gamma 0 in the official code, which would silence the residual branches);
  - the decoder's token embeddings and positions wider (greedy decoding then varies);
  - batch-norm moving means and variances set by the official model itself: forward
    passes in training mode over random images, each moving them by (1 - 0.9) toward the
    batch's statistics, as in training. They end far from the defaults 0 and 1.
Saved as the official trainer saves (tf.train.Checkpoint(model, global_step=1234,
AdamW optimizer with its slots)). Writes OUT/config.json, OUT/checkpoint, OUT/ckpt-1234.*
and OUT/oracle.npz: images [2, SIZE, SIZE, 3] in [0, 1] (the second one's lower half 0.3,
as padding), seq [2, 11] official tokens (prompt 10 and two objects), logits
[2, 11, 3000] of `model(images, seq, training=False)` with the saved weights (after the
optimizer's step). benchmarks/official_oracle.py then adds the greedy decoding.
"""
import json
import os
import sys

import official_env  # benchmarks/official_env.py, beside this script

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
src, out, variant, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
width = float(sys.argv[5])
overrides = [a.split('=', 1) for a in sys.argv[6:]]
sys.path.insert(0, src)
SEED = 0
STAT_PASSES = 30  # 0.9 ** 30 = 4%: the moving statistics are the images' by then


official_env.stub_tensorflow_addons()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from models import ar_model  # noqa: E402

from configs import config_det_finetune  # noqa: E402
from configs.config_base import architecture_config_map  # noqa: E402

if variant not in ('resnet', 'resnet-c'):
  raise SystemExit(f'VARIANT {variant!r}: resnet or resnet-c')
tf.keras.utils.set_random_seed(SEED)  # Python, numpy and TF: the unseeded initialisers too
config = config_det_finetune.get_config()
config.model.update(architecture_config_map[variant])
config.model.image_size = (size, size)
config.task.image_size = (size, size)
config.model.pretrained_ckpt = ''
with config.model.ignore_type():  # an int in the official configs; a float scales it
  config.model.resnet_width_multiplier = width
for key, value in overrides:
  section, field = key.split('.', 1)
  config[section][field] = type(config[section][field])(json.loads(value))
model = ar_model.Model(config)

rng = np.random.default_rng(SEED)
batch, objects = 2, 2
images = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
images[1, size // 2:, :, :] = 0.3  # a padded lower half, as eval canvases have
seq = np.zeros((batch, 1 + 5 * objects), np.int32)
for b in range(batch):
  toks = [10]
  for _ in range(objects):
    y0, y1 = sorted(rng.integers(0, 1000, 2))
    x0, x1 = sorted(rng.integers(0, 1000, 2))
    toks += [1000 + y0, 1000 + x0, 1000 + y1, 1000 + x1,
             100 + int(rng.choice([1, 2, 3, 18, 44, 90]))]
  seq[b] = toks
model(tf.constant(images), tf.constant(seq), training=False)  # builds every variable

for v in model.variables:
  v.assign(v + tf.random.normal(v.shape, stddev=0.02, seed=SEED, dtype=v.dtype))
norms = [m for m in model.submodules if isinstance(m, tf.keras.layers.BatchNormalization)]
for norm in norms:
  norm.gamma.assign(rng.uniform(0.5, 1.5, norm.gamma.shape).astype(np.float32))
  norm.beta.assign(rng.normal(0, 0.2, norm.beta.shape).astype(np.float32))
# Wider token embeddings (0.3) and positions (1; the official initialiser's are ~0.02):
# an untrained 8-wide decoder then decodes greedily tokens that change with the position,
# the prefix and (a little) the image, where it otherwise repeats one token throughout.
for weight, std in ((model.decoder.token_embedding, 0.3), (model.decoder.seq_pos_emb, 1.0)):
  weight.assign(rng.normal(0, std, weight.shape).astype(np.float32))
for _ in range(STAT_PASSES):  # training-mode batch norm updates the moving statistics
  model.encoder.resnet(tf.constant(rng.uniform(0, 1, images.shape).astype(np.float32)),
                       training=True)
moving = {name: np.concatenate([getattr(n, name).numpy().ravel() for n in norms])
          for name in ('moving_mean', 'moving_variance')}
print(json.dumps({name: [float(np.percentile(x, q)) for q in (0, 50, 100)]
                  for name, x in moving.items()}))
assert np.abs(moving['moving_mean']).max() > 0.5, 'moving means stayed near 0'
assert np.abs(np.log(moving['moving_variance'])).max() > 1.0, 'variances stayed near 1'

optimizer = tf.keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.05)
optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
# After the optimizer's step (its weight decay moves every weight): the saved weights'.
logits = model(tf.constant(images), tf.constant(seq), training=False).numpy()
global_step = tf.Variable(1234, dtype=tf.int64)
ckpt = tf.train.Checkpoint(model=model, global_step=global_step, optimizer=optimizer)
os.makedirs(out, exist_ok=True)
manager = tf.train.CheckpointManager(ckpt, out, max_to_keep=1)
manager.save(checkpoint_number=1234)
with open(os.path.join(out, 'config.json'), 'w') as f:
  f.write(config.to_json_best_effort(indent=2))
np.savez(os.path.join(out, 'oracle.npz'), images=images, seq=seq, logits=logits)
names = tf.train.list_variables(manager.latest_checkpoint)
print(json.dumps({'checkpoint': manager.latest_checkpoint, 'variables': len(names),
                  'model_params': int(sum(np.prod(v.shape) for v in model.variables)),
                  'logits': list(logits.shape)}))
