"""Pix2Seq object detection in JAX: boxes and classes as a token sequence.

The subpackages follow the data's journey:

  config/      the default config, its checks, and the frozen config a run uses
  data/        sources -> tf.data transforms -> token sequences (the only TensorFlow user)
  tasks/       the token vocabulary the sequences are made of, and the tasks that read them
  models/      backbones, transformer encoder/decoder, Pix2Seq; building one from a config
  workdir/     what a run writes where, and its checkpoints
  train/       train state, the sharded train step, optimizer, the loop
  inference/   cached decoding, tokens -> detections, canvases, the Predictor
  evaluation/  COCO metrics, validation loss, evaluating a checkpoint on a split
  deploy/      the detector as one exported program, and running it
  official/    the official checkpoints: their settings, names, and the converter
  parallel/    the device mesh, shardings and multi-host start-up
  runtime/     process settings: CPU tuning, compilation cache, matmul precision

Importing the package or any of its modules changes nothing in the process
(environment, JAX settings); the CPU tuning is applied by the entry points that ask for
it (`runtime.cpu.configure`).
"""

__version__ = '0.4.0'
