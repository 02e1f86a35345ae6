"""COCO multi-task training (Pix2Seq-v2): one model learns object detection, instance
segmentation, keypoint detection and captioning, as the official multi-task config.

google-research/pix2seq `configs/config_multi_task.py`: the 35000-id multi-task
vocabulary (prompts 10-13), one decoder with 512 learned positions for every task, each
step one batch of train.batch_size per task and the loss sum of the tasks' losses (weight
1 each), AdamW lr 1e-4 (warmup 10 epochs, linear decay to 1e-6), weight decay 0.05, b2
0.95, 100 epochs of the detection images, batch 128. Each task reads the COCO folder's
own annotation file: instances_* (detection, segmentation), person_keypoints_*
(keypoints), captions_* (captioning, with the SentencePiece model given in
`tasks.captioning.data.tokenizer`: the official c4_en_32k_spm.model, or one trained on
the train captions by `python -m pix2seq_jax.data.train_tokenizer`):

  python main.py --config=configs/coco_multitask.py --workdir=workdirs/coco_multitask \\
      --config.data.coco_dir=/path/to/coco \\
      --config.tasks.captioning.data.tokenizer=/path/to/c4_en_32k_spm.model

Train some of the tasks with the config's argument, the tasks' names joined by commas
(`--config=configs/coco_multitask.py:object_detection,instance_segmentation,captioning`);
change a task's weight with --config.tasks.<task>.weight=... (docs/tasks.md, "Multi-task
training"). Evaluation scores every task: COCO bbox, segm and keypoint metrics, and the
caption metrics (BLEU-4, METEOR, ROUGE-L, CIDEr). A CPU-sized memorisation trial of
detection, segmentation and captioning on coco_mini's 80 train images (their files for
both splits; the tokenizer of configs/coco_captioning.py's trial; README.md's results):

  MINI=../shared/data/coco_mini
  python main.py --workdir=workdirs/multitask_mini \
      --config=configs/coco_multitask.py:object_detection,instance_segmentation,captioning \
      --config.data.train_images=$MINI/train2017 --config.data.val_images=$MINI/train2017 \
      --config.data.train_annotations=$MINI/annotations/instances_train2017.json \
      --config.data.val_annotations=$MINI/annotations/instances_train2017.json \
      --config.tasks.captioning.data.train_captions=$MINI/annotations/captions_train2017.json \
      --config.tasks.captioning.data.val_captions=$MINI/annotations/captions_train2017.json \
      --config.tasks.captioning.data.tokenizer=workdirs/mini_tokenizer.model \
      --config.tasks.captioning.data.max_text_len=40 \
      --config.tasks.instance_segmentation.data.max_points=16 \
      --config.model.variant=tiny --config.data.image_size=128 --config.data.max_instances=50 \
      --config.model.max_seq_len=0 --config.data.scale_jitter=False \
      --config.data.random_flip=False --config.model.dropout=0 --config.model.drop_path=0 \
      --config.train.compute_dtype=float32 --config.train.epochs=0 --config.train.steps=600 \
      --config.train.warmup_epochs=0 --config.train.warmup_steps=60 \
      --config.train.batch_size=8 --config.train.learning_rate=1e-3 \
      --config.train.log_every=100 --config.train.checkpoint_every=200 \
      --config.train.eval_every=600 --config.eval.batch_size=16
"""

from configs import coco
from pix2seq_jax.config import default


def get_config(tasks: str | None = None):
  """configs/coco.py's recipe with the four tasks of the official multi-task config, or
  those `tasks` names (comma-separated; the first counts the epochs)."""
  config = coco.get_config()
  config.task = 'object_detection'  # its images count the epochs
  config.model.vocabulary = 'official_multitask'
  config.model.max_seq_len = 512  # learned positions, as the official
  no_sequence_noise = dict(noise_objects=False, corrupt_classes=False)
  config.tasks.object_detection = dict(weight=1.0, data={})
  config.tasks.instance_segmentation = dict(weight=1.0, data=dict(
      max_instances=default.SEGMENTATION_MAX_INSTANCES,
      max_points=default.SEGMENTATION_MAX_POINTS,
      eos_weight=default.SEGMENTATION_EOS_WEIGHT,
      scale_max=default.SEGMENTATION_SCALE_MAX, **no_sequence_noise))
  config.tasks.keypoint_detection = dict(weight=1.0, data=dict(
      max_instances=default.KEYPOINTS_MAX_INSTANCES,
      max_points=default.KEYPOINTS_MAX_POINTS,
      eos_weight=default.KEYPOINTS_EOS_WEIGHT,
      scale_max=default.KEYPOINTS_SCALE_MAX,
      random_flip=default.KEYPOINTS_RANDOM_FLIP, **no_sequence_noise))
  config.tasks.captioning = dict(weight=1.0, data=dict(
      tokenizer='', train_captions='', val_captions='',  # '' with data.coco_dir
      max_text_len=default.CAPTIONING_MAX_TEXT_LEN,
      eos_weight=default.CAPTIONING_EOS_WEIGHT, **no_sequence_noise))
  if tasks:
    chosen = tasks.split(',')
    unknown = sorted(set(chosen) - set(config.tasks))
    if unknown:
      raise ValueError(f'configs/coco_multitask.py:{tasks}: {unknown} are not tasks of the '
                       f'config; choose from {list(config.tasks)}.')
    for name in list(config.tasks):
      if name not in chosen:
        del config.tasks[name]
    config.task = chosen[0]
  config.train.epochs = 100
  config.train.warmup_epochs = 10
  return config
