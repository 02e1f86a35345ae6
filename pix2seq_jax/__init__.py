"""Pix2Seq object detection in JAX: boxes and classes as a token sequence.

The subpackages follow the data's journey:

  config/      the default config, its checks, and the frozen config a run uses
  data/        sources -> tf.data transforms -> token sequences (the only TensorFlow user)
  models/      backbones, transformer encoder/decoder, Pix2Seq; building one from a config
  train/       train state, the sharded train step, optimizer, checkpoints, the loop
  inference/   cached decoding, tokens -> detections, canvases, the Predictor
  evaluation/  COCO metrics, validation loss, evaluating a checkpoint on a split
  parallel/    the device mesh, shardings and multi-host start-up

`vocab.py` is the one token vocabulary, used by data/ to build sequences and by
inference/ to read them back. Importing the package or any of its modules changes
nothing in the process (environment, JAX settings); the CPU tuning is applied by the
entry points that ask for it (`cpu_runtime.configure`).
"""

__version__ = '0.4.0'
