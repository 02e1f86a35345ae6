"""Default configuration: every field the project reads, each with its meaning.

The configs under the repository's `configs/` (shapes.py, coco.py, ...) start from
`get_config()` and override it; any field can be set from the command line
(`--config.train.steps=100`). The library reads its defaults from here too, e.g. for a
workdir written before a field existed (config/workdir_config.py).
"""

import ml_collections

# The values decode.mode and decode.score take (inference/decoding.py implements them).
DECODE_MODES = ('grammar', 'official')
SCORE_MODES = ('class', 'class_x_coords')
# The values config.task takes: what the model is trained to write for each image.
TASKS = ('object_detection', 'instance_segmentation', 'keypoint_detection', 'captioning')
INSTANCE_TASKS = ('instance_segmentation', 'keypoint_detection')
# The official multi-task model's captioning settings (configs/config_multi_task.py).
CAPTIONING_MAX_TEXT_LEN = 128  # config_multi_task.py:144, max_seq_len of captioning
CAPTIONS_PER_IMAGE = 5  # config_multi_task.py:145, captions_per_image
CAPTIONING_EOS_WEIGHT = 0.1  # config_multi_task.py:150, eos_token_weight
CAPTIONING_TEXT_DROPOUT = 0.5  # config_multi_task.py:151, input_seq_drop_rate
# The official multi-task model's setting of each instance task
# (google-research/pix2seq configs/config_multi_task.py).
SEGMENTATION_MAX_POINTS = 128  # config_multi_task.py:83, max_points_per_object
SEGMENTATION_MAX_INSTANCES = 10  # config_multi_task.py:81, max_instances_per_image
SEGMENTATION_EOS_WEIGHT = 1.0  # config_multi_task.py:93, eos_token_weight
SEGMENTATION_SCALE_MAX = 1.0  # transform_configs.py:86, jitter_scale_max of segmentation
KEYPOINTS_MAX_POINTS = 17  # config_multi_task.py:120, max_points_per_object (COCO's 17)
KEYPOINTS_MAX_INSTANCES = 1  # config_multi_task.py:116 (unbatch=True, :133, needs 1)
KEYPOINTS_EOS_WEIGHT = 0.0  # config_multi_task.py:131, eos_token_weight
KEYPOINTS_INVISIBLE_WEIGHT = 0.1  # config_multi_task.py:130, invisible_token_weight
KEYPOINTS_CROP_PAD = 0.5  # config_multi_task.py:135, crop_to_bbox_pad_scale
KEYPOINTS_SCALE_MAX = 1.0  # transform_configs.py:160, jitter_scale_max of keypoints
# transform_configs.py:185-190: the official keypoint training leaves the flip out (its
# restore of reserved values after a swap of left/right keypoints is wrong); ours swaps
# the markers with their keypoints (data/geometry.py), so a flip is safe but off by default.
KEYPOINTS_RANDOM_FLIP = False


def sequence_length(config: ml_collections.ConfigDict) -> int:
  """Tokens in one decoder input (and target) sequence of `config.task`.

  object_detection: 5 per object of `data.max_instances`, plus EOS (one sequence per
  image); instance_segmentation and keypoint_detection: prompt-conditioned box and class
  (5 targets) then 2 per point of `data.max_points` (one sequence per object, the official
  `max_seq_len = 5 + 2 * max_points_per_object`; 39 for COCO's 17 keypoints);
  captioning: `data.max_text_len` (the prompt, then the caption's pieces and EOS, padded;
  one sequence per caption).
  """
  task = config.get('task', TASKS[0])
  if task == 'captioning':
    return config.data.max_text_len
  if task in INSTANCE_TASKS:
    return 5 + 2 * config.data.max_points
  return 5 * config.data.max_instances + 1


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Seed of parameter init, data order, augmentation and dropout.
  config.seed = 0
  # What the model learns to write: 'object_detection' (one sequence of boxes and classes
  # per image) or 'instance_segmentation' (Pix2Seq-v2: one sequence per object, its
  # polygon given its box and class; needs model.vocabulary='official_multitask' and
  # COCO polygons; the image is encoded once for all its objects' sequences) or
  # 'keypoint_detection' (Pix2Seq-v2: one example per person, its image cropped to the
  # person's padded box, its 17 keypoints given its box and class; needs
  # 'official_multitask', COCO person_keypoints files, data.max_instances=1 and
  # data.max_points=17) or 'captioning' (Pix2Seq-v2: one sequence per caption of the image,
  # its SentencePiece pieces; needs 'official_multitask', COCO captions files and
  # data.tokenizer). With config.tasks: one of its tasks, whose train examples count
  # train.epochs.
  config.task = 'object_detection'
  # Multi-task training (Pix2Seq-v2): one model learns every task named here, e.g.
  # tasks.object_detection = {'weight': 1.0, 'data': {...}}. Each step takes one batch of
  # train.batch_size for every task (the official trainer) and minimises the sum of the
  # tasks' losses times their `weight`; each task reads config.data with the fields its
  # `data` sets replaced (its own annotation files, max_instances, eos_weight, ...).
  # Empty: one task, config.task. See docs/tasks.md ("Multi-task training").
  config.tasks = ml_collections.ConfigDict()

  config.data = data = ml_collections.ConfigDict()
  # Where the data comes from: 'shapes' (synthetic, generated on first use),
  # 'coco_files' (any COCO-format dataset on disk) or 'tfds' (COCO 2017 prepared by
  # TensorFlow Datasets; never downloads).
  data.source = 'shapes'
  # coco_files: a folder in the COCO 2017 / DETR layout (train2017/, val2017/,
  # annotations/instances_{train,val}2017.json; keypoint_detection reads
  # annotations/person_keypoints_{train,val}2017.json). Overrides the four paths below.
  data.coco_dir = ''
  # coco_files: image folder and instances JSON (person_keypoints JSON for
  # keypoint_detection) of each split (when coco_dir is '').
  data.train_images = ''
  data.train_annotations = ''
  data.val_images = ''
  data.val_annotations = ''
  # tfds: the TFDS data_dir holding coco/2017/<version>/ ('' = ~/tensorflow_datasets), and
  # where it is exported once in the COCO layout ('' = <tfds_data_dir>/coco2017_files).
  data.tfds_data_dir = ''
  data.tfds_export_dir = ''
  # shapes: the folder it is generated into and reused from, its seed and sizes.
  data.shapes_dir = 'data_cache/shapes'
  data.shapes_seed = 0
  data.shapes_num_train = 4000
  data.shapes_num_val = 200
  # Side of the square canvas images are resized (longest side) and padded to.
  data.image_size = 640
  # Most objects in one sequence; more are dropped (after shuffling, when training).
  # instance_segmentation: the objects (each its own sequence) per image, padded with
  # empty sequences up to it (the official multi-task config has 10). keypoint_detection:
  # 1 (one person per example, as the official).
  data.max_instances = 100
  # instance_segmentation: polygon points per object at most (an object's polygons one
  # after another, a separator point between two); longer ones are cut, as the official.
  # keypoint_detection: 17, COCO's keypoints.
  data.max_points = SEGMENTATION_MAX_POINTS
  # keypoint_detection: each example's image is its person's box widened on every side by
  # this fraction of the box's height and width, in whole pixels, within the image (the
  # official crop_to_bbox_pad_scale).
  data.crop_pad = KEYPOINTS_CROP_PAD
  # keypoint_detection: loss weight of the targets that are the invisible-point token (an
  # unlabelled keypoint, or one outside the crop); other keypoint targets weigh 1.
  data.invisible_weight = KEYPOINTS_INVISIBLE_WEIGHT
  # keypoint_detection, training: replace a random fraction r ~ U(0, 1) (drawn per
  # example) of the keypoint tokens of the decoder input by the invisible-point token, as
  # the official (the targets are unchanged).
  data.corrupt_keypoints = True
  # captioning: COCO captions files of each split ('' with data.coco_dir:
  # annotations/captions_{train,val}2017.json); the images are those the files list, in
  # data.train_images / data.val_images (or coco_dir's train2017/, val2017/).
  data.train_captions = ''
  data.val_captions = ''
  # captioning: the SentencePiece model that turns captions into pieces (text token =
  # 3000 + piece id): the official multi-task model's file for its checkpoints, or one
  # trained on the train captions (`python -m pix2seq_jax.data.train_tokenizer`). Copied
  # into the workdir, which refuses another file later.
  data.tokenizer = ''
  # captioning: the sequence length (the prompt, a caption's pieces and its EOS, padded;
  # longer captions are cut and counted), and the captions of an image trained on at once
  # (its first ones in the file; images with fewer have empty sequences that weigh 0).
  data.max_text_len = CAPTIONING_MAX_TEXT_LEN
  data.captions_per_image = CAPTIONS_PER_IMAGE
  # captioning, training: each decoder input token is replaced by the fake-text token 30
  # with this probability (the official input_seq_drop_rate; targets unchanged).
  data.text_dropout = CAPTIONING_TEXT_DROPOUT
  # Coordinate quantisation bins.
  data.num_bins = 1000
  # Loss weight of the EOS target token (real objects' tokens weigh 1, padding 0).
  # instance_segmentation: of every padding target (the end of a polygon, and the
  # padding objects' sequences); the official multi-task config has 1.0 (keypoints: 0.0,
  # read only by padding objects, which one person per example never has). captioning: of
  # the EOS target (its padding targets weigh 1, as the official; the official config has
  # 0.1).
  data.eos_weight = 0.1
  # Training augmentation (all off for evaluation). Scale jitter: resize the longest
  # side to image_size * U[scale_min, scale_max], then crop a random image_size window
  # (boxes clipped to it, boxes left without area dropped), then pad.
  data.scale_jitter = True
  data.scale_min = 0.3
  data.scale_max = 2.0
  # Random horizontal flips (p 0.5).
  data.random_flip = True
  # Sequence augmentation (data/sequences.py): top each sequence up to max_instances
  # objects with "n/a" noise objects (duplicates and bad boxes of the real ones), and
  # replace every class token of the decoder input by a random class or "n/a".
  # Detection only (the instance tasks' sequences have neither: set both False).
  data.noise_objects = True
  data.corrupt_classes = True
  # Loss weights of noise objects' coordinate tokens and class token (real objects: 1).
  data.noise_coord_weight = 0.0
  data.noise_class_weight = 1.0

  config.model = model = ml_collections.ConfigDict()
  # Model sizes: 'tiny' (CPU), or the official variants 'r50', 'r50_c4', 'vit_b', 'vit_l'.
  model.variant = 'r50'
  # Token ids (tasks/vocab.py): 'compact' (4 specials + classes + bins, for training from
  # scratch), 'official' (the official Pix2Seq's 3000 ids, class token = 100 + COCO
  # category id; what converted official checkpoints use, and fine-tuning from them) or
  # 'official_multitask' (the official multi-task model's 35000 ids: the same, plus the
  # prompts 10-13 of detection / segmentation / keypoints / captioning, separator 40,
  # invisible point 41 and text tokens 3000 + piece id).
  model.vocabulary = 'compact'
  # Learned decoder positions; 0: exactly the sequence (5 * data.max_instances + 1).
  # Converted official checkpoints have 512.
  model.max_seq_len = 0
  # Start training from this workdir's parameters (a converted official checkpoint or any
  # earlier run; not its optimizer state or step). Class rows are matched by category
  # name, unmatched classes get fresh rows (train/init_from.py).
  model.init_from = ''
  # Dropout rate inside every transformer MLP and on ResNet features (as the official
  # `drop_units`).
  model.dropout = 0.1
  # ImageNet ResNet-50 weights for the backbone (r50, r50_c4) at the start of training:
  # a torchvision or timm state dict as .safetensors or .npz (pix2seq_jax/models/pretrained.py).
  model.pretrained_backbone = ''
  # 'none' feeds [0, 1] pixels (official Pix2Seq); 'imagenet' standardises them with
  # ImageNet's mean and std first, as torchvision/timm weights expect.
  model.image_normalization = 'none'
  # DropPath (stochastic depth) rate of every encoder, memory and decoder residual branch.
  model.drop_path = 0.1
  # Fine-tuning a ResNet as DETR does: 0 trains everything; 1 freezes the stem, 2 the
  # stem and stage 1 (DETR), ... (no gradients, no updates, no decay).
  model.frozen_backbone_stages = 0
  # Batch norms of the backbone are fixed affine maps of their running statistics, scale
  # and bias, none of which is trained (DETR's FrozenBatchNorm2d; for pretrained
  # backbones at small per-device batches).
  model.frozen_batch_norm = False
  # How a ResNet computes its convolutions (same parameters, same results): 'xla' plain
  # XLA convolutions; 'matmul_grad' 1x1 convolutions and kernel gradients as matmuls
  # (faster on XLA:CPU); 'auto' 'matmul_grad' on the CPU and 'xla' elsewhere. Only for
  # ResNet variants (models/resnet.py).
  model.conv_impl = 'auto'

  config.train = train = ml_collections.ConfigDict()
  # The training length: optimisation steps, or epochs of the train split (steps =
  # ceil(epochs * images / batch_size)). Exactly one of the two is > 0.
  train.steps = 100_000
  train.epochs = 0.0
  # Global batch size, split over all devices of all processes.
  train.batch_size = 32
  # Split each global batch into this many micro-batches whose gradients are summed
  # before one update (fits a large batch on few devices; batch norm sees micro-batches).
  train.grad_accum_steps = 1
  # Shard parameters and optimizer state over the devices (FSDP-style) instead of
  # replicating them: each device holds 1/N of the state; for large variants.
  train.shard_params = False
  # 'float32', or 'bfloat16': bfloat16 activations and matmuls with float32 parameters,
  # optimizer state, softmaxes and loss.
  train.compute_dtype = 'float32'
  # Precision of float32 matmuls and convolutions in training, evaluation and prediction
  # (jax.default_matmul_precision): 'default' keeps JAX's setting, which on recent GPUs
  # (A100, H100) runs them as TF32 (inputs rounded to 10 mantissa bits) and on TPUs as one
  # bfloat16 pass; 'high' is TF32 on those GPUs and three bfloat16 passes on TPUs;
  # 'highest' is true float32 everywhere. The CPU computes float32 at all three. Inputs
  # already in bfloat16 (compute_dtype) are unaffected.
  train.matmul_precision = 'default'
  # Peak learning rate of AdamW.
  train.learning_rate = 1e-4
  # Linear warmup from 0 to the peak learning rate, in steps or in epochs of the train
  # split (round(warmup_epochs * images / batch_size) steps). At most one is > 0.
  train.warmup_steps = 1000
  train.warmup_epochs = 0.0
  # Decay after warmup: 'linear' or 'cosine', down to end_lr_factor * peak.
  train.schedule = 'linear'
  train.end_lr_factor = 0.01
  # AdamW moments and decoupled weight decay.
  train.b1 = 0.9
  train.b2 = 0.95
  train.weight_decay = 0.05
  # Decay norm scales and biases too (the official code decays every parameter); False
  # decays only matrices (kernels, embeddings).
  train.decay_norms_and_biases = False
  # Clip gradients to this global norm (0: no clipping).
  train.grad_clip_norm = 1.0
  # Log scalars every this many steps.
  train.log_every = 50
  # Evaluate every this many steps; 0 evaluates once, after the last step.
  train.eval_every = 0
  # Save a checkpoint every this many steps (and always after the last step).
  train.checkpoint_every = 1000
  # On several processes, agree every this many steps (and at every save) whether a
  # SIGTERM/SIGINT stops the run: a collective that waits for the devices, so not every
  # step; a signal stops the run at most this many steps later. One process stops at once.
  train.preemption_check_every = 10
  # Checkpoints kept on disk.
  train.keep_checkpoints = 3

  config.eval = eval_config = ml_collections.ConfigDict()
  # Evaluate on the first this many val images; 0 evaluates on all of them
  # (keypoint_detection: every person of those images, one example each).
  eval_config.max_images = 0
  # Global eval batch size (padded with masked examples at the end).
  eval_config.batch_size = 32
  # At each evaluation in training, draw this many val images (the split's first ones, the
  # same every time) with their detections scored 0.3 or more and their ground truth into
  # TensorBoard (tag eval/detections); 0 draws none.
  eval_config.num_images_drawn = 4

  config.decode = decode = ml_collections.ConfigDict()
  # 0 decodes greedily; > 0 samples from softmax(logits / temperature).
  decode.temperature = 0.0
  # When sampling, draw only from the k most likely tokens (0: no limit).
  decode.top_k = 0
  # When sampling, draw only from the smallest set of tokens whose probability reaches
  # top_p (nucleus sampling; the official code uses 0.4 at temperature 1; 1: no limit).
  decode.top_p = 1.0
  # Objects per image at most (EOS is forced after them); 0: data.max_instances, which
  # also bounds it (the decoder has no positions beyond).
  decode.max_objects = 0
  # 'grammar': every sequence parses (coordinates, then a class; EOS only where an
  # object may start) and decoding stops at EOS. 'official': the official Pix2Seq
  # inference and post-processing (no grammar, all max_objects slots decoded, its
  # nucleus rule; with temperature 1 and top_p 0.4 its COCO evaluation). See
  # docs/decoding.md and docs/official.md ("Differences from the official implementation").
  decode.mode = 'grammar'
  # Object score: 'class' (probability of its class token, as the official code) or
  # 'class_x_coords' (times the probabilities of its four coordinate tokens).
  decode.score = 'class'
  # Predictor only: canvases per image shape. 1 pads every image to the square training
  # canvas; k > 1 also offers S x (i*S/k) canvases for wide and tall images (less
  # padding; pays off only where the backbone dominates, see BENCHMARKS.md), each
  # compiled once.
  decode.canvas_buckets = 1
  return config
