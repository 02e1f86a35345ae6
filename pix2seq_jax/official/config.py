"""The official Pix2Seq's detection settings, for converted checkpoints and fine-tuning
from them (the official `configs/config_det_finetune.py`): the official vocabulary and
512 decoder positions, 1000 bins, 100 objects, its sampling (temperature 1, top_p 0.4,
official decoding) and its fine-tuning optimisation (AdamW 3e-5, b2 0.95, weight decay
0.05 on every parameter, no gradient clipping, linear decay to 1% after 2 warmup
epochs, 40 epochs at batch 32, dropout and DropPath 0.1).
"""

from __future__ import annotations

import ml_collections

# Official architecture name (architecture_config_map) -> this project's variant.
VARIANTS = {'resnet': 'r50', 'resnet-c': 'r50_c4', 'vit-b': 'vit_b', 'vit-l': 'vit_l'}
MAX_SEQ_LEN = 512


def apply(config: ml_collections.ConfigDict, variant: str, image_size: int,
          vocabulary: str = 'official') -> None:
  """Sets `config` (default.get_config()'s fields) to the official detection settings;
  `vocabulary` 'official_multitask' for the multi-task checkpoints' 35000 ids."""
  config.model.variant = variant
  config.model.vocabulary = vocabulary
  config.model.max_seq_len = MAX_SEQ_LEN
  config.model.dropout = 0.1
  config.model.drop_path = 0.1
  config.data.image_size = image_size
  config.data.num_bins = 1000
  config.data.max_instances = 100
  config.data.eos_weight = 0.1
  config.decode.mode = 'official'
  config.decode.temperature = 1.0
  config.decode.top_k = 0
  config.decode.top_p = 0.4
  train = config.train
  train.learning_rate = 3e-5
  train.end_lr_factor = 0.01
  train.schedule = 'linear'
  train.steps = 0
  train.epochs = 40.0
  train.warmup_steps = 0
  train.warmup_epochs = 2.0
  train.batch_size = 32
  train.b1, train.b2 = 0.9, 0.95
  train.weight_decay = 0.05
  train.decay_norms_and_biases = True
  train.grad_clip_norm = 0.0
