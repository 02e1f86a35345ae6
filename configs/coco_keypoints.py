"""COCO person keypoints (Pix2Seq-v2) with the R50 model at 640 px: the official
multi-task config's keypoint task trained on its own.

google-research/pix2seq `configs/config_multi_task.py` (task 'keypoint_detection'):
prompt 12 in the 35000-id multi-task vocabulary; every person of the person_keypoints
file is one example (`unbatch`, one instance per example), its image cropped to its box
widened by half the box's size on every side (`crop_to_bbox_pad_scale` 0.5), then scale
jitter [0.3, 1.0] and pad, no flip (`transform_configs.py`: the official leaves it out
because its restore of reserved values does not follow the left/right swap; ours does,
`--config.data.random_flip=True` is safe). The sequence is the person's box and class,
then its 17 (y, x) keypoints (an unlabelled one as the invisible token 41, weighted 0.1),
39 tokens; the decoder input's keypoint tokens are randomly replaced by 41 in training.
Training keeps the persons with at least one labelled keypoint, evaluation every person.
`train.epochs` counts passes over the persons (~150k in COCO train2017). Batch 128,
AdamW lr 1e-4 decaying linearly to 1e-6, weight decay 0.05, b2 0.95 (configs/coco.py's).
Point it at a COCO folder (`data.coco_dir` reads
annotations/person_keypoints_{train,val}2017.json) or at the explicit
`--config.data.{train,val}_{images,annotations}` paths:

  python main.py --config=configs/coco_keypoints.py --workdir=workdirs/coco_kp \\
      --config.data.coco_dir=/path/to/coco \\
      --config.model.pretrained_backbone=resnet50.safetensors

Evaluation (during training and --mode=eval) decodes every val person from its
ground-truth box and scores the keypoints with COCOeval (OKS), beside the teacher-forced
val loss (docs/tasks.md). A CPU-sized memorisation trial on the 86 labelled persons of
coco_mini's train split (../shared/data/README.md), its file used for both splits (val:
all 167 of its non-crowd persons, the 81 without a labelled keypoint included, as the
official evaluation keeps them), with the tiny model at 128 px without augmentation (no
scale jitter, flip or input corruption); its result and time are in README.md's results:

  MINI=../shared/data/coco_mini
  python main.py --config=configs/coco_keypoints.py --workdir=workdirs/kp_mini \\
      --config.data.train_images=$MINI/train2017 --config.data.val_images=$MINI/train2017 \\
      --config.data.train_annotations=$MINI/annotations/person_keypoints_train2017.json \\
      --config.data.val_annotations=$MINI/annotations/person_keypoints_train2017.json \\
      --config.model.variant=tiny --config.data.image_size=128 \\
      --config.data.scale_jitter=False --config.data.random_flip=False \\
      --config.data.corrupt_keypoints=False \\
      --config.model.dropout=0 --config.model.drop_path=0 --config.train.compute_dtype=float32 \\
      --config.train.epochs=0 --config.train.steps=2000 --config.train.warmup_epochs=0 \\
      --config.train.warmup_steps=100 --config.train.batch_size=8 \\
      --config.train.learning_rate=1e-3 --config.train.log_every=50 \\
      --config.train.checkpoint_every=500 --config.eval.batch_size=8
"""

from configs import coco
from pix2seq_jax.config import default


def get_config():
  """configs/coco.py's recipe with the keypoint task's data and schedule."""
  config = coco.get_config()
  config.task = 'keypoint_detection'
  data, train = config.data, config.train
  data.source = 'coco_files'
  data.max_instances = default.KEYPOINTS_MAX_INSTANCES  # one person per example
  data.max_points = default.KEYPOINTS_MAX_POINTS  # COCO's 17 keypoints: 39 tokens
  data.crop_pad = default.KEYPOINTS_CROP_PAD  # the person's box + 0.5 of it on each side
  data.invisible_weight = default.KEYPOINTS_INVISIBLE_WEIGHT  # targets 41 weigh 0.1
  data.corrupt_keypoints = True  # input keypoint tokens -> 41 at a random rate
  data.eos_weight = default.KEYPOINTS_EOS_WEIGHT  # no padding targets with one person
  data.scale_max = default.KEYPOINTS_SCALE_MAX  # jitter [0.3, 1.0] of the crop
  data.random_flip = default.KEYPOINTS_RANDOM_FLIP  # off, as the official (see above)
  data.noise_objects = False  # detection's sequence augmentation: not in these sequences
  data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'  # prompts 10-13, invisible 41: 35000 ids
  # The official 100 epochs (10 of warmup, config_multi_task.py:215,228) count COCO's
  # 118287 train images (dataset_configs.py:37) while each batch holds 128 persons: 92.4k
  # steps. Here epochs count the ~149.8k labelled persons: 80 give 93.6k steps.
  train.epochs = 80
  train.warmup_epochs = 8
  return config
