"""Detections drawn onto images (PIL only, no TensorFlow): `--mode=predict --draw_dir`,
the evaluation notebook's grid and the validation images written to TensorBoard.
Instance results are drawn too: a 'segmentation' (COCO RLE) or 'mask' as a translucent
fill in the class colour with an outline, 'keypoints' [x, y, v] * 17 as points joined by
the skeleton (the category's, else COCO's person skeleton), each labelled as a box is.

  picture = draw(image, found, ground_truth=truth)   # a PIL image, upscaled if small

Only detections scored at or above `threshold` are drawn (the JSON written by
`predict_files` keeps them all). Each category has its own colour, fixed by its id, so a
class looks the same in every image; labels (`name 0.87`) sit on a filled tag in that
colour, inside the image. Images smaller than `min_size` on their long side are enlarged
first, so that labels stay legible on the 64-160 px shapes images; line widths and the
font follow the (enlarged) size. Ground truth is a thin dashed black-and-white outline.
"""

from __future__ import annotations

import colorsys
import functools
import zlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pycocotools import mask as coco_mask

DEFAULT_THRESHOLD = 0.3  # --draw_threshold's default, the notebook's and TensorBoard's
MIN_SIZE = 512  # smaller images are enlarged to this long side before drawing

# Well-separated colours (Trubetskoy's 20 less grey), for category ids 1..19 in this
# order; other ids get hues spread by the golden ratio.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (250, 190, 212), (210, 245, 60),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128))
_GROUND_TRUTH = ((255, 255, 255), (0, 0, 0))  # dashes alternate between these
MASK_OPACITY = 0.45  # of a mask's fill
# COCO's person skeleton (person_keypoints_*.json), keypoint numbers from 1.
COCO_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
                 (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5),
                 (4, 6), (5, 7))


def colour_of(category_id: int) -> tuple[int, int, int]:
  """The colour of a category: the same for the same id in every image."""
  if 1 <= category_id <= len(PALETTE):
    return PALETTE[category_id - 1]
  hue = (category_id * 0.6180339887) % 1.0
  return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.95))


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
  """Black on light colours, white on dark ones."""
  r, g, b = background
  return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _category_colour(det: dict) -> tuple[int, int, int]:
  if 'category_id' in det:
    return colour_of(int(det['category_id']))
  return colour_of(21 + zlib.crc32(str(det.get('category_name', '')).encode()) % 997)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=size)


def sizes_for(width: int, height: int) -> tuple[int, int]:
  """(box line width, label font size) in pixels for an image of this (drawing) size."""
  longest = max(width, height)
  return max(2, round(longest / 200)), max(12, round(longest / 28))


def _dashed_rectangle(pen: ImageDraw.ImageDraw, box: Sequence[float], width: int) -> None:
  x1, y1, x2, y2 = box
  dash = 3 * width + 5
  for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)),
                             ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
    length = max(abs(bx - ax), abs(by - ay))
    pieces = max(1, int(np.ceil(length / dash)))
    for i in range(pieces):
      s, e = i / pieces, min(1.0, (i + 1) / pieces)
      pen.line([(ax + (bx - ax) * s, ay + (by - ay) * s), (ax + (bx - ax) * e,
                                                          ay + (by - ay) * e)],
               fill=_GROUND_TRUTH[i % 2], width=width)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_position(box: Sequence[float], size: tuple[int, int], image_size: tuple[int, int],
                   taken: Sequence[tuple[float, ...]] = ()) -> tuple[float, float]:
  """Top-left corner of a label of `size` (w, h) for `box` (x1, y1, x2, y2) in an image of
  `image_size` (w, h): above the box, or inside its top (at the image's top edge), or
  below it, whichever first stays inside the image and clear of the `taken` labels."""
  (x1, y1, _, y2), (w, h), (width, height) = box, size, image_size
  x = min(max(x1, 0), max(width - w, 0))
  inside = [y for y in (y1 - h, y1, y2) if 0 <= y <= height - h]
  for y in inside:
    if not any(_overlaps((x, y, x + w, y + h), other) for other in taken):
      return x, y
  return x, (inside[0] if inside else min(max(y1, 0), max(height - h, 0)))


def _fitted(pen: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
  """`text`, shortened with an ellipsis until it fits in `width` pixels."""
  while len(text) > 1 and pen.textlength(text, font=font) > width:
    text = text[:-2] + '…'
  return text


def _mask_of(det: dict, size: tuple[int, int]) -> np.ndarray | None:
  """The bool mask [h, w] of a detection's 'mask' or RLE 'segmentation', at `size` (w, h)
  of the drawing; None without one."""
  if 'mask' in det:
    mask = np.asarray(det['mask'], bool)
  elif isinstance(det.get('segmentation'), dict):
    rle = dict(det['segmentation'])
    if isinstance(rle['counts'], str):
      rle['counts'] = rle['counts'].encode('ascii')
    mask = coco_mask.decode(rle).astype(bool)
  else:
    return None
  picture = Image.fromarray(mask.astype(np.uint8) * 255)
  if picture.size != size:
    picture = picture.resize(size, Image.Resampling.NEAREST)
  return np.asarray(picture) > 127


def _draw_mask(picture: Image.Image, mask: np.ndarray, colour: tuple[int, int, int],
               line: int) -> Image.Image:
  """A translucent fill of `mask` in `colour` and its outline, `line` pixels wide."""
  layer = Image.fromarray(mask.astype(np.uint8) * 255)
  inner = layer.filter(ImageFilter.MinFilter(2 * (line // 2) + 1))
  fill = Image.fromarray((mask * round(255 * MASK_OPACITY)).astype(np.uint8))
  solid = Image.new('RGB', picture.size, colour)
  picture = Image.composite(solid, picture, fill)
  edge = Image.fromarray(((np.asarray(layer) > 0) & (np.asarray(inner) == 0)).astype(
      np.uint8) * 255)
  return Image.composite(solid, picture, edge)


def _draw_keypoints(pen: ImageDraw.ImageDraw, keypoints: Sequence[float], scale: float,
                    colour: tuple[int, int, int], line: int,
                    skeleton: Sequence[Sequence[int]]) -> None:
  """Points [x, y, v] * K (v > 0 drawn) joined by `skeleton` (pairs of numbers from 1)."""
  points = np.asarray(keypoints, np.float64).reshape(-1, 3)
  xy = points[:, :2] * scale
  shown = points[:, 2] > 0
  for a, b in skeleton:
    if max(a, b) <= len(points) and shown[a - 1] and shown[b - 1]:
      pen.line([tuple(xy[a - 1]), tuple(xy[b - 1])], fill=colour, width=line)
  radius = line + 1
  for (x, y), visible in zip(xy, shown):
    if visible:
      pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour,
                  outline=(255, 255, 255))


def draw(image: np.ndarray | Image.Image, found: Sequence[dict], path: str | None = None,
         ground_truth: Sequence[dict] | None = None, threshold: float = DEFAULT_THRESHOLD,
         min_size: int = MIN_SIZE,
         skeletons: dict[int, Sequence[Sequence[int]]] | None = None) -> Image.Image:
  """`image` with its detections scored at or above `threshold` drawn (and ground truth).

  Args:
    image: uint8 [H, W, 3] (or [H, W]), or a PIL image.
    found: detections {bbox [x, y, w, h] px, category_id, category_name, score}, and
      for instance results a 'mask' (bool [H, W]) or 'segmentation' (COCO RLE), or
      'keypoints' ([x, y, v] * K px); those are drawn instead of the box.
    path: where to save the drawing, if given.
    ground_truth: boxes {bbox [x, y, w, h] px}, drawn as thin dashed outlines.
    threshold: the lowest score drawn, in [0, 1].
    min_size: images whose long side is shorter are enlarged to it first (0: never).
    skeletons: {category_id: [(a, b), ...]} the keypoint pairs to join (numbers from 1,
      as a COCO category's 'skeleton'); default COCO's person skeleton.

  Returns:
    The drawing, as large as `image` or, for a small image, enlarged to `min_size`.
  """
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f'threshold={threshold}: a drawing threshold is a score in [0, 1].')
  picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
  picture = picture.convert('RGB')
  scale = max(1.0, min_size / max(picture.size)) if min_size else 1.0
  if scale > 1.0:
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                             Image.Resampling.BICUBIC)
  width, height = picture.size
  line, font_size = sizes_for(width, height)
  font = _font(font_size)
  corners = lambda bbox: (bbox[0] * scale, bbox[1] * scale, (bbox[0] + bbox[2]) * scale,
                          (bbox[1] + bbox[3]) * scale)
  shown = sorted((d for d in found if d['score'] >= threshold), key=lambda d: d['score'])
  for det in shown:  # masks first, under every line and label; the best scored on top
    mask = _mask_of(det, picture.size)
    if mask is not None:
      picture = _draw_mask(picture, mask, _category_colour(det), line)
  pen = ImageDraw.Draw(picture)
  for gt in ground_truth or []:
    _dashed_rectangle(pen, corners(gt['bbox']), max(1, line // 2))
  for det in shown:  # the best scored last, on top
    colour = _category_colour(det)
    if 'keypoints' in det:
      skeleton = (skeletons or {}).get(int(det.get('category_id', 0)), COCO_SKELETON)
      _draw_keypoints(pen, det['keypoints'], scale, colour, line, skeleton)
    elif 'mask' not in det and 'segmentation' not in det:
      pen.rectangle(corners(det['bbox']), outline=colour, width=line)
  pad, taken = max(1, font_size // 6), []
  for det in reversed(shown):  # the best scored choose their label's place first
    colour = _category_colour(det)
    name = det.get('category_name', det.get('category_id', ''))
    text = _fitted(pen, f"{name} {det['score']:.2f}", font, width - 2 * pad)
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font, anchor='lt')
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    x, y = label_position(corners(det['bbox']), size, (width, height), taken)
    taken.append((x, y, x + size[0], y + size[1]))
    pen.rectangle(taken[-1], fill=colour)
    pen.text((x + pad - left, y + pad - top), text, fill=text_colour(colour), font=font,
             anchor='lt')
  if path:
    picture.save(path)
  return picture


def as_batch(pictures: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
  """Drawings of different sizes as one uint8 [N, H, W, 3] array (black padding at the
  bottom and right), as TensorBoard's image summaries take them."""
  arrays = [np.asarray(p.convert('RGB') if isinstance(p, Image.Image) else p, np.uint8)
            for p in pictures]
  if not arrays:
    return np.zeros((0, 1, 1, 3), np.uint8)
  out = np.zeros((len(arrays), max(a.shape[0] for a in arrays),
                  max(a.shape[1] for a in arrays), 3), np.uint8)
  for row, array in enumerate(arrays):
    out[row, :array.shape[0], :array.shape[1]] = array
  return out
