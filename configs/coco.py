"""COCO 2017 with the official R50 model at 640 px.

Point it at the data with `--config.data.coco_dir=/path/to/coco`. For a CPU-sized
trial, override the variant, image size, steps and batch, e.g.
`--config.model.variant=tiny --config.data.image_size=256 --config.train.steps=200
--config.train.batch_size=8`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'coco_files'
  config.data.coco_dir = ''
  config.data.image_size = 640
  config.data.max_instances = 100
  config.data.num_bins = 1000
  config.model.variant = 'r50'
  config.train.batch_size = 128
  config.train.learning_rate = 1e-4
  config.train.steps = 74_000  # 80 epochs of 118k images at batch 128
  config.train.warmup_steps = 1850  # 2 epochs
  config.train.eval_every = 5000
  config.train.checkpoint_every = 1000
  config.eval.batch_size = 64
  return config
