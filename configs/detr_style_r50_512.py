"""The sizes of the unofficial PyTorch implementation (gaopengcuhk/Unofficial-Pix2Seq,
built on DETR; "the PyTorch replica"), for side-by-side comparison with it.

R50 C5 with a 6+6-layer transformer of width 256 at 512 px, at most 20 objects (101
tokens), AdamW lr 1e-4 with weight decay 1e-4 and gradient clipping 0.1, and DETR's
backbone fine-tuning: stem and stage 1 frozen, batch norms frozen (as its README and
training script set them). The benchmarks at "the PyTorch replica's sizes"
(benchmarks/train_step.py, benchmarks/decode.py) use this model and image size with
batch 2. Differences that remain: the PyTorch replica decays the learning rate in one
step at epoch 200 and trains its backbone at 1e-5 (here: linear decay, one rate); it
has no sequence augmentation (it never reached its "Step 3").
"""

from configs import coco


def get_config():
  config = coco.get_config()
  config.data.image_size = 512
  config.data.max_instances = 20
  config.data.noise_objects = False
  config.data.corrupt_classes = False
  config.model.variant = 'r50'
  config.model.drop_path = 0.0
  config.model.frozen_backbone_stages = 2
  config.model.frozen_batch_norm = True
  config.train.batch_size = 16  # 2 per device on 8 devices
  config.train.epochs = 300
  config.train.warmup_epochs = 0
  config.train.learning_rate = 1e-4
  config.train.weight_decay = 1e-4
  config.train.grad_clip_norm = 0.1
  config.train.compute_dtype = 'float32'
  return config
