"""Detections in original pixels with the annotation file's category ids: the evaluation
and Predictor glue around the detection task's parsers (numpy, no TF/JAX).

The parsers (`parse_tokens` for decode.mode 'grammar', `parse_official` for 'official',
`parse` by mode, and their `Detections`) are the detection task's (`tasks/detection.py`,
which says how each reads a sequence); they are re-exported here. With the official
post-processing boxes are not clipped to the original image.
"""

from __future__ import annotations

import numpy as np

from pix2seq_jax.data import coco_json
from pix2seq_jax.tasks import detection
from pix2seq_jax.tasks import vocab as vocab_lib

Detections = detection.Detections
parse_tokens = detection.parse_tokens
parse_official = detection.parse_official
parse = detection.parse


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

  `tokens`, `scores`: [L] from `DetectionTask.outputs`; `scale` and `original_size`
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
