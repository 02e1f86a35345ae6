"""Where the official code's train step spends its time: `train_step.py --parts` for its peer.

Runs in the scratch environment of ../shared/tools/official_speed.py (tensorflow-cpu,
tf-keras, the official checkout SRC); never imported by the project:

  python benchmarks/official_train_parts.py SRC [SIZE] [OBJECTS] [BATCH] [REPEATS]

Builds the official R50 model (random weights) as official_speed.py does and times, under
tf.function, the gradient of three sums, as `benchmarks/train_step.py --parts` does for
this project's model (train-mode batch norm, float32, no optimizer update):
  backbone  sum of the squared ResNet features (its last stage) w.r.t. the ResNet's variables
  encode    sum of the squared decoder memory (`Model._encode_images`: ResNet, encoder,
            projection) w.r.t. their variables
  full      sum of the log-probabilities of the teacher-forced tokens (1 + 5 * OBJECTS)
            w.r.t. every trainable variable
Each time is the median of REPEATS calls after a warm-up call (the statistic of the peers'
timers). Prints one JSON object: {'official_part_seconds': {'backbone': s, ...}}.
"""
import json
import os
import statistics
import sys
import time

import official_env  # benchmarks/official_env.py, beside this script

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
src = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 512
objects = int(sys.argv[3]) if len(sys.argv) > 3 else 20
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 2
repeats = int(sys.argv[5]) if len(sys.argv) > 5 else 5
sys.path.insert(0, src)
official_env.stub_tensorflow_addons()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from models import ar_model  # noqa: E402

from configs import config_det_finetune  # noqa: E402
from configs.config_base import architecture_config_map  # noqa: E402


def median_seconds(fn, *args) -> float:
  """Median seconds of `repeats` calls of fn(*args), results fetched, after a warm-up."""
  fetch = lambda grads: [g.numpy() for g in grads if g is not None]
  fetch(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fetch(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  config = config_det_finetune.get_config()
  config.model.update(architecture_config_map['resnet'])
  config.model.image_size = (size, size)
  config.model.pretrained_ckpt = ''
  model = ar_model.Model(config)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(0, 1, (batch, size, size, 3)), tf.float32)
  tokens = tf.constant(rng.integers(1000, 2000, (batch, 1 + 5 * objects)), tf.int64)
  model(images, tokens[:, :-1], training=True)  # builds every variable
  resnet = model.encoder.resnet
  encoder_variables = (model.encoder.trainable_variables + model.proj.trainable_variables
                       + model.proj_ln.trainable_variables
                       + (model.proj_mlp.trainable_variables if hasattr(model, 'proj_mlp')
                          else []))

  def gradient(loss_fn, variables):
    @tf.function
    def fn(images):
      with tf.GradientTape() as tape:
        loss = loss_fn(images)
      return tape.gradient(loss, variables)
    return fn

  parts = {
      'backbone': gradient(lambda x: tf.reduce_sum(resnet(x, True)[0][-1] ** 2),
                           resnet.trainable_variables),
      'encode': gradient(lambda x: tf.reduce_sum(model._encode_images(x, True) ** 2),
                         encoder_variables),
      'full': gradient(lambda x: tf.reduce_sum(tf.nn.log_softmax(
          model(x, tokens[:, :-1], training=True))), model.trainable_variables),
  }
  seconds = {name: round(median_seconds(fn, images), 4) for name, fn in parts.items()}
  print(json.dumps({'size': size, 'tokens': 1 + 5 * objects, 'batch': batch,
                    'official_part_seconds': seconds}))


if __name__ == '__main__':
  main()
