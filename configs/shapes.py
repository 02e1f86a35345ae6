"""The CPU default: the tiny model on synthetic shapes at 96 px, 15-40 minutes on 2 cores."""

from pix2seq_jax.config import default


def get_config():
  config = default.get_config()
  config.data.source = 'shapes'
  # 20000 training images, not 4000: at 8000 steps 4000 are overfitted, and with 12000 a
  # second training seed missed AP50 0.80 (BENCHMARKS.md, "Shapes AP 0.50"); generating
  # them is a small part of the run.
  config.data.shapes_num_train = 20000
  config.data.image_size = 96
  config.data.max_instances = 10  # shapes images hold at most 8 objects
  config.data.num_bins = 96  # one bin per canvas pixel
  # Sequence augmentation on (default); scale jitter off: at 5400 steps it cost ~0.07 AP
  # (BENCHMARKS.md, "Augmentation ablation").
  config.data.scale_jitter = False
  config.model.variant = 'tiny'
  config.model.dropout = 0.0
  config.model.drop_path = 0.0
  config.train.steps = 8000
  config.train.batch_size = 16  # more, smaller steps learn faster here than batch 32
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 300
  config.train.log_every = 100
  config.train.eval_every = 1800
  config.train.checkpoint_every = 1800
  config.eval.batch_size = 40  # 5 batches of the 200 val images; divides by 1-8 devices
  return config
