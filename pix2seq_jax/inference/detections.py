"""Token sequences back to detections: boxes, labels and scores (numpy, no TF/JAX), and
those as dicts in original pixels with the annotation file's category ids.

Parsing never fails on a malformed sequence. `parse_tokens` (decode.mode 'grammar')
reads whole 5-token objects from the start and stops at the first EOS or padding token.
An object is dropped if it is cut off by the end of the sequence, has a non-coordinate
token in a coordinate slot, or a non-class token (including "n/a") in its class slot.
Reversed corners are swapped, and boxes are clipped to the original image.

`parse_official` (decode.mode 'official') is the official Pix2Seq post-processing:
every 5-token slot of the sequence is an object (no stop at EOS); coordinates are
dequantised and clipped to [0, 1] of the canvas whatever their token, corners are kept
as decoded, and boxes are not clipped to the original image; an object is dropped only
when its class token names no category of the dataset (the official code drops
category 0).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pix2seq_jax.data import coco_json
from pix2seq_jax.tasks import vocab as vocab_lib


@dataclasses.dataclass
class Detections:
  """Detections of one image. boxes: [K, 4] as (ymin, xmin, ymax, xmax)."""

  boxes: np.ndarray  # [K, 4] float32
  labels: np.ndarray  # [K] int32, contiguous labels
  scores: np.ndarray  # [K] float32


def parse_tokens(tokens: np.ndarray, vocab: vocab_lib.Vocabulary,
                 scores: np.ndarray | None = None) -> Detections:
  """Parses one token sequence ([L] ints) into detections with normalised boxes.

  Args:
    tokens: the generated response tokens, without the start token.
    vocab: the vocabulary the tokens were produced with.
    scores: optional [L] per-token scores; an object's score is the score at
      its class token. Defaults to 1.
  """
  tokens = np.asarray(tokens).reshape(-1).astype(np.int64)
  if scores is None:
    scores = np.ones(tokens.shape, np.float32)
  scores = np.asarray(scores, np.float32).reshape(-1)
  stops = np.flatnonzero((tokens == vocab.eos) | (tokens == vocab.padding))
  end = int(stops[0]) if stops.size else tokens.size
  num_objects = end // vocab_lib.TOKENS_PER_OBJECT
  objects = tokens[:num_objects * vocab_lib.TOKENS_PER_OBJECT].reshape(
      num_objects, vocab_lib.TOKENS_PER_OBJECT)
  object_scores = scores[:num_objects * vocab_lib.TOKENS_PER_OBJECT].reshape(
      num_objects, vocab_lib.TOKENS_PER_OBJECT)[:, 4]
  coord_tokens, class_tokens = objects[:, :4], objects[:, 4]
  labels = vocab.label_of_token(class_tokens)
  valid = vocab.is_coord(coord_tokens).all(axis=1) & (labels >= 0)
  coords = vocab.bin_to_coord(coord_tokens[valid] - vocab.coord_offset).astype(np.float32)
  coords = coords.reshape(-1, 4)
  boxes = np.stack([
      np.minimum(coords[:, 0], coords[:, 2]), np.minimum(coords[:, 1], coords[:, 3]),
      np.maximum(coords[:, 0], coords[:, 2]), np.maximum(coords[:, 1], coords[:, 3]),
  ], axis=1)
  return Detections(
      boxes=boxes.astype(np.float32),
      labels=labels[valid].astype(np.int32),
      scores=object_scores[valid].astype(np.float32))


def parse_official(tokens: np.ndarray, vocab: vocab_lib.Vocabulary,
                   scores: np.ndarray | None = None) -> Detections:
  """Parses one sequence ([L] ints, class slots holding the best class token, as
  `decoding.detection_outputs` in official mode) as the official post-processing."""
  tokens = np.asarray(tokens).reshape(-1).astype(np.int64)
  scores = (np.ones(tokens.shape, np.float32) if scores is None
            else np.asarray(scores, np.float32).reshape(-1))
  num_objects = tokens.size // vocab_lib.TOKENS_PER_OBJECT
  objects = tokens[:num_objects * vocab_lib.TOKENS_PER_OBJECT].reshape(num_objects, -1)
  object_scores = scores[:num_objects * vocab_lib.TOKENS_PER_OBJECT].reshape(
      num_objects, -1)[:, 4]
  labels = vocab.label_of_token(objects[:, 4])
  coords = np.clip(vocab.bin_to_coord((objects[:, :4] - vocab.coord_offset).astype(np.float32)),
                   0.0, 1.0)
  valid = labels >= 0
  return Detections(boxes=coords[valid].astype(np.float32),
                    labels=labels[valid].astype(np.int32),
                    scores=object_scores[valid].astype(np.float32))


def parse(tokens: np.ndarray, vocab: vocab_lib.Vocabulary, scores: np.ndarray | None = None,
          mode: str = 'grammar') -> Detections:
  """`parse_tokens` or `parse_official` by `decode.mode`."""
  return (parse_official if mode == 'official' else parse_tokens)(tokens, vocab, scores)


def to_original_pixels(boxes: np.ndarray, canvas_size: int, scale: float,
                       original_size: tuple[int, int], clip: bool = True) -> np.ndarray:
  """Canvas-normalised (ymin, xmin, ymax, xmax) -> COCO [x, y, w, h] in original pixels.

  Args:
    boxes: [K, 4] boxes normalised to the padded square canvas.
    canvas_size: the canvas side in pixels.
    scale: resized size / original size used by the input pipeline.
    original_size: (height, width) of the original image; boxes are clipped to it
      unless `clip` is False (the official post-processing).
  """
  height, width = original_size if clip else (np.inf, np.inf)
  pixels = np.asarray(boxes, np.float64) * canvas_size / scale
  ymin = np.clip(pixels[:, 0], -np.inf if not clip else 0, height)
  xmin = np.clip(pixels[:, 1], -np.inf if not clip else 0, width)
  ymax = np.clip(pixels[:, 2], -np.inf if not clip else 0, height)
  xmax = np.clip(pixels[:, 3], -np.inf if not clip else 0, width)
  return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)


def detections_in_pixels(tokens: np.ndarray, scores: np.ndarray, vocab: vocab_lib.Vocabulary,
                         categories: coco_json.CategoryMap, canvas_size: int, scale: float,
                         original_size: tuple[int, int], mode: str = 'grammar',
                         decimals: int | None = 2) -> list[dict]:
  """One decoded row -> [{category_id, category_name, bbox [x, y, w, h] px, score}].

  `tokens`, `scores`: [L] from `decoding.detection_outputs`; `scale` and `original_size`
  say how the image was put on its canvas (`data/canvas.py`). Category ids are the
  annotation file's; boxes are rounded to `decimals` digits of a pixel (None: not rounded).
  """
  found = parse(tokens, vocab, scores, mode)
  boxes = to_original_pixels(found.boxes, canvas_size, scale, original_size,
                             clip=mode != 'official')
  return [{'category_id': int(categories.category_ids[label]),
           'category_name': categories.names[label],
           'bbox': [float(v) if decimals is None else round(float(v), decimals) for v in box],
           'score': float(score)}
          for box, label, score in zip(boxes, found.labels, found.scores)]


def coco_results(tokens: np.ndarray, scores: np.ndarray, batch: dict[str, np.ndarray],
                 vocab: vocab_lib.Vocabulary, categories: coco_json.CategoryMap,
                 canvas_size: int, mode: str = 'grammar') -> list[dict]:
  """Decoded rows of a pipeline batch -> COCO results ({image_id, category_id, bbox, score}).

  `batch` holds the rows' `image_id`, `scale`, `original_size` and `mask`; rows whose
  `mask` is False (padding examples) give nothing.
  """
  results = []
  mask = batch.get('mask', np.ones(len(tokens), bool))
  for row in np.flatnonzero(mask):
    found = detections_in_pixels(tokens[row], scores[row], vocab, categories, canvas_size,
                                 float(batch['scale'][row]),
                                 tuple(int(v) for v in batch['original_size'][row]), mode)
    results += [{'image_id': int(batch['image_id'][row]), 'category_id': d['category_id'],
                 'bbox': d['bbox'], 'score': d['score']} for d in found]
  return results
