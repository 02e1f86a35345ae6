"""COCO captioning (Pix2Seq-v2) with the R50 model at 640 px: the official multi-task
config's captioning task trained on its own.

google-research/pix2seq `configs/config_multi_task.py` (task 'captioning'): prompt 13 in
the 35000-id multi-task vocabulary, each image's first 5 captions as SentencePiece pieces
(text token = 3000 + piece id, EOS last), 128 tokens a sequence, EOS weight 0.1 (padding
targets 1), decoder inputs replaced by the fake-text token with probability 0.5, scale
jitter [0.3, 2.0], crop and flip; decoding samples at temperature 1. The tokenizer is an
input: the official c4_en_32k_spm.model for its checkpoints, or one trained on the train
captions, e.g.

  python -m pix2seq_jax.data.train_tokenizer \\
      --captions=/path/to/coco/annotations/captions_train2017.json \\
      --output=workdirs/coco_tokenizer.model --vocab_size=8000
  python main.py --config=configs/coco_captioning.py --workdir=workdirs/coco_captions \\
      --config.data.coco_dir=/path/to/coco \\
      --config.data.tokenizer=workdirs/coco_tokenizer.model

The run copies the tokenizer into its workdir, which refuses another one later.
Evaluation decodes a caption per val image and scores BLEU-1..4, METEOR, ROUGE-L and
CIDEr against the image's captions (pycocoevalcap; Java on PATH), beside the val loss.
A CPU-sized memorisation trial on coco_mini's 80 train images (their captions file for
both splits; README.md's results):

  MINI=../shared/data/coco_mini
  python -m pix2seq_jax.data.train_tokenizer \\
      --captions=$MINI/annotations/captions_train2017.json \\
      --output=workdirs/mini_tokenizer.model --vocab_size=500
  python main.py --config=configs/coco_captioning.py --workdir=workdirs/caption_mini \\
      --config.data.train_images=$MINI/train2017 --config.data.val_images=$MINI/train2017 \\
      --config.data.train_captions=$MINI/annotations/captions_train2017.json \\
      --config.data.val_captions=$MINI/annotations/captions_train2017.json \\
      --config.data.tokenizer=workdirs/mini_tokenizer.model \\
      --config.model.variant=tiny --config.data.image_size=128 --config.data.max_text_len=40 \\
      --config.data.scale_jitter=False --config.data.random_flip=False \\
      --config.model.dropout=0 --config.model.drop_path=0 --config.train.compute_dtype=float32 \\
      --config.train.epochs=0 --config.train.steps=1500 --config.train.warmup_epochs=0 \\
      --config.train.warmup_steps=100 --config.train.batch_size=8 \\
      --config.train.learning_rate=1e-3 --config.train.log_every=100 \\
      --config.train.checkpoint_every=500 --config.train.eval_every=1500 \\
      --config.eval.batch_size=16
"""

from configs import coco
from pix2seq_jax.config import default


def get_config():
  """configs/coco.py's recipe with the captioning task's data."""
  config = coco.get_config()
  config.task = 'captioning'
  data = config.data
  data.max_text_len = default.CAPTIONING_MAX_TEXT_LEN  # 128 tokens a caption
  data.captions_per_image = default.CAPTIONS_PER_IMAGE  # an image's first 5 captions
  data.eos_weight = default.CAPTIONING_EOS_WEIGHT  # EOS 0.1; padding targets 1
  data.text_dropout = default.CAPTIONING_TEXT_DROPOUT  # input tokens -> 30 at rate 0.5
  data.noise_objects = False  # detection's sequence augmentation: not in captions
  data.corrupt_classes = False
  config.model.vocabulary = 'official_multitask'  # prompts 10-13, text 3000+: 35000 ids
  config.train.epochs = 100
  config.train.warmup_epochs = 10
  return config
