"""COCO 2017 with the official R50 model at 640 px: the TF Model Garden Pix2Seq recipe.

TF Model Garden reports 40.0 AP on val for this recipe from an ImageNet backbone (not
measured here): batch 128 for 80 epochs, AdamW lr 1e-4 decaying linearly to 1e-6 after
2 warmup epochs, weight decay 0.05, b2 0.95, 1000 bins, 100 objects, scale jitter
[0.3, 2.0] and sequence augmentation. Point it at the data with
`--config.data.coco_dir=/path/to/coco` and at the weights with
`--config.model.pretrained_backbone=resnet50.safetensors`.

For a CPU-sized trial, override the variant, image size, length and batch, e.g.
`--config.model.variant=tiny --config.data.image_size=256 --config.train.epochs=0
--config.train.steps=200 --config.train.batch_size=8` (the length is in epochs here:
train.steps needs train.epochs=0).
"""

from pix2seq_jax.config import default


def get_config():
  config = default.get_config()
  data, model, train = config.data, config.model, config.train
  data.source = 'coco_files'
  data.coco_dir = ''  # the COCO 2017 folder (train2017/, val2017/, annotations/)
  data.image_size = 640  # the square training canvas
  data.max_instances = 100  # objects per sequence: 501 tokens
  data.num_bins = 1000  # coordinate bins
  # Augmentation (defaults): scale jitter [0.3, 2.0], crop, flip; noise objects and
  # class corruption with noise coordinates weighted 0, noise classes 1, EOS 0.1.
  model.variant = 'r50'  # R50 C5, 6x256 encoder, 6x256 decoder: 36.6M parameters
  model.pretrained_backbone = ''  # torchvision/timm ResNet-50 (.safetensors or .npz)
  model.image_normalization = 'imagenet'  # what ImageNet weights expect
  model.dropout = 0.1
  model.drop_path = 0.1
  train.batch_size = 128  # global, over all devices and processes
  train.grad_accum_steps = 1  # e.g. 4 to fit batch 128 on fewer devices
  train.steps = 0  # the length is set in epochs:
  train.epochs = 80  # ~73.9k steps over the 118k train images
  train.warmup_steps = 0  # likewise the warmup:
  train.warmup_epochs = 2
  train.learning_rate = 1e-4
  train.end_lr_factor = 0.01  # decays to 1e-6
  train.schedule = 'linear'
  train.weight_decay = 0.05
  train.b2 = 0.95
  train.compute_dtype = 'bfloat16'  # f32 parameters and optimizer state
  train.eval_every = 5000
  train.checkpoint_every = 1000
  config.eval.batch_size = 64
  return config
