"""COCO instance segmentation (Pix2Seq-v2) with the R50 model at 640 px: the official
multi-task config's segmentation task trained on its own.

google-research/pix2seq `configs/config_multi_task.py` (task 'instance_segmentation'):
prompt 11 in the 35000-id multi-task vocabulary, one sequence per object (its box and
class, then its polygon: 128 points at most), 10 objects per image, EOS/padding weight
1.0, scale jitter [0.3, 1.0], crop and flip, no sequence augmentation; batch 128, AdamW
lr 1e-4 decaying linearly to 1e-6, weight decay 0.05, b2 0.95. Each image is encoded once
and its memory repeated for its 10 sequences. Point it at COCO-format data as
configs/coco.py (`--config.data.coco_dir=/path/to/coco`, or the explicit
`--config.data.{train,val}_{images,annotations}` paths of instances files with polygons):

  python main.py --config=configs/coco_segmentation.py --workdir=workdirs/coco_segm \\
      --config.data.coco_dir=/path/to/coco \\
      --config.model.pretrained_backbone=resnet50.safetensors

Evaluation (during training and --mode=eval) decodes every val object from its
ground-truth box and class (the first data.max_instances of an image) and scores the
ensembled masks with COCOeval (segm), beside the teacher-forced val loss
(docs/tasks.md). A CPU-sized memorisation trial on the 80 train images of coco_mini
(../shared/data/README.md), its file used for both splits, the tiny model at 128 px
without augmentation; its result and time are in README.md's results:

  MINI=../shared/data/coco_mini
  python main.py --config=configs/coco_segmentation.py --workdir=workdirs/segm_mini \\
      --config.data.train_images=$MINI/train2017 --config.data.val_images=$MINI/train2017 \\
      --config.data.train_annotations=$MINI/annotations/instances_train2017.json \\
      --config.data.val_annotations=$MINI/annotations/instances_train2017.json \\
      --config.model.variant=tiny --config.data.image_size=128 --config.data.max_points=16 \\
      --config.data.scale_jitter=False --config.data.random_flip=False \\
      --config.model.dropout=0 --config.model.drop_path=0 --config.train.compute_dtype=float32 \\
      --config.train.epochs=0 --config.train.steps=2000 --config.train.warmup_epochs=0 \\
      --config.train.warmup_steps=100 --config.train.batch_size=4 \\
      --config.train.learning_rate=1e-3 --config.train.log_every=100 \\
      --config.train.checkpoint_every=500 --config.train.eval_every=2000 \\
      --config.eval.batch_size=8
"""

from configs import coco
from pix2seq_jax.config import default


def get_config():
  """configs/coco.py's recipe with the segmentation task's data and schedule."""
  config = coco.get_config()
  config.task = 'instance_segmentation'
  data, train = config.data, config.train
  data.max_instances = default.SEGMENTATION_MAX_INSTANCES  # 10 sequences per image
  data.max_points = default.SEGMENTATION_MAX_POINTS  # 128 points: 261 tokens a sequence
  data.eos_weight = default.SEGMENTATION_EOS_WEIGHT  # 1.0 on every padding target
  data.scale_max = default.SEGMENTATION_SCALE_MAX  # jitter [0.3, 1.0], then crop and flip
  data.noise_objects = False  # detection's sequence augmentation: not in these sequences
  data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'  # prompts 10-13, separator 40: 35000 ids
  train.epochs = 100
  train.warmup_epochs = 10
  return config
