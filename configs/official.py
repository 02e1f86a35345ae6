"""Converted official checkpoints: evaluate them, predict with them, fine-tune from them.

  --config=configs/official.py:VARIANT,SIZE   VARIANT: resnet, resnet-c, vit-b, vit-l
                                              (the official names) or this project's
                                              variant names; SIZE: 640, 1024, 1333

The model, vocabulary, decoding and fine-tuning optimisation of the official
`config_det_finetune.py` (pix2seq_jax/official/config.py), on COCO 2017 on disk:
--config.data.coco_dir=DIR. Evaluate a converted workdir with --mode=eval; fine-tune
with --config.model.init_from=CONVERTED_WORKDIR on your data (README, "Official
checkpoints"; docs/official.md).
"""

from pix2seq_jax.config import default
from pix2seq_jax.models import variants
from pix2seq_jax.official import config as official_settings


def get_config(variant_and_size: str = 'resnet,640'):
  variant, _, size = variant_and_size.partition(',')
  variant = official_settings.VARIANTS.get(variant, variant)
  if variant not in variants.VARIANTS:
    raise ValueError(f'configs/official.py:{variant_and_size}: the variant must be one of '
                     f'{sorted(official_settings.VARIANTS)} or {sorted(variants.VARIANTS)}, e.g. '
                     'configs/official.py:vit-b,640.')
  config = default.get_config()
  config.data.source = 'coco_files'
  official_settings.apply(config, variant, int(size or 640))
  return config
