"""COCO 2017 with the official `resnet-c` variant: R50 C4 features (stride 16), 12x512
encoder, 8x512 decoder, 84.7M parameters. The recipe is configs/coco.py's.

Stride 16 gives 1600 image tokens at 640 px (400 with C5), so the encoder costs about 4x
more; lower train.batch_size or raise train.grad_accum_steps to fit memory.
"""

from configs import coco


def get_config():
  config = coco.get_config()
  config.model.variant = 'r50_c4'
  config.train.grad_accum_steps = 2  # the same global batch of 128 in two halves
  return config
