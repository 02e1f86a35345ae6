"""COCO 2017 with the official `vit-b` variant: a ViT-B/16 encoder (12x768) and a 6x512
decoder, 115.2M parameters. The recipe is configs/coco.py's.

There is no pretrained ViT loading: the encoder starts from scratch, with [0, 1] pixels
as in the official code (the official ViT-B results start from Objects365 weights).
"""

from configs import coco


def get_config():
  config = coco.get_config()
  config.model.variant = 'vit_b'
  config.model.image_normalization = 'none'
  return config
