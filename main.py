"""Command line: python main.py --config=configs/X.py --workdir=DIR [--mode=...].

  train    train (resuming from the latest checkpoint), evaluate periodically and at the end
  eval     evaluate the latest checkpoint of --workdir on the val split
  predict  detect objects in --images=GLOB, write --output=FILE.json, draw into --draw_dir
           (the workdir's config; --config, if given, supplies only the decode settings)
  summary  print the model's parameters per module and `total_params=N` (no --workdir)

Several hosts: run the same command on every host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or under SLURM / Open MPI with nothing added (README).
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and evaluation output.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'summary'], 'What to do.')
flags.DEFINE_string('images', None, 'predict: a glob of image files.')
flags.DEFINE_string('output', None, 'predict: the JSON file to write detections to.')
flags.DEFINE_string('draw_dir', None, 'predict: a folder for the images with boxes drawn.')
flags.DEFINE_float('min_score', 0.0, 'predict: drop detections scored below this.')
flags.DEFINE_string('coordinator_address', None,
                    'multi-host: HOST:PORT of process 0 (with --num_processes, --process_id).')
flags.DEFINE_integer('num_processes', None, 'multi-host: how many processes take part.')
flags.DEFINE_integer('process_id', None, 'multi-host: this process, 0 .. num_processes - 1.')
flags.DEFINE_bool('auto_distributed', True,
                  'Join the other processes when a launcher (SLURM, Open MPI) started several.')


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  """Keeps orbax's per-save INFO chatter out of the log; its warnings still show."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # TensorFlow is only the input pipeline: keep it off any GPU/TPU.
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if FLAGS.mode != 'summary':
    from pix2seq_jax import distributed
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           auto=FLAGS.auto_distributed)

  if FLAGS.mode == 'summary':
    if FLAGS.config is None:
      raise app.UsageError('--mode=summary needs --config.')
    from pix2seq_jax import summary
    print(summary.summarise(FLAGS.config))
    return
  if not FLAGS.workdir:
    raise app.UsageError(f'--mode={FLAGS.mode} needs --workdir.')
  if FLAGS.mode == 'predict' and (not FLAGS.images or not FLAGS.output):
    raise app.UsageError('--mode=predict needs --images=GLOB and --output=FILE.json.')
  if FLAGS.mode != 'predict' and FLAGS.config is None:
    raise app.UsageError('--config is required for train and eval.')
  try:
    _run(FLAGS.mode)
  except _user_errors() as error:  # the message says what is wrong and how to fix it
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)


def _run(mode: str) -> None:
  if mode == 'predict':  # without TensorFlow's pipeline: the Predictor reads files with PIL
    from pix2seq_jax import predict
    # The workdir's own config is used; --config, when given, supplies the decode settings.
    decode = FLAGS.config.decode.to_dict() if FLAGS.config is not None else None
    predict.predict_files(FLAGS.workdir, FLAGS.images, FLAGS.output, FLAGS.draw_dir,
                          min_score=FLAGS.min_score, decode=decode)
    return
  from pix2seq_jax import train
  if mode == 'eval':
    train.evaluate_latest(FLAGS.config, FLAGS.workdir)
    return
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.Preempted as stopped:
    print(stopped, file=sys.stderr)
    sys.exit(stopped.exit_code)


def _user_errors() -> tuple[type[Exception], ...]:
  """Errors caused by the config, data or workdir: reported in one line, no traceback."""
  from pix2seq_jax import checkpoint, config_checks, pretrained
  from pix2seq_jax.data import coco_json, image_check, tfds_source
  return (config_checks.ConfigError, coco_json.AnnotationFileError,
          image_check.ImageFilesError, tfds_source.TfdsNotPreparedError,
          checkpoint.CheckpointMismatchError, pretrained.PretrainedWeightsError,
          FloatingPointError, FileNotFoundError)


if __name__ == '__main__':
  app.run(main)
