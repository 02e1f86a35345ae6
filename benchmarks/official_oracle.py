"""The official code's greedy decoding and post-processing, for the parity checks.

Runs in the scratch environment of ../shared/tools/official_fixture.py (tensorflow-cpu,
tf-keras, the official checkout SRC); never imported by the project:

  python benchmarks/official_oracle.py SRC FIXTURE_DIR MAX_SEQ_LEN

FIXTURE_DIR is what official_fixture.py wrote (config.json, ckpt-N, oracle.npz). The
official model is rebuilt from config.json, restored from the checkpoint, and run as
the official evaluation does: `Model.infer(images, prompt 10, max_seq_len, top_k=1)`
(greedy), then `task_utils.decode_object_seq_to_bbox` and the rescaling to original
pixels of `ObjectDetectionTask.postprocess_tpu`, for an original image of ORIGINAL_SIZE
resized (longest side) onto the canvas. Writes FIXTURE_DIR/oracle_greedy.npz: tokens
[B, MAX_SEQ_LEN - 1], classes [B, N], scores [B, N], boxes [B, N, 4] (ymin, xmin, ymax,
xmax in original pixels), original_size [2], unpadded_size [2].
"""
import json
import os
import sys

import official_env  # benchmarks/official_env.py, beside this script

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
src, fixture, max_seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, src)
ORIGINAL_SIZE = (300, 400)  # height, width of the notional original image


official_env.stub_tensorflow_addons()

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from models import ar_model  # noqa: E402
from tasks import task_utils  # noqa: E402

with open(os.path.join(fixture, 'config.json')) as f:
  config = ml_collections.ConfigDict(json.load(f))
model = ar_model.Model(config)
oracle = np.load(os.path.join(fixture, 'oracle.npz'))
images = tf.constant(oracle['images'])
model(images, tf.constant(oracle['seq']), training=False)  # builds the variables
tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(fixture)).expect_partial()
check = model(images, tf.constant(oracle['seq']), training=False).numpy()
print('restored vs fixture max diff', float(np.abs(check - oracle['logits']).max()))

batch = images.shape[0]
prompt = tf.fill([batch, 1], tf.constant(10, tf.int64))
pred_seq, logits, _ = model.infer(images, prompt, max_seq_len=max_seq_len, temperature=1.0,
                                  top_k=1, top_p=1.0)
bins, shift = config.task.quantization_bins, config.model.coord_vocab_shift
classes, boxes, scores = task_utils.decode_object_seq_to_bbox(logits, pred_seq, bins, shift)
size = images.shape[1]
height, width = ORIGINAL_SIZE
ratio = size / max(height, width)
unpadded = np.array([round(height * ratio), round(width * ratio)], np.float32)
scale = np.float32(size) / unpadded * np.array(ORIGINAL_SIZE, np.float32)  # [2] (y, x)
boxes = boxes.numpy() * np.tile(scale, 2)[None, None]
np.savez(os.path.join(fixture, 'oracle_greedy.npz'), tokens=pred_seq.numpy(),
         classes=classes.numpy(), scores=scores.numpy(), boxes=boxes,
         original_size=np.array(ORIGINAL_SIZE), unpadded_size=unpadded)
print(json.dumps({'tokens': list(pred_seq.shape), 'nonzero_classes':
                  int((classes.numpy() > 0).sum())}))
