"""Command line: python main.py --config=configs/X.py --workdir=DIR [--mode=...].

  train    train (resuming from the latest checkpoint), evaluate periodically and at the end
  eval     evaluate the latest checkpoint of --workdir on the val split
  predict  detect objects in --images=GLOB, write --output=FILE.json, draw into --draw_dir
           those scored at least --draw_threshold (the workdir's config; --config, if
           given, supplies only the decode settings); a workdir of an instance task
           (segmentation, keypoints) reads the objects of --boxes=FILE.json; captioning
           writes one caption per image (no drawing)
  export   write --workdir's latest checkpoint to --output=DIR as a jax.export program and a
           TensorFlow SavedModel (pix2seq_jax/deploy/export.py; --config: decode settings;
           an instance task or captioning: its decode program, no SavedModel)
  summary  print the model's parameters per module and `total_params=N` (no --workdir)

A multi-task workdir (config.tasks) predicts or exports one of its tasks: --task=NAME
(default its config.task).

Several hosts: run the same command on every host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or under SLURM / Open MPI with nothing added: one task
per node drives all its GPUs (--devices_per_process=task: one task per GPU;
docs/multi_gpu.md).
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and evaluation output.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'export', 'summary'],
                  'What to do.')
flags.DEFINE_string('images', None, 'predict: a glob of image files.')
flags.DEFINE_string('output', None, 'predict: the JSON file to write detections to; '
                    'export: the folder to write the exported detector to.')
flags.DEFINE_string('boxes', None,
                    'predict, instance tasks: the objects to segment / the persons to find '
                    'keypoints of: a predict JSON of a detection workdir, or a COCO results '
                    'or annotations file.')
flags.DEFINE_string('draw_dir', None, 'predict: a folder for the images with boxes drawn.')
flags.DEFINE_string('task', None,
                    'predict, export: the task of a multi-task workdir to run (default the '
                    'workdir\'s config.task).')
flags.DEFINE_float('min_score', 0.0, 'predict: drop detections scored below this.')
flags.DEFINE_float('draw_threshold', 0.3,
                   'predict: draw into --draw_dir only the detections scored at least this '
                   '(in [0, 1]); the JSON keeps every detection (down to --min_score).')
flags.DEFINE_string('coordinator_address', None,
                    'multi-host: HOST:PORT of process 0 (with --num_processes, --process_id).')
flags.DEFINE_integer('num_processes', None, 'multi-host: how many processes take part.')
flags.DEFINE_integer('process_id', None, 'multi-host: this process, 0 .. num_processes - 1.')
flags.DEFINE_bool('auto_distributed', True,
                  'Join the other processes when a launcher (SLURM, Open MPI) started several.')
flags.DEFINE_enum('devices_per_process', 'node', ['node', 'task'],
                  'Under a launcher: node = one task per node driving all the GPUs it sees; '
                  'task = one task per GPU, each driving its own (docs/multi_gpu.md).')


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  """Keeps orbax's per-save INFO chatter out of the log; its warnings still show."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  mode = FLAGS.mode
  if mode in ('summary', 'train', 'eval') and FLAGS.config is None:
    raise app.UsageError(f'--mode={mode} needs --config.')
  if mode != 'summary' and not FLAGS.workdir:
    raise app.UsageError(f'--mode={mode} needs --workdir.')
  if mode == 'predict' and (not FLAGS.images or not FLAGS.output):
    raise app.UsageError('--mode=predict needs --images=GLOB and --output=FILE.json.')
  if mode == 'export' and not FLAGS.output:
    raise app.UsageError('--mode=export needs --output=DIR.')
  for name in ('images', 'boxes', 'draw_dir', 'min_score', 'draw_threshold'):
    if mode != 'predict' and FLAGS[name].present:
      raise app.UsageError(f'--{name} is a --mode=predict flag, not one of --mode={mode}.')
  if FLAGS['draw_threshold'].present and not FLAGS.draw_dir:
    raise app.UsageError('--draw_threshold chooses the detections drawn into --draw_dir: '
                         'give --draw_dir=DIR too, or leave it out.')
  if not 0.0 <= FLAGS.draw_threshold <= 1.0:
    raise app.UsageError(f'--draw_threshold={FLAGS.draw_threshold} must be a score in [0, 1] '
                         '(default 0.3).')
  for name in ('output', 'task'):
    if mode not in ('predict', 'export') and FLAGS[name].present:
      raise app.UsageError(f'--{name} is a flag of --mode=predict and export, not of {mode}.')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  overrides = tuple(config_flags.get_override_values(FLAGS['config'])) if FLAGS.config else ()
  try:
    _run(mode, overrides)
  except _user_errors() as error:  # the message says what is wrong and how to fix it
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)


def _run(mode: str, overrides: tuple[str, ...]) -> None:
  from pix2seq_jax.config import checks
  if mode == 'summary':
    from pix2seq_jax.data import sources
    from pix2seq_jax.models import summary
    checks.validate(FLAGS.config, mode='summary', overrides=overrides)
    print(summary.summarise(FLAGS.config, *sources.class_count(FLAGS.config.data)))
    return
  from pix2seq_jax.parallel import distributed
  from pix2seq_jax.runtime import compilation_cache
  compilation_cache.enable()  # PIX2SEQ_COMPILATION_CACHE moves it or turns it off
  joined = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, auto=FLAGS.auto_distributed,
                                  devices_per_process=FLAGS.devices_per_process)
  if FLAGS['devices_per_process'].present and not joined:
    raise distributed.LauncherError(
        f'--devices_per_process={FLAGS.devices_per_process} chooses the GPUs of each process '
        'of a multi-process run, and this run is one process (no launcher started several, '
        'no --coordinator_address): leave the flag out.')
  logging.info(distributed.describe_devices())  # every process, before any check
  distributed.check_device_count(FLAGS.devices_per_process, joined)
  decode = None
  if mode in ('predict', 'export') and FLAGS.config is not None:  # only the decode settings
    checks.validate(FLAGS.config, mode='predict', overrides=overrides)
    decode = FLAGS.config.decode.to_dict()
  # --task is checked against the workdir here; without it the Predictor takes config.task.
  task = _chosen_task(mode) if mode in ('predict', 'export') and FLAGS.task else None
  if mode == 'predict':  # no TensorFlow: the Predictor reads files with PIL
    from pix2seq_jax.inference import predictor
    predictor.predict_files(FLAGS.workdir, FLAGS.images, FLAGS.output, FLAGS.draw_dir,
                            min_score=FLAGS.min_score, decode=decode,
                            draw_threshold=FLAGS.draw_threshold, boxes=FLAGS.boxes,
                            task=task)
    return
  if mode == 'export':
    from pix2seq_jax.deploy import export
    manifest = export.export_workdir(FLAGS.workdir, FLAGS.output, decode=decode, task=task)
    print(f'Exported step {manifest["checkpoint_step"]} of {FLAGS.workdir} to {FLAGS.output}: '
          f'{", ".join(sorted(manifest["sha256"]))}'
          f'{", saved_model/" if manifest["saved_model"] else ""}.')
    return
  import tensorflow as tf  # the input pipeline only: keep it off any GPU
  tf.config.set_visible_devices([], 'GPU')
  if mode == 'eval':
    from pix2seq_jax.evaluation import task_evaluators
    for name in checks.ignored_in_eval(overrides):
      logging.warning('--config.%s has no effect in --mode=eval.', name)
    task_evaluators.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, overrides=overrides)
    return
  from pix2seq_jax.train import loop, preemption
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, overrides=overrides)
  except preemption.Preempted as stopped:
    print(stopped, file=sys.stderr)
    sys.exit(stopped.exit_code)


def _chosen_task(mode: str) -> str:
  """--task, refused where the workdir was not trained for it, or with --draw_dir for
  captioning (which predict_files also refuses when captioning is the workdir's task)."""
  from pix2seq_jax.config import multitask, workdir_config
  trained = workdir_config.load(FLAGS.workdir)
  tasks = multitask.task_names(trained)
  task = FLAGS.task
  if task not in tasks:
    raise app.UsageError(f'--task={task}: {FLAGS.workdir} was trained for '
                         f'{", ".join(tasks)}; give one of them.')
  if mode == 'predict' and task == 'captioning' and FLAGS.draw_dir:
    raise app.UsageError('--draw_dir: the drawings are for boxes, masks and keypoints; '
                         'captioning writes its captions to --output only. Leave --draw_dir '
                         'out.')
  return task


def _user_errors() -> tuple[type[Exception], ...]:
  """Errors caused by the config, data or workdir: reported in one line, no traceback."""
  from pix2seq_jax.config import checks
  from pix2seq_jax.data import coco_json, image_check, tfds_source
  from pix2seq_jax.inference import instance_inputs
  from pix2seq_jax.models import pretrained
  from pix2seq_jax.parallel import distributed
  from pix2seq_jax.train import init_from
  from pix2seq_jax.workdir import checkpoints
  return (checks.ConfigError, distributed.LauncherError, coco_json.AnnotationFileError,
          image_check.ImageFilesError, tfds_source.TfdsNotPreparedError,
          checkpoints.CheckpointMismatchError, pretrained.PretrainedWeightsError,
          init_from.InitFromError, instance_inputs.BoxesError, FloatingPointError,
          FileNotFoundError)


if __name__ == '__main__':
  from pix2seq_jax.runtime import cpu as cpu_runtime
  # Where the backend will be the CPU: the XLA:CPU flags, and a restart of this command
  # with huge pages behind malloc (before anything starts JAX).
  cpu_runtime.configure()
  app.run(main)
